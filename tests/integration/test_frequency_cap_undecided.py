"""An undecided frequency cap: the count reaches the cap only because of another journey's
send still in flight after send_cap's settle wait. The run looks again after a short
durable wait (skip and defer journeys alike) instead of deciding, so a send that then fails
does not cost the patient this message; after UNDECIDED_CAP_LOOKS looks, or once the send
has been in flight longer than IN_FLIGHT_STALE, it is counted as sent and the step record
says so. Time-skipping Temporal server (the looks are a minute apart), real PostgreSQL and
SMTP sink."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

import activities.lookups
from core.config import Settings
from core.db import Database
from core.models import Consent, Contact, OutboxMessage, Run, Send, StepLog, Template
from tests.journey_support import CATEGORY, step_log, tag, until
from workflows.journey import WORKFLOW_NAME, workflow_id
from workflows.steps import CAP_ASSUMED_SENT, UNDECIDED_CAP_LOOKS, UNDECIDED_CAP_WAIT
from workflows.types import JourneyInput


@pytest.fixture(autouse=True)
def short_settle_wait() -> Iterator[None]:
    """send_cap waits up to 10 s (wall clock) for sends in flight to settle; here it gives
    up quickly. The session's worker runs in this process, so the module constant applies."""
    mp = pytest.MonkeyPatch()
    mp.setattr(activities.lookups, "CAP_SETTLE_WAIT", 0.3)
    yield
    mp.undo()


@dataclass
class Patient:
    contact_id: str
    email: str
    template: str


async def _patient(db: Database) -> Patient:
    t = tag()
    c = Contact(external_id=f"capu-{t}", email=f"capu-{t}@example.com", timezone="UTC")
    tpl = Template(
        key=f"capu-tpl-{t}", subject="Hi", html="<p>Hi</p>", track_opens=False, track_clicks=False
    )
    patient = Patient(c.id, f"capu-{t}@example.com", tpl.key)
    async with db.session() as s:
        s.add(c)
        s.add(tpl)
        await s.commit()
        s.add(
            Consent(contact_id=patient.contact_id, category=CATEGORY, granted=True, source="test")
        )
        await s.commit()
    return patient


async def _send_in_flight(
    env: WorkflowEnvironment, db: Database, p: Patient, age: timedelta = timedelta(0)
) -> str:
    """Another journey's marketing send to the patient, not yet settled. Its time is on the
    test server's clock (it runs ahead of the wall clock as it skips), the runs' clock."""
    now = await env.get_current_time()
    k = f"other-{tag()}/s/1"
    send = Send(
        send_key=k,
        run_id=k.split("/")[0],
        journey_key="other",
        version=1,
        step="s",
        visit=1,
        contact_id=p.contact_id,
        template_key=p.template,
        category=CATEGORY,
        message_id=f"<{k}@t>",
        status="sending",
        created_at=now - age,
    )
    async with db.session() as s:
        s.add(send)
        await s.commit()
    return send.id


async def _settle(env: WorkflowEnvironment, db: Database, send_id: str, status: str) -> None:
    now = await env.get_current_time()
    async with db.session() as s:
        row = await s.get(Send, send_id)
        assert row is not None
        row.status = status
        row.sent_at = now if status == "sent" else None
        s.add(row)
        await s.commit()


async def _start(
    env: WorkflowEnvironment, settings: Settings, p: Patient, action: str
) -> WorkflowHandle[Any, Any]:
    key = f"capu-{uuid.uuid4().hex[:8]}"
    definition = {
        "key": key,
        "name": key,
        "category": CATEGORY,
        "start": "promo",
        "steps": {
            "promo": {"type": "send_email", "template": p.template, "next": "done"},
            "done": {"type": "exit"},
        },
        "frequency_cap": {"max": 1, "period": "P1D", "action": action},
    }
    return await env.client.start_workflow(
        WORKFLOW_NAME,
        JourneyInput(journey_key=key, version=1, contact_id=p.contact_id, definition=definition),
        id=workflow_id(key, p.contact_id),
        task_queue=settings.temporal_task_queue,
    )


async def _first_decision(db: Database, handle: WorkflowHandle[Any, Any]) -> Run:
    """The run row once the first cap decision is made: waiting to look again, or (without
    the undecided looks) already past the step. Time does not skip while nobody awaits the
    result, so the run is still in its first wait when this returns."""
    desc = await handle.describe()

    async def decided() -> Run | None:
        async with db.session() as s:
            row = await s.get(Run, desc.run_id)
        if row is None:
            return None
        if row.status != "running" or (row.waiting_for or {}).get("kind") == "frequency_cap":
            return row
        return None

    return await until(decided)


async def _outcome(db: Database, run_id: str) -> list[tuple[str, str | None]]:
    return [(r.action, r.outcome) for r in await step_log(db, run_id) if r.step == "promo"]


async def _own_send(db: Database, run_id: str) -> Send | None:
    async with db.session() as s:
        return (await s.exec(select(Send).where(Send.run_id == run_id))).first()


async def _mails_to(db: Database, email: str) -> int:
    async with db.session() as s:
        return sum(email in m.rcpt_to for m in (await s.exec(select(OutboxMessage))).all())


def _at(logs: list[StepLog], action: str) -> Any:
    return next(r.at for r in logs if r.step == "promo" and r.action == action)


async def _undecided_then(
    env: WorkflowEnvironment, settings: Settings, db: Database, action: str, status: str
) -> tuple[Patient, dict[str, Any], list[StepLog]]:
    """A run whose first cap decision is undecided (another journey's send in flight); that
    send then settles as `status` while the run waits to look again. The run's result and
    records."""
    p = await _patient(db)
    other = await _send_in_flight(env, db, p)
    handle = await _start(env, settings, p, action)
    run = await _first_decision(db, handle)
    waiting = run.waiting_for or {}
    assert (waiting.get("kind"), waiting.get("undecided")) == ("frequency_cap", True), waiting
    await _settle(env, db, other, status)
    result = await handle.result()
    return p, result, await step_log(db, result["run_id"])


async def test_skip_journey_sends_when_the_send_in_flight_fails(
    time_skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    # "failed": e.g. the relay refused it for good.
    p, result, logs = await _undecided_then(time_skipping, settings, db, "skip", "failed")
    assert result["status"] == "completed"
    assert ("skipped", "frequency_cap") not in await _outcome(db, result["run_id"])
    mine = await _own_send(db, result["run_id"])
    assert mine is not None and mine.status == "sent"

    async def delivered() -> int | None:
        return await _mails_to(db, p.email) or None

    assert await until(delivered) == 1
    assert _at(logs, "left") - _at(logs, "entered") >= UNDECIDED_CAP_WAIT  # it looked again


async def test_skip_journey_skips_when_the_send_in_flight_goes_out(
    time_skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    _, result, logs = await _undecided_then(time_skipping, settings, db, "skip", "sent")
    assert ("skipped", "frequency_cap") in await _outcome(db, result["run_id"])
    assert _at(logs, "skipped") - _at(logs, "entered") >= UNDECIDED_CAP_WAIT
    assert await _own_send(db, result["run_id"]) is None


async def test_defer_journey_sends_when_the_send_in_flight_fails(
    time_skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    _, result, logs = await _undecided_then(time_skipping, settings, db, "defer", "blocked")
    mine = await _own_send(db, result["run_id"])
    assert mine is not None and mine.status == "sent"
    assert ("deferred", CAP_ASSUMED_SENT) not in await _outcome(db, result["run_id"])
    assert _at(logs, "left") - _at(logs, "entered") < timedelta(hours=1)


async def test_skip_journey_counts_a_send_still_in_flight_after_the_looks(
    time_skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    p = await _patient(db)
    await _send_in_flight(time_skipping, db, p)  # never settles
    handle = await _start(time_skipping, settings, p, "skip")
    result = await handle.result()
    logs = await step_log(db, result["run_id"])
    assert await _outcome(db, result["run_id"]) == [
        ("entered", None),
        ("skipped", CAP_ASSUMED_SENT),
        ("left", "done"),
    ]
    waited = _at(logs, "skipped") - _at(logs, "entered")
    assert waited >= (UNDECIDED_CAP_LOOKS - 1) * UNDECIDED_CAP_WAIT
    assert await _own_send(db, result["run_id"]) is None


async def test_defer_journey_defers_a_period_after_the_looks(
    time_skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    p = await _patient(db)
    await _send_in_flight(time_skipping, db, p)  # never settles: counted as sent after the looks
    handle = await _start(time_skipping, settings, p, "defer")
    result = await handle.result()
    logs = await step_log(db, result["run_id"])
    assert ("deferred", CAP_ASSUMED_SENT) in await _outcome(db, result["run_id"])
    # Deferred until the send in flight, counted as sent, leaves the day; then sent.
    assert _at(logs, "left") - _at(logs, "entered") >= timedelta(hours=23)
    mine = await _own_send(db, result["run_id"])
    assert mine is not None and mine.status == "sent"


async def test_a_stale_send_in_flight_is_counted_at_once_and_said_so(
    time_skipping: WorkflowEnvironment, settings: Settings, db: Database
) -> None:
    p = await _patient(db)
    await _send_in_flight(
        time_skipping, db, p, age=activities.lookups.IN_FLIGHT_STALE + timedelta(minutes=1)
    )
    handle = await _start(time_skipping, settings, p, "skip")
    result = await handle.result()
    logs = await step_log(db, result["run_id"])
    assert ("skipped", CAP_ASSUMED_SENT) in await _outcome(db, result["run_id"])
    assert _at(logs, "skipped") - _at(logs, "entered") < UNDECIDED_CAP_WAIT  # no looks
