"""What a send -> exit run costs Temporal (issue 9, enrolment throughput): one activity task
(the send), two workflow tasks, the step records written by a local activity, and the
step/status search attributes of the last workflow task sent as one upsert. The records
and search attributes must still come out right."""

from __future__ import annotations

from collections import Counter

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from core.db import Database
from tests.helpers import eventually
from tests.journey_support import (
    finished,
    journey,
    make_contact,
    make_template,
    start,
    step_log,
)
from workflows.journey import workflow_id


async def test_a_send_then_exit_run_is_one_activity_and_two_workflow_tasks(
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
    assert scheduled == ["send_email"]
    assert kinds["WORKFLOW_TASK_COMPLETED"] == 2
    assert markers.count("core_local_activity") == 1  # record_steps, once, at the end
    # The patch's own upsert (TemporalChangeVersion) and one for step + status together;
    # JourneyStep of the start step came with the start.
    assert kinds["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"] == 2

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
