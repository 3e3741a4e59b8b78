"""A later try of an event's delivery does exactly what the earlier ones left undone:

- it knows which event started a run (the run row, or the run's input in Temporal when the
  process died before anything was written), so another event's run does not swallow this
  event's start, and this event's own lost start is not repeated;
- journeys an earlier try signalled or skipped are not reached again, even when their run
  closed in between (no re-entry the event never earned);
- a Temporal refusal of a misconfigured deployment (here: the namespace does not exist)
  leaves the event pending with the reason code (202), and it is delivered once fixed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import update
from sqlmodel import col
from temporalio.client import Client

from core.codec import data_converter
from core.config import Settings
from core.db import Database
from core.models import Event, Run, utcnow
from core.temporal import keyring
from services.context import ServiceContext
from services.enrollment import start
from services.event_redelivery import redeliver_due
from services.events import store_event
from services.journeys import latest_version
from tests.helpers import eventually
from tests.integration.entry_support import contact, definition, published, tag
from tests.integration.test_event_redelivery import _event, _runs, _signals, api_with_temporal
from workflows.journey import workflow_id
from workflows.types import EventSignal


async def _stored(db: Database, settings: Settings, cid: str, name: str, ago: float) -> str:
    """An event stored with no Temporal (undelivered), received `ago` seconds ago."""
    async with db.session() as s:
        ev = (await store_event(ServiceContext(s, settings), cid, name))[0]
        table = Event.__table__  # type: ignore[attr-defined]
        await s.exec(  # type: ignore[call-overload]
            table.update()
            .where(table.c.id == ev.id)
            .values(received_at=utcnow() - timedelta(seconds=ago))
        )
        await s.commit()
        return ev.id


async def _earlier_try(db: Database, event_id: str, journeys: list[dict[str, Any]]) -> None:
    """As if an earlier try did `journeys` and then failed (pending, due now)."""
    async with db.session() as s:
        table = Event.__table__  # type: ignore[attr-defined]
        await s.exec(  # type: ignore[call-overload]
            table.update()
            .where(table.c.id == event_id)
            .values(
                dispatch_attempts=1,
                dispatch_due_at=utcnow() - timedelta(seconds=1),
                dispatch_result={"dispatch": "pending", "journeys": journeys},
            )
        )
        await s.commit()


async def _all_ended(db: Database, key: str, cid: str, n: int) -> None:
    async def probe() -> bool:
        runs = await _runs(db, key, cid)
        return len(runs) == n and all(r.status != "running" for r in runs)

    await eventually(probe, timeout=20)


async def _sweep(db: Database, settings: Settings, temporal: Client) -> None:
    async with db.session() as s:
        await redeliver_due(ServiceContext(s, settings, temporal))


def _journeys(ev: Event) -> list[dict[str, Any]]:
    assert ev.dispatched_at is not None and ev.dispatch_result is not None
    return list(ev.dispatch_result["journeys"])


async def test_a_retry_knows_which_event_started_which_run(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    t = tag()
    name = f"visit_{t}"
    starter = await published(
        api,
        definition(
            f"trig-{t}", {"type": "event", "event": name}, reentry={"mode": "always"}, hold=False
        ),
    )
    cid = await contact(api)
    recorded = await _stored(db, settings, cid, name, 40)
    lost = await _stored(db, settings, cid, name, 35)
    crashed = await _stored(db, settings, cid, name, 30)
    # `recorded`: an earlier try started the journey and said so, then failed elsewhere.
    await _earlier_try(db, recorded, [{"journey": starter, "action": "started"}])
    # `crashed`: Temporal took its start, then the process died before writing anything
    # (the run row is the workflow's own).
    async with db.session() as s:
        v = await latest_version(ServiceContext(s, settings, temporal), starter)
    ev = await _event(db, crashed)
    out = await start(
        temporal,
        settings.temporal_task_queue,
        v,
        cid,
        trigger_event=EventSignal(crashed, name, ev.occurred_at),
    )
    assert out.run_id is not None
    await _all_ended(db, starter, cid, 1)
    # The run's own record says what started it...
    (own,) = await _runs(db, starter, cid)
    assert own.id == out.run_id and own.trigger_event_id == crashed
    # ...but a row from before that column does not: the retry asks Temporal (below).
    async with db.session() as s:
        await s.exec(  # type: ignore[call-overload]
            update(Run).where(col(Run.id) == out.run_id).values(trigger_event_id=None)
        )
        await s.commit()
    # Another event starts the journey too (so a run began after `lost` arrived).
    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": name})
    assert r.status_code == 200 and r.json()["started"] == 1
    await _all_ended(db, starter, cid, 2)

    await _sweep(db, settings, temporal)
    started = [{"journey": starter, "action": "started"}]
    assert _journeys(await _event(db, recorded)) == started  # not started again
    assert _journeys(await _event(db, crashed)) == started  # its run found in Temporal
    assert _journeys(await _event(db, lost)) == started  # the other runs were not its own
    await _all_ended(db, starter, cid, 3)
    triggers = {r.id: r.trigger_event_id for r in await _runs(db, starter, cid)}
    assert triggers[out.run_id] == crashed  # learnt from Temporal, now on the row
    assert set(triggers.values()) == {crashed, r.json()["id"], lost}


async def test_a_retry_does_not_reach_again_what_an_earlier_try_reached(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    t = tag()
    name = f"call_{t}"
    # Triggered by the event, and running for this contact when the event first went out.
    reenter = await published(
        api,
        definition(f"re-{t}", {"type": "event", "event": name}, reentry={"mode": "always"}),
    )
    hold = await published(api, definition(f"hold-{t}"))  # manual, waits a day
    trig = await published(
        api,
        definition(
            f"trig-{t}", {"type": "event", "event": name}, reentry={"mode": "always"}, hold=False
        ),
    )
    cid = await contact(api)
    for key in (reenter, hold):
        r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
        assert r.json()["enrolled"] == 1

    async def both_running() -> bool:
        counts = [len(await _runs(db, k, cid)) for k in (reenter, hold)]
        return counts == [1, 1]

    await eventually(both_running, timeout=20)
    event_id = await _stored(db, settings, cid, name, 0)  # arrived while both were running
    # The earlier try signalled both running runs, then Temporal went away before `trig`.
    ev = await _event(db, event_id)
    sig = EventSignal(event_id, name, ev.occurred_at)
    for key in (reenter, hold):
        await temporal.get_workflow_handle(workflow_id(key, cid)).signal("event", sig)
    await _earlier_try(
        db,
        event_id,
        [
            {"journey": reenter, "action": "signalled"},
            {"journey": hold, "action": "signalled"},
            {"journey": trig, "action": "pending"},
        ],
    )
    # Between the tries, the run that was signalled closes (an operator ends it).
    r = await api.post(f"/v1/journeys/{reenter}/runs/{cid}/exit")
    assert r.status_code == 200, r.text
    await _all_ended(db, reenter, cid, 1)

    await _sweep(db, settings, temporal)
    assert sorted(_journeys(await _event(db, event_id)), key=lambda j: j["journey"]) == sorted(
        [
            {"journey": reenter, "action": "signalled"},
            {"journey": hold, "action": "signalled"},
            {"journey": trig, "action": "started"},
        ],
        key=lambda j: j["journey"],
    )
    await asyncio.sleep(1)  # a second run or signal, if any, would be there by now
    assert len(await _runs(db, reenter, cid)) == 1  # no re-entry from a delivered event
    assert await _signals(temporal, hold, cid) == ["event"]  # not signalled twice
    assert len(await _runs(db, trig, cid)) == 1  # what was missing was done


@pytest_asyncio.fixture
async def api_wrong_namespace(
    settings: Settings, db: Database, temporal: Client, admin_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API configured with a namespace the Temporal server does not have."""
    client = await Client.connect(
        temporal.service_client.config.target_host,
        namespace=f"missing-{uuid.uuid4().hex[:8]}",
        data_converter=data_converter(keyring(settings)),
    )
    async with api_with_temporal(settings, db, client, admin_key) as c:
        yield c


async def test_a_misconfigured_namespace_leaves_the_event_pending_until_fixed(
    api: httpx.AsyncClient,
    api_wrong_namespace: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
) -> None:
    """A deploy with a wrong namespace (or expired credentials) must not lose the events it
    receives: they stay pending with the reason, and are delivered once it is fixed."""
    t = tag()
    name = f"misconf_{t}"
    hold = await published(api, definition(f"hold-{t}"))
    trig = await published(api, definition(f"trig-{t}", {"type": "event", "event": name}))
    cid = await contact(api)
    r = await api.post(f"/v1/journeys/{hold}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1
    await eventually(lambda: _runs(db, hold, cid), timeout=20)

    r = await api_wrong_namespace.post(
        "/v1/events", json={"contact": {"id": cid}, "event": name, "idempotency_key": t}
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["dispatch"] == "pending"
    reason = "temporal_namespace_not_found"
    assert sorted(body["journeys"], key=lambda j: j["journey"]) == [
        {"journey": hold, "action": "pending", "reason": reason},
        {"journey": trig, "action": "pending", "reason": reason},
    ]
    # Stored, undelivered, due again with the backoff; the running run is not taken for
    # closed because its namespace was not found.
    ev = await _event(db, body["id"])
    assert ev.dispatched_at is None and ev.dispatch_due_at is not None
    assert ev.dispatch_attempts == 1
    assert [r.status for r in await _runs(db, hold, cid)] == ["running"]
    assert await _runs(db, trig, cid) == []
    assert await _signals(temporal, hold, cid) == []

    # The operator fixes the namespace; once due, the sweep delivers it, exactly once.
    await _earlier_try(db, body["id"], body["journeys"])
    await _sweep(db, settings, temporal)
    ev = await _event(db, body["id"])
    assert ev.dispatch_result is not None and ev.dispatch_result["dispatch"] == "delivered"
    assert sorted(_journeys(ev), key=lambda j: j["journey"]) == [
        {"journey": hold, "action": "signalled"},
        {"journey": trig, "action": "started"},
    ]
    assert await _signals(temporal, hold, cid) == ["event"]
    assert len(await _runs(db, trig, cid)) == 1
    # A repeat of the key answers what was done, without another try.
    r = await api.post(
        "/v1/events", json={"contact": {"id": cid}, "event": name, "idempotency_key": t}
    )
    assert r.status_code == 200 and r.json()["dispatch"] == "delivered"
    assert await _signals(temporal, hold, cid) == ["event"]


async def test_a_retry_after_a_lost_outcome_does_not_re_enter_a_run_that_heard_the_event(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    """The try that signalled the running run died before recording it; the run closed
    before the retry. Its history in Temporal shows it heard the event: no new run."""
    t = tag()
    name = f"lost_{t}"
    key = await published(
        api,
        definition(f"re-{t}", {"type": "event", "event": name}, reentry={"mode": "always"}),
    )
    cid = await contact(api)
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1
    (run,) = await eventually(lambda: _runs(db, key, cid), timeout=20)
    async with db.session() as s:  # it began well before the event arrived
        table = Run.__table__  # type: ignore[attr-defined]
        await s.exec(  # type: ignore[call-overload]
            table.update()
            .where(table.c.id == run.id)
            .values(started_at=utcnow() - timedelta(minutes=5))
        )
        await s.commit()
    event_id = await _stored(db, settings, cid, name, 30)
    ev = await _event(db, event_id)
    # The lost try: the signal went out, nothing was recorded.
    await temporal.get_workflow_handle(workflow_id(key, cid)).signal(
        "event", EventSignal(event_id, name, ev.occurred_at)
    )
    r = await api.post(f"/v1/journeys/{key}/runs/{cid}/exit")
    assert r.status_code == 200, r.text
    await _all_ended(db, key, cid, 1)

    await _sweep(db, settings, temporal)
    assert _journeys(await _event(db, event_id)) == [{"journey": key, "action": "signalled"}]
    await asyncio.sleep(1)
    assert len(await _runs(db, key, cid)) == 1


async def test_a_stored_event_whose_delivery_breaks_is_answered_pending_not_500(
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import services.dispatch as dispatch

    t = tag()
    name = f"broken_{t}"
    key = await published(api, definition(f"trig-{t}", {"type": "event", "event": name}))
    cid = await contact(api)
    real = dispatch.dispatch_events

    async def broken(ctx: ServiceContext, events: Any) -> list[dict[str, Any]]:
        raise ValueError("injected")

    monkeypatch.setattr(dispatch, "dispatch_events", broken)
    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": name})
    assert r.status_code == 202, r.text
    assert r.json()["dispatch"] == "pending" and r.json()["duplicate"] is False
    ev = await _event(db, r.json()["id"])
    assert ev.dispatched_at is None  # stored, left to the sweep
    monkeypatch.setattr(dispatch, "dispatch_events", real)
    async with db.session() as s:  # once past the grace, the sweep delivers it
        table = Event.__table__  # type: ignore[attr-defined]
        await s.exec(  # type: ignore[call-overload]
            table.update()
            .where(table.c.id == ev.id)
            .values(received_at=utcnow() - timedelta(seconds=30))
        )
        await s.commit()
    await _sweep(db, settings, temporal)
    assert _journeys(await _event(db, ev.id)) == [{"journey": key, "action": "started"}]
