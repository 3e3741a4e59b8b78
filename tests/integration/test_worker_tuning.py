"""The worker takes its cache size and workflow runner from Settings, and a run works with
either runner (the sandbox is an option: docs/benchmarks.md, "Parked runs"). The sandbox
comes wrapped (ContextFreeSandbox) when the data converter ignores serialization context:
still the sandbox for workflow code, without its per-payload code-string executions."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.converter import DataConverter, PayloadCodec, SerializationContext
from temporalio.converter import WithSerializationContext as WithContext
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner
from temporalio.worker.workflow_sandbox import _runner as sandbox_runner

from core.config import Settings
from core.db import Database
from tests.integration.sandbox_probe import SandboxProbe
from worker import ContextFreeSandbox, build_worker, ignores_context, workflow_runner
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
    runner = sandboxed.config()["workflow_runner"]
    assert isinstance(runner, ContextFreeSandbox)  # our converter ignores context
    assert isinstance(runner.sandbox, SandboxedWorkflowRunner)
    assert "workflows" in runner.sandbox.restrictions.passthrough_modules
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


class _ContextCodec(PayloadCodec, WithContext):
    """A codec that would encode differently per context (e.g. a key per workflow)."""

    def with_context(self, context: SerializationContext) -> _ContextCodec:
        return _ContextCodec()

    async def encode(self, payloads: Any) -> Any:
        return list(payloads)

    async def decode(self, payloads: Any) -> Any:
        return list(payloads)


def test_only_a_converter_that_ignores_context_gets_the_shortcut(settings: Settings) -> None:
    assert ignores_context(DataConverter.default)
    aware = dataclasses.replace(DataConverter.default, payload_codec=_ContextCodec())
    assert not ignores_context(aware)
    assert isinstance(workflow_runner(settings, aware), SandboxedWorkflowRunner)
    assert isinstance(workflow_runner(settings, DataConverter.default), ContextFreeSandbox)
    assert isinstance(workflow_runner(settings), SandboxedWorkflowRunner)  # converter unknown


@pytest.fixture
def sandbox_entries(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Each code string the sandbox executes inside itself (its importer applied each time)."""
    entries: list[str] = []
    original = sandbox_runner._Instance._run_code

    def counted(self: Any, code: str, **extra: Any) -> None:
        entries.append(code)
        original(self, code, **extra)

    monkeypatch.setattr(sandbox_runner._Instance, "_run_code", counted)
    yield entries


async def _probe(temporal: Client, runner: WorkflowRunner, touch_the_clock: bool) -> Any:
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    async with Worker(temporal, task_queue=queue, workflows=[SandboxProbe], workflow_runner=runner):
        handle = await temporal.start_workflow(
            SandboxProbe.run, touch_the_clock, id=f"probe-{uuid.uuid4().hex}", task_queue=queue
        )
        if not touch_the_clock:
            return await asyncio.wait_for(handle.result(), 30)
        for _ in range(100):  # the task fails and is retried: read the first failure
            async for event in handle.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                    await handle.terminate("probe done")
                    failure = event.workflow_task_failed_event_attributes.failure
                    return await temporal.data_converter.decode_failure(failure)  # encrypted
            await asyncio.sleep(0.1)
        raise AssertionError("the workflow task never failed")


async def test_the_wrapped_sandbox_still_refuses_non_deterministic_calls(
    temporal: Client, settings: Settings
) -> None:
    runner = workflow_runner(settings, temporal.data_converter)
    assert isinstance(runner, ContextFreeSandbox)
    refusal = await _probe(temporal, runner, touch_the_clock=True)
    assert getattr(refusal, "type", None) == "RestrictedWorkflowAccessError"
    assert "Cannot access datetime.datetime.now" in str(refusal)


async def test_payload_contexts_no_longer_enter_the_sandbox(
    temporal: Client, settings: Settings, sandbox_entries: list[str]
) -> None:
    plain = SandboxedWorkflowRunner()
    assert await _probe(temporal, plain, touch_the_clock=False) == "done"
    context_lookups = [c for c in sandbox_entries if "get_serialization_context" in c]
    assert context_lookups  # the plain sandbox enters itself for each payload's context
    plain_entries = len(sandbox_entries)
    sandbox_entries.clear()
    wrapped = workflow_runner(settings, temporal.data_converter)
    assert await _probe(temporal, wrapped, touch_the_clock=False) == "done"
    assert not [c for c in sandbox_entries if "context" in c]
    assert 0 < len(sandbox_entries) < plain_entries  # instance set-up and activations only
