"""What a send -> exit run costs Temporal (issue 9, enrolment throughput): one workflow task
and no activity task (the send and the step records are local activities), one patch
marker, and the step/status search attributes sent as one upsert. The records and search
attributes must still come out right."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from core.db import Database
from core.models import Contact
from devstack.smtp_sink import SmtpSink
from tests.helpers import eventually
from tests.integration.sending_support import outbox_to
from tests.journey_support import (
    finished,
    journey,
    make_contact,
    make_template,
    start,
    step_log,
)
from workflows.journey import workflow_id
from workflows.types import EventSignal


async def test_a_send_then_exit_run_is_one_workflow_task_with_local_activities(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    tpl = await make_template(api)
    d = journey(
        {"mail": {"type": "send_email", "template": tpl, "next": "done"}, "done": {"type": "exit"}},
        "mail",
    )
    key = await start(api, d, cid)
    run = await finished(api, key, cid)
    assert (run["status"], run["exit_reason"]) == ("completed", "completed")

    handle = temporal.get_workflow_handle(workflow_id(key, cid))
    await handle.result()
    events = (await handle.fetch_history()).events
    kinds = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events)
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert scheduled == []  # no activity task: the send ran as a local activity
    assert kinds["WORKFLOW_TASK_COMPLETED"] == 1
    # One patch (the newest implies the older ones), then the send and record_steps.
    assert markers == ["core_patch", "core_local_activity", "core_local_activity"]
    # The patch's own upsert (TemporalChangeVersion) and one for step + status together;
    # JourneyStep of the start step came with the start.
    assert kinds["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"] == 2
    assert len(events) == 10

    # The trail and the search attributes are what they were with one upsert per change.
    actions = [(r.step, r.action) for r in await step_log(db, run["run_id"])]
    assert actions == [
        ("mail", "entered"), ("mail", "left"), ("done", "entered"), ("done", "exited")
    ]
    query = f"WorkflowId = '{workflow_id(key, cid)}' AND JourneyStep = 'done'"

    async def completed_and_indexed() -> bool:
        found = (await temporal.count_workflows(f"{query} AND JourneyStatus = 'completed'"))
        return found.count == 1

    assert await eventually(completed_and_indexed)


async def test_a_send_whose_workflow_task_is_lost_runs_again_and_mails_once(
    api: httpx.AsyncClient, db: Database, temporal: Client, sink: SmtpSink
) -> None:
    """A local activity's result is lost with its workflow task: here the server refuses
    the task that completes the run because a signal came in while the send ran, and the
    next task runs the send again. The ledger answers the second run with the first
    outcome: one email, and the run completes."""
    cid = await make_contact(api, db)
    async with db.session() as s:
        contact = await s.get(Contact, cid)
    assert contact is not None and contact.email is not None
    address = contact.email
    # The first DATA is refused (451): the send retries a second later, and the signal
    # below lands in between, while the workflow task is still open.
    sink.handler.faults.by_rcpt[address.lower()] = ["451"]
    tpl = await make_template(api)
    d = journey(
        {"mail": {"type": "send_email", "template": tpl, "next": "done"}, "done": {"type": "exit"}},
        "mail",
    )
    key = await start(api, d, cid)
    handle = temporal.get_workflow_handle(workflow_id(key, cid))

    async def refused_once() -> bool:
        return not sink.handler.faults.by_rcpt.get(address.lower())

    assert await eventually(refused_once)
    await asyncio.sleep(0.2)
    await handle.signal("event", EventSignal("ev_unrelated", "unrelated", datetime.now(UTC)))
    run = await finished(api, key, cid)
    assert (run["status"], run["exit_reason"]) == ("completed", "completed")

    events = (await handle.fetch_history()).events
    kinds = Counter(EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events)
    assert kinds["WORKFLOW_TASK_FAILED"] == 1  # the race this test is about did happen
    assert len(await outbox_to(db, address)) == 1
