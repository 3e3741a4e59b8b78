"""Temporal stopped while events arrive: they are stored (pending), and once Temporal is
back the worker's redelivery sweep (schedule `events-redelivery`, as `journeys worker`
creates it) delivers each to its waiting run exactly once."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, insert
from sqlmodel import col, select
from temporalio.api.enums.v1 import EventType

from core.models import Consent, Contact, Event, Run
from core.temporal import connect
from services.context import ServiceContext
from services.enrollment import enroll
from services.event_redelivery import SCHEDULE_ID
from services.events import ingest_many
from services.journeys import create_journey, publish_journey
from tests.fault.conftest import FaultStack
from tests.helpers import eventually
from workflows.journey import workflow_id

pytestmark = [pytest.mark.fault, pytest.mark.xdist_group("fault")]

CONTACTS = 20


async def test_events_stored_while_temporal_is_down_reach_their_runs_once(
    fault_stack: FaultStack,
) -> None:
    stack = fault_stack
    stack.start_worker()
    tag = uuid.uuid4().hex[:8]
    ids = [f"c_r{tag}{i:05d}" for i in range(CONTACTS)]
    key, name = f"redeliver-{tag}", f"booked_{tag}"
    client = await connect(stack.settings)
    async with stack.db.session() as s:
        await s.execute(
            insert(Contact),
            [{"id": cid, "external_id": f"r-{tag}-{i}", "email": f"r{tag}.{i}@example.com",
              "timezone": "UTC", "attributes": {}} for i, cid in enumerate(ids)],
        )
        await s.execute(
            insert(Consent),
            [{"contact_id": cid, "category": "care", "granted": True, "source": "test"}
             for cid in ids],
        )
        await s.commit()
        ctx = ServiceContext(s, stack.settings, client)
        await create_journey(ctx, {
            "key": key, "name": "redelivery", "category": "care", "trigger": {"type": "manual"},
            "start": "listen",
            "steps": {
                "listen": {"type": "wait_for_event", "event": name, "timeout": "P1D",
                           "yes": "booked", "no": "done"},
                "booked": {"type": "exit", "reason": "booked"},
                "done": {"type": "exit"},
            },
        })
        await publish_journey(ctx, key)
        assert (await enroll(ctx, key, ids)).enrolled == CONTACTS

    async def all_listening() -> bool:
        async with stack.db.session() as s:
            runs = (await s.exec(select(Run).where(Run.journey_key == key))).all()
        return len(runs) == CONTACTS and all(
            (r.waiting_for or {}).get("kind") == "event" for r in runs
        )

    await eventually(all_listening, timeout=60, interval=0.5)

    stack.temporal.stop()
    try:
        async with stack.db.session() as s:
            results = await ingest_many(
                ServiceContext(s, stack.settings, client),
                [{"contact": {"id": cid}, "event": name, "idempotency_key": f"{tag}-{cid}"}
                 for cid in ids],
            )
        assert {r["dispatch"] for r in results} == {"pending"}
        async with stack.db.session() as s:
            undelivered = (
                await s.exec(
                    select(func.count()).select_from(Event).where(
                        Event.name == name, col(Event.dispatched_at).is_(None)
                    )
                )
            ).one()
        assert int(undelivered) == CONTACTS
    finally:
        stack.temporal.start()
        await stack.temporal.wait_ready()

    # The worker created the schedule at start; fire it now rather than wait for its minute.
    await client.get_schedule_handle(SCHEDULE_ID).trigger()

    async def all_booked() -> bool:
        async with stack.db.session() as s:
            runs = (await s.exec(select(Run).where(Run.journey_key == key))).all()
        return all(r.status == "exited" and r.exit_reason == "booked" for r in runs)

    await eventually(all_booked, timeout=120, interval=1)
    async with stack.db.session() as s:
        events = (await s.exec(select(Event).where(Event.name == name))).all()
    assert len(events) == CONTACTS and all(e.dispatched_at is not None for e in events)
    for cid in ids:
        handle = client.get_workflow_handle(workflow_id(key, cid))
        signals = [
            ev async for ev in handle.fetch_history_events()
            if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]
        assert len(signals) == 1, cid
    stack.kill_workers()
