"""Recorded histories (tests/histories/*.json, made by tests/histories/record.py) replay
against the current JourneyWorkflow: a change that breaks determinism for runs already in
flight fails here. Runs entirely in process; no server needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.journey import JourneyWorkflow

HISTORIES = sorted((Path(__file__).parent.parent / "histories").glob("*.json"))


def test_there_are_recorded_histories() -> None:
    names = {p.stem for p in HISTORIES}
    assert {"send_wait_send", "continue_as_new_mid_wait", "events_goal_exit"} <= names
    # send -> exit before (record_steps an activity) and after the local-records patch.
    assert {"send_exit_v1", "send_exit"} <= names
    # Frequency cap before and after the undecided-looks-again patch.
    assert {"frequency_cap_skip_and_defer", "frequency_cap_undecided"} <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path) -> None:
    recorded = json.loads(path.read_bytes())  # noqa: ASYNC240 (a small local file)
    histories = [
        WorkflowHistory.from_json(run["workflow_id"], run["history"]) for run in recorded["runs"]
    ]
    assert histories
    replayer = Replayer(workflows=[JourneyWorkflow])
    for history in histories:
        # Raises (naming the mismatching command) on non-determinism.
        await replayer.replay_workflow(history)
