"""A delivery that breaks for a reason other than Temporal's, after the event rows were
locked, is rolled back and left pending for the sweep; what the caller still holds stays
readable (the rollback expires every object loaded in the session):

- a batch with a repeated idempotency key (in the batch, and of an earlier event) is
  answered 202 with each item's outcome, not a 500;
- the update_contact step's loop over its segment events goes on to the next event after
  one event's delivery breaks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client

from activities.contact_updates import ContactUpdateActivities, event_key
from core.config import Settings
from core.db import Database
from core.models import Event
from services.context import ServiceContext
from tests.integration.entry_support import contact, definition, published, tag
from tests.integration.test_event_redelivery import _event
from workflows.types import UpdateContactInput


def _break_after_lock(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """The next `times` dispatches lock their event rows, then break (not Temporal)."""
    import services.dispatch as dispatch

    real = dispatch._lock
    calls = [0]

    async def lock_then_break(ctx: ServiceContext, events: Sequence[Event]) -> Any:
        locked = await real(ctx, events)
        calls[0] += 1
        if calls[0] <= times:
            raise ValueError("injected")
        return locked

    monkeypatch.setattr(dispatch, "_lock", lock_then_break)
    return calls


async def test_a_batch_with_repeated_keys_is_answered_when_its_delivery_breaks(
    api: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = tag()
    name = f"dup_{t}"
    key = await published(api, definition(f"trig-{t}", {"type": "event", "event": name}))
    cid = await contact(api)
    r = await api.post(
        "/v1/events",
        json={"contact": {"id": cid}, "event": name, "idempotency_key": f"{t}-earlier"},
    )
    assert r.status_code == 200 and r.json()["dispatch"] == "delivered", r.text
    earlier = r.json()

    calls = _break_after_lock(monkeypatch, 1)
    item = {"contact": {"id": cid}, "event": name}
    r = await api.post(
        "/v1/events",
        json={
            "events": [
                {**item, "idempotency_key": f"{t}-new"},
                {**item, "idempotency_key": f"{t}-new"},
                {**item, "idempotency_key": f"{t}-earlier"},
            ]
        },
    )
    assert r.status_code == 202, r.text
    assert calls[0] == 1
    new, again, old = r.json()["results"]
    assert new["dispatch"] == "pending" and new["duplicate"] is False
    assert again == {**new, "duplicate": True}
    assert old == {**earlier, "duplicate": True}
    assert old["journeys"] == [{"journey": key, "action": "started"}]
    assert (await _event(db, new["id"])).dispatched_at is None  # left to the sweep


async def test_update_contact_dispatches_its_later_events_after_one_breaks(
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = tag()
    cid = await contact(api)
    segments = [f"a-{t}", f"b-{t}"]
    key = await published(
        api,
        definition(
            f"entry-{t}",
            {"type": "event", "event": "segment_entry", "where": {"segment": segments[1]}},
        ),
    )
    inp = UpdateContactInput(
        contact_id=cid,
        journey_key=f"upd-{t}",
        run_id=f"r_{t}",
        step="tag",
        visit=1,
        add_segments=segments,
    )
    acts = ContactUpdateActivities(db, settings)
    async with db.session() as s:
        for seg in segments:
            await acts._store_event(s, inp, "segment_entry", seg)
        await s.commit()
    calls = _break_after_lock(monkeypatch, 1)
    async with db.session() as s:
        await acts._dispatch(ServiceContext(s, settings, temporal), inp, segments, [])
    assert calls[0] == 2  # the second event was tried after the first broke
    async with db.session() as s:
        rows = {
            ev.properties["segment"]: ev
            for ev in (
                await s.exec(
                    select(Event).where(
                        col(Event.idempotency_key).in_(
                            [event_key(inp, "segment_entry", seg) for seg in segments]
                        )
                    )
                )
            ).all()
        }
    assert rows[segments[0]].dispatched_at is None  # broke: left to the sweep
    second = rows[segments[1]]
    assert second.dispatched_at is not None and second.dispatch_result is not None
    assert second.dispatch_result["journeys"] == [{"journey": key, "action": "started"}]
