"""What a run evicted from the worker's cache costs when it next wakes: replaying its history.

    .venv/bin/python bench/replay_cost.py --repeat 20

Replays the recorded histories (tests/histories) in process with the worker's runner and
reports the CPU time per history event. A parked run's history is ~11 events; a busy run's
grows until it continues as new (CONTINUE_AS_NEW_AFTER_EVENTS, default 2,000), which
bounds its replay. Not counted: fetching the history from the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import WorkflowHistory  # noqa: E402
from temporalio.worker import Replayer  # noqa: E402

from core.config import Settings  # noqa: E402
from workflows.journey import JourneyWorkflow  # noqa: E402


async def each(histories: list[WorkflowHistory]) -> AsyncIterator[WorkflowHistory]:
    for h in histories:
        yield h


HISTORIES = Path(__file__).resolve().parent.parent / "tests" / "histories"


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    histories: list[WorkflowHistory] = []
    for path in sorted(HISTORIES.glob("*.json")):
        for run in json.loads(path.read_bytes())["runs"]:
            histories.append(WorkflowHistory.from_json(run["workflow_id"], run["history"]))
    replayer = Replayer(workflows=[JourneyWorkflow])
    await replayer.replay_workflows(each(histories))  # warm: imports, the definition cache
    events = sum(len(h.events) for h in histories)
    per_event: list[float] = []
    for _ in range(args.repeat):
        t0 = time.process_time()
        await replayer.replay_workflows(each(histories))
        per_event.append((time.process_time() - t0) / events)
    ms = statistics.median(per_event) * 1000
    longest = max(len(h.events) for h in histories)
    cap = Settings(_env_file=None).continue_as_new_after_events  # type: ignore[call-arg]
    print(f"{len(histories)} recorded runs, {events} events (longest {longest}): "
          f"replay {ms:.3f} ms CPU per event (median of {args.repeat})")
    print(f"parked run (11 events): {11 * ms:.1f} ms; busy run at the continue-as-new cap "
          f"({cap} events): {cap * ms:.0f} ms per wake after eviction")


if __name__ == "__main__":
    asyncio.run(main())
