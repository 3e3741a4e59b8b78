"""Long waits pass in seconds on the time-skipping test server, with the contact's data in
the shared database: 30 days, until a date attribute, the next weekday 09:00 in New York,
a send deferred by quiet hours and one deferred by the frequency cap.

The expected instants are computed here independently of dsl.timing, from the test
server's clock (it runs ahead of the wall clock as it skips)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.db import Database
from core.models import Consent, Contact, Send, StepLog, Template
from devstack.temporal import SEARCH_ATTRIBUTES
from services.enrollment import search_attributes
from tests.journey_support import CATEGORY, step_log, tag
from workflows.journey import WORKFLOW_NAME, workflow_id
from workflows.types import JourneyInput

SLACK = timedelta(seconds=5)  # workflow time after a timer fires, plus activity latency


@pytest_asyncio.fixture(scope="module")
async def skipping(time_skipping: WorkflowEnvironment) -> WorkflowEnvironment:
    """The test server knows no custom search attributes until they are added."""
    kinds = {"Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
             "Int": IndexedValueType.INDEXED_VALUE_TYPE_INT}
    try:
        await time_skipping.client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=time_skipping.client.namespace,
                search_attributes={k: kinds[v] for k, v in SEARCH_ATTRIBUTES.items()},
            )
        )
    except Exception as exc:  # already added by another module of this session
        if "already" not in str(exc).lower():
            raise
    return time_skipping


async def _contact(db: Database, timezone: str, attributes: dict[str, Any] | None = None) -> str:
    t = tag()
    c = Contact(external_id=f"ts-{t}", email=f"ts-{t}@example.com", timezone=timezone,
                attributes=attributes or {})
    async with db.session() as s:
        s.add(c)
        await s.commit()
        s.add(Consent(contact_id=c.id, category=CATEGORY, granted=True, source="test"))
        await s.commit()
    return c.id


async def _template(db: Database) -> str:
    key = f"ts-tpl-{tag()}"
    async with db.session() as s:
        s.add(Template(key=key, subject="Hi", html="<p>Hi</p>", track_opens=False,
                       track_clicks=False))
        await s.commit()
    return key


async def _run(
    env: WorkflowEnvironment, settings: Settings, db: Database, cid: str,
    steps: dict[str, Any], start: str,
    *, with_search_attributes: bool = True, **extra: Any,
) -> tuple[dict[str, Any], list[StepLog]]:
    key = f"ts-{uuid.uuid4().hex[:8]}"
    definition = {"key": key, "name": key, "category": CATEGORY, "start": start,
                  "steps": steps, **extra}
    handle = await env.client.start_workflow(
        WORKFLOW_NAME,
        JourneyInput(journey_key=key, version=1, contact_id=cid, definition=definition),
        id=workflow_id(key, cid),
        task_queue=settings.temporal_task_queue,
        search_attributes=search_attributes(key, 1, cid) if with_search_attributes else None,
    )
    result: dict[str, Any] = await handle.result()
    return result, await step_log(db, result["run_id"])


def _at(logs: list[StepLog], step: str, action: str) -> datetime:
    return next(r.at for r in logs if r.step == step and r.action == action)


def _close(actual: datetime, expected: datetime) -> bool:
    return expected <= actual <= expected + SLACK


async def test_thirty_days(skipping: WorkflowEnvironment, settings: Settings, db: Database) -> None:
    ny = ZoneInfo("America/New_York")
    cid = await _contact(db, "America/New_York")
    result, logs = await _run(
        skipping, settings, db, cid,
        {"month": {"type": "wait", "duration": "P30D", "next": "done"}, "done": {"type": "exit"}},
        "month",
        with_search_attributes=False,  # runs without our attributes must not upsert them
    )
    assert result["status"] == "completed"
    went_in, went_out = _at(logs, "month", "entered"), _at(logs, "month", "left")
    # Thirty calendar days on the contact's wall clock (DST changes keep the local time).
    local_in = went_in.astimezone(ny).replace(tzinfo=None)
    expected = (local_in + timedelta(days=30)).replace(tzinfo=ny).astimezone(UTC)
    assert _close(went_out, expected), (went_in, went_out, expected)


async def test_until_a_date_attribute_the_day_before_at_nine(
    skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    # The test server's clock runs ahead of the wall clock as it skips: plan from its now.
    server_now = await skipping.get_current_time()
    appointment = server_now.astimezone(tokyo).date() + timedelta(days=10)
    cid = await _contact(db, "Asia/Tokyo", {"appointment": appointment.isoformat()})
    result, logs = await _run(
        skipping, settings, db, cid,
        {
            "before": {"type": "wait", "until_attribute": "appointment", "offset": "-P1D",
                       "at_local_time": "09:00", "next": "done"},
            "done": {"type": "exit"},
        },
        "before",
    )
    assert result["status"] == "completed"
    expected = datetime.combine(appointment - timedelta(days=1), time(9), tzinfo=tokyo)
    assert _close(_at(logs, "before", "left"), expected.astimezone(UTC))


def _next_weekday_nine(after: datetime, zone: ZoneInfo) -> datetime:
    day: date = after.astimezone(zone).date()
    while True:
        candidate = datetime.combine(day, time(9), tzinfo=zone)
        if candidate.weekday() < 5 and candidate >= after:
            return candidate.astimezone(UTC)
        day += timedelta(days=1)


async def test_next_weekday_nine_in_new_york(
    skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    ny = ZoneInfo("America/New_York")
    cid = await _contact(db, "America/New_York")
    result, logs = await _run(
        skipping, settings, db, cid,
        {
            "nine": {"type": "wait", "duration": "PT1M", "at_local_time": "09:00",
                     "days": ["mon", "tue", "wed", "thu", "fri"], "next": "done"},
            "done": {"type": "exit"},
        },
        "nine",
    )
    assert result["status"] == "completed"
    went_in, went_out = _at(logs, "nine", "entered"), _at(logs, "nine", "left")
    expected = _next_weekday_nine(went_in + timedelta(minutes=1), ny)
    assert _close(went_out, expected), (went_in, went_out, expected)
    local = went_out.astimezone(ny)
    assert local.weekday() < 5 and (local.hour, local.minute) == (9, 0)


async def test_send_waits_for_the_send_window(
    skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    zone = ZoneInfo("Pacific/Auckland")
    cid = await _contact(db, "Pacific/Auckland")
    tpl = await _template(db)
    result, logs = await _run(
        skipping, settings, db, cid,
        {"mail": {"type": "send_email", "template": tpl, "next": "done"},
         "done": {"type": "exit"}},
        "mail",
        send_window={"hours": "09:00-10:00", "days": ["tue", "thu"]},
    )
    assert result["status"] == "completed"
    went_in, went_out = _at(logs, "mail", "entered"), _at(logs, "mail", "left")
    local_in = went_in.astimezone(zone)
    if local_in.weekday() in (1, 3) and 9 <= local_in.hour < 10:
        expected = went_in
    else:
        day = local_in.date()
        while True:
            opening = datetime.combine(day, time(9), tzinfo=zone)
            if opening.weekday() in (1, 3) and opening > went_in:
                break
            day += timedelta(days=1)
        expected = opening.astimezone(UTC)
    assert _close(went_out, expected), (went_in, went_out, expected)


async def test_frequency_cap_defers_until_the_oldest_send_leaves_the_period(
    skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    cid = await _contact(db, "UTC")
    tpl = await _template(db)
    sent_at = (await skipping.get_current_time()) - timedelta(hours=1)
    k = f"other-{tag()}/s/1"
    async with db.session() as s:
        s.add(Send(send_key=k, run_id=f"other-{tag()}", journey_key="other", version=1, step="s",
                   visit=1, contact_id=cid, template_key=tpl, category=CATEGORY,
                   message_id=f"<{k}@t>", status="sent", sent_at=sent_at))
        await s.commit()
    result, logs = await _run(
        skipping, settings, db, cid,
        {"mail": {"type": "send_email", "template": tpl, "next": "done"},
         "done": {"type": "exit"}},
        "mail",
        frequency_cap={"max": 1, "period": "P1D", "action": "defer"},
    )
    assert result["status"] == "completed"
    assert _close(_at(logs, "mail", "left"), sent_at + timedelta(days=1))
