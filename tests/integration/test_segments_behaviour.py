"""Behavioural rules (events within a period, human engagement, being in a journey) and
time-based rules ageing members out (and in) under a controllable clock."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import text
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Run, Send, TrackingEvent, new_id, utcnow
from services.events import store_event
from services.segment_membership import on_contact_changed, sweep_due
from tests.helpers import eventually
from tests.integration.segments_support import (
    make_contact,
    members,
    segment_events,
    service_ctx,
    tag,
)


async def _recheck_at(db: Database, key: str, contact_id: str) -> object:
    async with db.session() as s:
        row = await s.exec(  # type: ignore[call-overload]
            text("SELECT recheck_at FROM segment_membership WHERE segment_key = :k AND "
                 "contact_id = :c").bindparams(k=key, c=contact_id)
        )
        return row.scalar_one_or_none()


async def test_event_within_ages_out_with_the_clock(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    t = tag()
    now = utcnow()
    old, recent, never = [await make_contact(api, f"{t}-{n}", attributes={"cohort": t})
                          for n in "orn"]
    visit = f"visit_{t}"
    async with service_ctx(db, settings) as ctx:
        await store_event(ctx, old, visit, occurred_at=now - timedelta(days=80))
        await store_event(ctx, recent, visit, occurred_at=now - timedelta(days=5))
        await store_event(ctx, never, f"other_{t}", occurred_at=now)
    key = f"visited-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"event": visit, "within": "P90D"}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    assert await members(api, key) == {old, recent}
    recheck = await _recheck_at(db, key, old)
    assert recheck is not None
    assert abs(recheck - (now + timedelta(days=10))) < timedelta(seconds=1)  # type: ignore[operator]

    async with service_ctx(db, settings) as ctx:
        await sweep_due(ctx, now + timedelta(days=9))
    assert await members(api, key) == {old, recent}  # not due yet
    async with service_ctx(db, settings) as ctx:
        await sweep_due(ctx, now + timedelta(days=10, minutes=1))
    assert await members(api, key) == {recent}
    assert await segment_events(db, key) == [("segment_exit", old)]
    # A new visit brings the contact back at once (the event hook, not the sweep).
    async with service_ctx(db, settings) as ctx:
        await store_event(ctx, old, visit)
    assert await members(api, key) == {old, recent}
    assert (await segment_events(db, key))[-1] == ("segment_entry", old)


async def test_not_within_ages_in(api: httpx.AsyncClient, db: Database, settings: Settings) -> None:
    """"Has not had X in 30 days": a non-member enters when its last X ages out."""
    t = tag()
    now = utcnow()
    quiet = await make_contact(api, f"{t}-q", attributes={"cohort": t})
    busy = await make_contact(api, f"{t}-b", attributes={"cohort": t})
    name = f"login_{t}"
    async with service_ctx(db, settings) as ctx:
        await store_event(ctx, busy, name, occurred_at=now - timedelta(days=20))
    key = f"lapsed-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"not": {"event": name, "within": "P30D"}}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    assert await members(api, key) == {quiet}
    async with service_ctx(db, settings) as ctx:
        assert await sweep_due(ctx, now + timedelta(days=9)) >= 0
        assert await members(api, key) == {quiet}
        await sweep_due(ctx, now + timedelta(days=10, minutes=1))
    assert await members(api, key) == {quiet, busy}
    assert await segment_events(db, key) == [("segment_entry", busy)]


async def _send(db: Database, contact_id: str, journey: str, step: str) -> str:
    send_id = new_id("s")
    async with db.session() as s:
        s.add(Send(id=send_id, send_key=f"r_{send_id}/{step}/1", run_id=f"r_{send_id}",
                   journey_key=journey, version=1, step=step, visit=1, contact_id=contact_id,
                   template_key="t", message_id=f"<{send_id}@test>", status="sent"))
        await s.commit()
    return send_id


async def _track(db: Database, send_id: str, kind: str, verdict: str, days_ago: float,
                 link: str | None = None) -> None:
    async with db.session() as s:
        s.add(TrackingEvent(send_id=send_id, kind=kind, verdict=verdict, link=link,
                            at=utcnow() - timedelta(days=days_ago)))
        await s.commit()


async def test_human_engagement_only(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    t = tag()
    journey = f"screening-{t}"
    clicker = await make_contact(api, f"{t}-c", attributes={"cohort": t})
    machine = await make_contact(api, f"{t}-m", attributes={"cohort": t})
    s1 = await _send(db, clicker, journey, "invite")
    s2 = await _send(db, machine, journey, "invite")
    await _track(db, s1, "click", "human", 5, link="book")
    await _track(db, s2, "open", "automated", 1)
    await _track(db, s2, "click", "automated", 1, link="book")
    cohort = {"attr": "cohort", "op": "eq", "value": t}
    rules = {
        f"clicked-{t}": {"engagement": "click", "journey": journey, "link": "book",
                         "within": "P30D"},
        f"opened-{t}": {"engagement": "open", "within": "P30D"},
        f"unengaged-{t}": {"not": {"any": [{"engagement": "open", "within": "P90D"},
                                           {"engagement": "click", "within": "P90D"}]}},
        f"other-journey-{t}": {"engagement": "click", "journey": f"x-{t}"},
    }
    for key, rule in rules.items():
        r = await api.post("/v1/segments", json={"key": key, "rule": {"all": [cohort, rule]}})
        assert r.status_code == 201, r.text
    assert await members(api, f"clicked-{t}") == {clicker}
    assert await members(api, f"opened-{t}") == set()  # machine opens never count
    assert await members(api, f"unengaged-{t}") == {machine}
    assert await members(api, f"other-journey-{t}") == set()

    # A human open arrives for the machine-only contact (the tracking judge calls the hook).
    await _track(db, s2, "open", "human", 0)
    async with service_ctx(db, settings) as ctx:
        await on_contact_changed(ctx, machine, kinds={"engagement"})
    assert await members(api, f"opened-{t}") == {machine}
    assert await members(api, f"unengaged-{t}") == set()
    assert ("segment_exit", machine) in await segment_events(db, f"unengaged-{t}")


async def test_in_journey_follows_runs(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    t = tag()
    journey = f"onboarding-{t}"
    a = await make_contact(api, f"{t}-a", attributes={"cohort": t})
    b = await make_contact(api, f"{t}-b", attributes={"cohort": t})
    cohort = {"attr": "cohort", "op": "eq", "value": t}
    for key, rule in {f"in-{t}": {"journey": journey},
                      f"out-{t}": {"journey": journey, "in": False}}.items():
        r = await api.post("/v1/segments", json={"key": key, "rule": {"all": [cohort, rule]}})
        assert r.status_code == 201, r.text
    assert await members(api, f"in-{t}") == set()
    async with db.session() as s:
        s.add(Run(id=f"run-{t}", journey_key=journey, version=1, contact_id=a,
                  workflow_id=f"journey/{journey}/{a}", status="running"))
        await s.commit()
    async with service_ctx(db, settings) as ctx:
        await on_contact_changed(ctx, a, kinds={f"journey:{journey}"})
    assert await members(api, f"in-{t}") == {a}
    assert await members(api, f"out-{t}") == {b}
    async with db.session() as s:
        run = await s.get(Run, f"run-{t}")
        assert run is not None
        run.status = "completed"
        s.add(run)
        await s.commit()
    async with service_ctx(db, settings) as ctx:
        await on_contact_changed(ctx, a, kinds={f"journey:{journey}"})
    assert await members(api, f"in-{t}") == set()


async def test_real_run_enters_and_leaves_a_journey_segment(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    """Through the real stack: enrolment puts the contact in the segment at once, and the
    worker's record_steps takes it out when the run ends."""
    t = tag()
    journey = f"pause-{t}"
    definition = {
        "key": journey, "name": "Pause", "category": "care_reminders",
        "trigger": {"type": "manual"}, "start": "pause",
        "steps": {"pause": {"type": "wait", "duration": "PT2S", "next": "done"},
                  "done": {"type": "exit"}},
    }
    assert (await api.post("/v1/journeys", json=definition)).status_code == 201
    assert (await api.post(f"/v1/journeys/{journey}/publish")).status_code == 200
    contact = await make_contact(api, f"{t}-a", attributes={"cohort": t})
    key = f"in-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t}, {"journey": journey}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    r = await api.post(f"/v1/journeys/{journey}/enrollments", json={"contact_ids": [contact]})
    assert r.status_code == 200 and r.json()["enrolled"] == 1, r.text
    assert await members(api, key) == {contact}

    async def left() -> bool:
        return await members(api, key) == set()

    await eventually(left, timeout=20)
    assert await segment_events(db, key) == [("segment_entry", contact),
                                             ("segment_exit", contact)]


async def test_sweep_schedule_runs_the_sweep_on_temporal(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    """The Temporal schedule starts the sweep workflow, whose activity drops members whose
    window ran out (here: 3 seconds after the segment is built)."""
    from services.segment_schedule import ensure_sweep_schedule

    t = tag()
    contact = await make_contact(api, f"{t}-a", attributes={"cohort": t})
    name = f"visit_{t}"
    async with service_ctx(db, settings) as ctx:
        await store_event(ctx, contact, name,
                          occurred_at=utcnow() - timedelta(days=1) + timedelta(seconds=3))
    key = f"day-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t}, {"event": name, "within": "P1D"}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    assert await members(api, key) == {contact}

    schedule_id = f"segments-sweep-{t}"
    await ensure_sweep_schedule(temporal, settings.temporal_task_queue, schedule_id=schedule_id)
    await ensure_sweep_schedule(temporal, settings.temporal_task_queue, schedule_id=schedule_id)
    handle = temporal.get_schedule_handle(schedule_id)
    try:
        described = await handle.describe()
        assert described.schedule.spec.intervals[0].every == timedelta(minutes=1)

        async def swept() -> bool:
            await handle.trigger()
            return await members(api, key) == set()

        await eventually(swept, timeout=30, interval=2)

        # An operator's pause survives the next worker start.
        await handle.pause(note="maintenance")
        await ensure_sweep_schedule(temporal, settings.temporal_task_queue, schedule_id=schedule_id)
        assert (await handle.describe()).schedule.state.paused
    finally:
        await handle.delete()
    assert await segment_events(db, key) == [("segment_exit", contact)]


async def test_segment_entry_starts_its_journey(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    """The issue's acceptance check on the real stack: one contact change -> membership ->
    segment_entry event -> the segment-entry journey's run, within a few seconds. The
    journey start is services.events.dispatch, which the entry work provides; until it is
    merged (dispatch is still the stub) only the event half can be checked."""
    import time

    from services import events

    t = tag()
    key = f"due-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"attr": "mammogram_due", "op": "eq", "value": True}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    journey = f"remind-{t}"
    definition = {
        "key": journey, "name": "Remind", "category": "care_reminders",
        "trigger": {"type": "segment_entry", "segment": key}, "start": "pause",
        "steps": {"pause": {"type": "wait", "duration": "PT30S", "next": "done"},
                  "done": {"type": "exit"}},
    }
    assert (await api.post("/v1/journeys", json=definition)).status_code == 201
    assert (await api.post(f"/v1/journeys/{journey}/publish")).status_code == 200
    contact = await make_contact(api, f"{t}-a",
                                 attributes={"cohort": t, "mammogram_due": False})
    started = time.perf_counter()
    r = await api.patch(f"/v1/contacts/{contact}", json={"attributes": {"mammogram_due": True}})
    assert r.status_code == 200
    assert await segment_events(db, key) == [("segment_entry", contact)]
    assert time.perf_counter() - started < 2
    if "grown by the journey-entry work" in (events.dispatch.__doc__ or ""):
        return  # dispatch is the stub on this branch: no journey can start yet

    async def running() -> bool:
        r = await api.get(f"/v1/journeys/{journey}/runs/{contact}")
        return r.status_code == 200 and r.json()["status"] == "running"

    await eventually(running, timeout=5)
