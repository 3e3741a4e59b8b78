"""Events stored while Temporal does not answer are kept (202, `dispatch: pending`) and the
redelivery sweep (schedule -> workflow -> activity on the real worker) delivers them once
Temporal answers: the waiting run moves, the triggered journey starts, each exactly once."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from core.codec import data_converter
from core.config import Settings
from core.db import Database
from core.models import Event, Run, utcnow
from core.temporal import keyring
from services.context import ServiceContext
from services.event_redelivery import ensure_redelivery_schedule, redeliver_due
from services.events import store_event
from tests.helpers import eventually
from tests.integration.entry_support import contact, definition, published, signals, tag
from workflows.event_redelivery import EventRedeliveryWorkflow
from workflows.journey import workflow_id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def unreachable(settings: Settings) -> Client:
    """A Temporal client whose server is not there (as when Temporal is down)."""
    return await Client.connect(
        f"127.0.0.1:{_closed_port()}",
        namespace=settings.temporal_namespace,
        data_converter=data_converter(keyring(settings)),
        lazy=True,
    )


@pytest_asyncio.fixture
async def api_without_temporal(
    settings: Settings, db: Database, unreachable: Client, admin_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    async with api_with_temporal(settings, db, unreachable, admin_key) as c:
        yield c


@asynccontextmanager
async def api_with_temporal(
    settings: Settings, db: Database, temporal: Client, admin_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API (over ASGI, with the admin key) talking to the given Temporal client."""
    from api.main import create_app

    app = create_app(settings, db=db, temporal=temporal)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as c:
        yield c


def _waiting_journey(key: str, event: str) -> dict[str, Any]:
    return {
        "key": key,
        "name": f"Waits {key}",
        "category": "care_reminders",
        "trigger": {"type": "manual"},
        "start": "listen",
        "steps": {
            "listen": {"type": "wait_for_event", "event": event, "timeout": "P1D",
                       "yes": "booked", "no": "done"},
            "booked": {"type": "exit", "reason": "booked"},
            "done": {"type": "exit"},
        },
    }


async def _signals(temporal: Client, key: str, cid: str) -> list[str]:
    names = []
    async for ev in temporal.get_workflow_handle(workflow_id(key, cid)).fetch_history_events():
        if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            names.append(ev.workflow_execution_signaled_event_attributes.signal_name)
    return names


async def _runs(db: Database, key: str, cid: str) -> list[Run]:
    async with db.session() as s:
        return list(
            (await s.exec(select(Run).where(Run.journey_key == key, Run.contact_id == cid))).all()
        )


async def _event(db: Database, event_id: str) -> Event:
    async with db.session() as s:
        ev = await s.get(Event, event_id)
    assert ev is not None
    return ev


async def _sweep_once(temporal: Client, settings: Settings) -> int:
    """One sweep, as the schedule's workflow runs it on the worker."""
    delivered: int = await temporal.execute_workflow(
        EventRedeliveryWorkflow.run,
        1,
        id=f"events-redelivery-test-{uuid.uuid4().hex[:8]}",
        task_queue=settings.temporal_task_queue,
        execution_timeout=timedelta(seconds=60),
    )
    return delivered


async def test_event_stored_while_temporal_is_down_is_delivered_once_it_is_back(
    api: httpx.AsyncClient,
    api_without_temporal: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
) -> None:
    t = tag()
    name = f"booked_{t}"
    waiter = await published(api, _waiting_journey(f"wait-{t}", name))
    # Triggered by the event, ends at once, and may start again: a second delivery of the
    # same event would show as a second run.
    starter = await published(
        api,
        definition(f"trig-{t}", {"type": "event", "event": name}, reentry={"mode": "always"},
                   hold=False),
    )
    cid = await contact(api)
    r = await api.post(f"/v1/journeys/{waiter}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1

    async def listening() -> bool:
        runs = await _runs(db, waiter, cid)
        return bool(runs) and (runs[0].waiting_for or {}).get("kind") == "event"

    await eventually(listening, timeout=20)

    # Temporal is unreachable for this API: the event is stored and accepted, not lost.
    r = await api_without_temporal.post(
        "/v1/events",
        json={"contact": {"id": cid}, "event": name, "idempotency_key": f"k-{t}"},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["dispatch"] == "pending" and body["duplicate"] is False
    assert {(j["journey"], j["action"]) for j in body["journeys"]} == {
        (waiter, "pending"), (starter, "pending")
    }
    ev = await _event(db, body["id"])
    assert ev.dispatched_at is None and ev.dispatch_attempts == 1
    assert ev.dispatch_due_at is not None and ev.dispatch_due_at > ev.received_at
    assert await _signals(temporal, waiter, cid) == []
    assert await _runs(db, starter, cid) == []

    # Temporal is back (the worker's client): the sweep delivers once the backoff is over.
    async def delivered() -> bool:
        await _sweep_once(temporal, settings)
        return (await _event(db, body["id"])).dispatched_at is not None

    await eventually(delivered, timeout=30, interval=1)
    ev = await _event(db, body["id"])
    assert ev.dispatch_result is not None and ev.dispatch_result["dispatch"] == "delivered"
    assert {(j["journey"], j["action"]) for j in ev.dispatch_result["journeys"]} == {
        (waiter, "signalled"), (starter, "started")
    }

    async def moved() -> Run | None:
        runs = await _runs(db, waiter, cid)
        return runs[0] if runs and runs[0].status == "exited" else None

    run = await eventually(moved, timeout=20)
    assert run is not None and run.exit_reason == "booked"

    # Sweeping again, and repeating the request, reach nothing a second time.
    await _sweep_once(temporal, settings)
    r = await api.post(
        "/v1/events",
        json={"contact": {"id": cid}, "event": name, "idempotency_key": f"k-{t}"},
    )
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert await _signals(temporal, waiter, cid) == ["event"]
    assert len(await _runs(db, starter, cid)) == 1


async def test_concurrent_sweeps_deliver_each_event_once(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    """Events stored with no Temporal at all (as a CLI import stores them), then two sweeps
    at the same moment: rows are claimed with SKIP LOCKED, so each run hears each event once."""
    t = tag()
    name = f"ping_{t}"
    key = await published(api, definition(f"hold-{t}"))  # manual; waits a day
    cids = [await contact(api) for _ in range(3)]
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": cids})
    assert r.json()["enrolled"] == 3
    async with db.session() as s:
        ctx = ServiceContext(s, settings)  # no Temporal client
        ids = [(await store_event(ctx, cid, name))[0].id for cid in cids for _ in range(2)]
        # As if received a while ago (past the grace the request path gets).
        await s.exec(  # type: ignore[call-overload]
            Event.__table__.update()  # type: ignore[attr-defined]
            .where(col(Event.id).in_(ids))
            .values(received_at=utcnow() - timedelta(seconds=30))
        )
        await s.commit()

    async def sweep() -> None:
        async with db.session() as s:
            await redeliver_due(ServiceContext(s, settings, temporal))

    await asyncio.gather(sweep(), sweep(), sweep())
    async with db.session() as s:
        rows = (await s.exec(select(Event).where(col(Event.id).in_(ids)))).all()
    assert all(e.dispatched_at is not None for e in rows)
    for cid in cids:
        await signals(temporal, key, cid, 2)
    await asyncio.sleep(1)  # a duplicate signal, if any, would be in the history by now
    for cid in cids:
        assert await _signals(temporal, key, cid) == ["event", "event"]


async def test_schedule_runs_the_sweep_every_minute(
    settings: Settings, temporal: Client
) -> None:
    schedule_id = f"events-redelivery-{uuid.uuid4().hex[:8]}"
    await ensure_redelivery_schedule(temporal, settings.temporal_task_queue,
                                     schedule_id=schedule_id, workflow_id=schedule_id)
    await ensure_redelivery_schedule(temporal, settings.temporal_task_queue,
                                     schedule_id=schedule_id, workflow_id=schedule_id)
    handle = temporal.get_schedule_handle(schedule_id)
    try:
        described = await handle.describe()
        assert described.schedule.spec.intervals[0].every == timedelta(minutes=1)
        action = described.schedule.action
        assert getattr(action, "workflow", None) == "EventRedelivery"
    finally:
        await handle.delete()


async def test_an_event_that_fails_to_deliver_does_not_hold_back_the_others(
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-Temporal error on one event (injected here) puts that event off with backoff;
    the rest of its batch is delivered."""
    import services.event_redelivery as redelivery

    t = tag()
    key = await published(api, definition(f"hold-{t}"))
    cid = await contact(api)
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1
    async with db.session() as s:
        ctx = ServiceContext(s, settings)
        ids = [(await store_event(ctx, cid, f"note_{t}"))[0].id for _ in range(3)]
        table = Event.__table__  # type: ignore[attr-defined]
        await s.exec(  # type: ignore[call-overload]
            table.update().where(table.c.id.in_(ids))
            .values(received_at=utcnow() - timedelta(seconds=30))
        )
        await s.commit()
    bad = ids[1]
    real = redelivery.dispatch_events

    async def failing(ctx: ServiceContext, events: list[Event]) -> list[dict[str, Any]]:
        if any(ev.id == bad for ev in events):
            raise ValueError("injected")
        return await real(ctx, events)

    monkeypatch.setattr(redelivery, "dispatch_events", failing)
    async with db.session() as s:
        result = await redeliver_due(ServiceContext(s, settings, temporal))
    assert result.pending >= 1
    good = [await _event(db, i) for i in ids if i != bad]
    assert all(e.dispatched_at is not None for e in good)
    put_off = await _event(db, bad)
    assert put_off.dispatched_at is None and put_off.dispatch_attempts == 1
    assert put_off.dispatch_due_at is not None and put_off.dispatch_due_at > utcnow()
    await signals(temporal, key, cid, 2)
