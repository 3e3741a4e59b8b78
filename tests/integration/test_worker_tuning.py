"""The worker takes its cache size and workflow runner from Settings, and a run works with
either runner (the sandbox is an option: docs/benchmarks.md, "Parked runs")."""

from __future__ import annotations

import asyncio
import uuid

from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from core.config import Settings
from core.db import Database
from worker import build_worker
from workflows.journey import JourneyWorkflow
from workflows.types import JourneyInput


def test_defaults_bound_the_cache_and_keep_the_sandbox() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.worker_max_cached_workflows == 500
    assert s.worker_workflow_sandbox is True


async def test_worker_follows_the_settings(temporal: Client, db: Database, settings: Settings) -> None:
    def tuned(**values: object) -> Settings:  # a queue each: one worker per queue and client
        return settings.model_copy(update={"temporal_task_queue": f"tuning-{uuid.uuid4().hex[:8]}", **values})

    sandboxed = build_worker(temporal, db, tuned(worker_max_cached_workflows=7))
    assert sandboxed.config()["max_cached_workflows"] == 7
    assert isinstance(sandboxed.config()["workflow_runner"], SandboxedWorkflowRunner)
    plain = build_worker(temporal, db, tuned(worker_workflow_sandbox=False))
    assert isinstance(plain.config()["workflow_runner"], UnsandboxedWorkflowRunner)


async def test_a_run_parks_and_exits_without_the_sandbox(
    temporal: Client, db: Database, settings: Settings
) -> None:
    queue = f"unsandboxed-{uuid.uuid4().hex[:8]}"
    tuned = settings.model_copy(update={"worker_workflow_sandbox": False, "temporal_task_queue": queue})
    definition = {
        "key": "park", "name": "park", "category": "care", "trigger": {"type": "manual"},
        "start": "pause",
        "steps": {"pause": {"type": "wait", "duration": "P30D", "next": "done"}, "done": {"type": "exit"}},
    }
    contact = f"c_{uuid.uuid4().hex}"
    worker = build_worker(temporal, db, tuned)
    async with worker:
        handle = await temporal.start_workflow(
            JourneyWorkflow.run,
            JourneyInput(journey_key=f"park-{uuid.uuid4().hex[:6]}", version=1, contact_id=contact,
                         definition=definition),
            id=f"journey/park/{contact}", task_queue=queue,
        )
        for _ in range(100):  # until it sits in the wait (its timer is running)
            state = await handle.query("state")
            if (state.get("waiting_for") or {}).get("kind") == "timer":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the run never parked in its wait")
        await handle.signal("exit", "test")
        result = await asyncio.wait_for(handle.result(), 30)
    assert result["status"] == "exited"
