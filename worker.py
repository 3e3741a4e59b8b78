"""The Temporal worker: journey workflows and every activity they call."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    SerializationContext,
    StorageDriverStoreContext,
    WorkflowSerializationContext,
)
from temporalio.worker import (
    PollerBehaviorSimpleMaximum,
    UnsandboxedWorkflowRunner,
    Worker,
    WorkflowInstance,
    WorkflowInstanceDetails,
    WorkflowRunner,
)
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.chaining import ChainingActivities
from activities.contact_updates import ContactUpdateActivities
from activities.entry import EntryActivities
from activities.event_redelivery import EventRedeliveryActivities
from activities.lookups import LookupActivities
from activities.runs import RunActivities
from activities.segments import SegmentActivities
from activities.sending import SendActivities
from activities.smtp import SmtpTransport, close_transports
from core import logsafe
from core.config import Settings, get_settings
from core.db import Database, get_engine
from core.temporal import connect
from workflows.event_redelivery import EventRedeliveryWorkflow
from workflows.journey import JourneyWorkflow
from workflows.scheduled_entry import ScheduledEntryWorkflow
from workflows.segment_sweep import SegmentSweepWorkflow

log = logging.getLogger("journeys.worker")
SHUTDOWN_GRACE_SECONDS = 10.0
# Activities running at SIGTERM get this long to finish (a send mid-SMTP completes rather
# than being cancelled at once); what is still running then is cancelled, leaving a few
# seconds of the grace for cancellation handlers and QUITting the SMTP connections.
GRACEFUL_ACTIVITY_SECONDS = SHUTDOWN_GRACE_SECONDS - 3.0


def workflows() -> Sequence[type]:
    return [JourneyWorkflow, SegmentSweepWorkflow, ScheduledEntryWorkflow, EventRedeliveryWorkflow]


def workflow_runner(
    settings: Settings, converter: DataConverter | None = None
) -> WorkflowRunner:
    """The sandbox, with our workflow modules passed through: the sandbox re-imports a
    workflow's module for every run it starts (its class body and type hints evaluated
    again), which measured 12% of the worker's CPU on the enrolment benchmark. Our
    workflow modules keep no module state, and the interpreter they import was passed
    through already. WORKER_WORKFLOW_SANDBOX=false drops the sandbox altogether.

    With a data converter that ignores serialization context (ours does), the sandbox is
    wrapped so that the SDK's per-payload context lookups skip it (see ContextFreeSandbox)."""
    if not settings.worker_workflow_sandbox:
        return UnsandboxedWorkflowRunner()
    sandbox = SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
    )
    if converter is not None and ignores_context(converter):
        return ContextFreeSandbox(sandbox)
    return sandbox


def ignores_context(converter: DataConverter) -> bool:
    """True when the converter's output cannot depend on serialization context: the SDK's
    contract is that `with_context` returns the very same converter when no component
    (payload converter, codec, failure converter) takes context; and no external storage."""
    probe = WorkflowSerializationContext(namespace="probe", workflow_id="probe")
    return converter.external_storage is None and converter.with_context(probe) is converter


class ContextFreeSandbox(WorkflowRunner):
    """The sandboxed runner, minus a cost per payload. For each payload of each workflow
    activation and completion the SDK asks the workflow instance for its serialization
    context; the sandbox answers by executing a code string inside itself (its importer
    applied and removed each time): 40% of the worker's CPU for a signal-driven workflow
    task in bench/click_latency.py (sandboxed 14-15 ms, unsandboxed 8-9 ms). For a
    converter that ignores context (`ignores_context`) the answer cannot matter, so it is
    given outside. Activations run inside the sandbox as before. (Our own workflows and
    dsl modules are passed through it, so its restrictions never see their calls:
    tests/unit/test_workflow_determinism.py reads their source instead.)"""

    def __init__(self, sandbox: SandboxedWorkflowRunner) -> None:
        self.sandbox = sandbox

    def prepare_workflow(self, defn: Any) -> None:
        self.sandbox.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return _ContextFreeInstance(self.sandbox.create_instance(det))

    def set_worker_level_failure_exception_types(
        self, types: Sequence[type[BaseException]]
    ) -> None:
        self.sandbox.set_worker_level_failure_exception_types(types)


class _ContextFreeInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance) -> None:
        self.inner = inner

    def activate(self, act: Any) -> Any:
        return self.inner.activate(act)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()

    def get_serialization_context(self, command_info: Any) -> SerializationContext | None:
        return None  # the context-free converter: the same bytes either way

    def get_external_store_context(self, command_info: Any) -> StorageDriverStoreContext:
        return StorageDriverStoreContext(target=None)  # no external storage (ignores_context)


def activities(db: Database, settings: Settings) -> list[Any]:
    if not settings.smtp_url:
        raise RuntimeError("SMTP_URL is not set (journeys dev sets it for you)")
    transport = SmtpTransport.from_settings(settings)
    runs = RunActivities(db, settings)
    sending = SendActivities(db, settings, transport)
    segments = SegmentActivities(db, settings)
    entry = EntryActivities(db, settings)
    lookups = LookupActivities(db, settings)
    updates = ContactUpdateActivities(db, settings)
    chaining = ChainingActivities(db, settings)
    redelivery = EventRedeliveryActivities(db, settings)
    return [
        runs.record_steps,
        sending.send_email,
        segments.sweep_segments,
        entry.enroll_audience,
        lookups.wait_context,
        lookups.judge,
        lookups.find_event,
        lookups.engagement_seen,
        lookups.send_cap,
        updates.update_contact,
        chaining.start_journey,
        redelivery.redeliver_events,
    ]


def poller_options(settings: Settings) -> dict[str, Any]:
    """Poller counts (Settings WORKER_*_POLLS); bench/raw_worker.py uses the same."""
    return dict(
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(
            settings.worker_workflow_task_polls
        ),
        nonsticky_to_sticky_poll_ratio=settings.worker_nonsticky_poll_ratio,
        activity_task_poller_behavior=PollerBehaviorSimpleMaximum(
            settings.worker_activity_task_polls
        ),
    )


def build_worker(client: Client, db: Database, settings: Settings) -> Worker:
    logsafe.install()  # no PHI in logs: exception messages of libraries are withheld
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=workflows(),
        workflow_runner=workflow_runner(settings, client.data_converter),
        activities=activities(db, settings),
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_concurrent_local_activities=settings.worker_max_concurrent_local_activities,
        **poller_options(settings),
        # Parked runs need no cache: evicted ones replay on their next event.
        max_cached_workflows=settings.worker_max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_ACTIVITY_SECONDS),
    )


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (journeys dev sets it for you)")
    # Sized before anything else opens this URL's engine (get_engine keeps the first).
    get_engine(settings.database_url, pool_size=settings.worker_db_pool_size)
    db = Database(settings.database_url)
    client = await connect(settings)
    worker = build_worker(client, db, settings)
    from services.segment_schedule import ensure_sweep_schedule

    await ensure_sweep_schedule(client, settings.temporal_task_queue)
    from services.event_redelivery import ensure_redelivery_schedule

    await ensure_redelivery_schedule(client, settings.temporal_task_queue)
    log.info("worker polling task queue %s", settings.temporal_task_queue)
    # SIGTERM (process managers, `journeys dev`) stops polling and lets run() return, so
    # the SMTP connections the sends kept open are QUIT below instead of cut; a stop
    # that takes longer than the grace period ends the process as SIGTERM used to.
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_sigterm() -> None:
        stopping.append(loop.create_task(worker.shutdown()))
        loop.call_later(SHUTDOWN_GRACE_SECONDS, os._exit, 128 + signal.SIGTERM)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        await worker.run()
    finally:
        await close_transports()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_worker())
