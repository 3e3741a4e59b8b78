"""send_cap against PostgreSQL: sends in flight count, a decision that hinges on them waits
for them to settle, and an allowed send is reserved in the ledger by the decision itself."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlmodel import select
from temporalio.testing import ActivityEnvironment

import activities.lookups
from activities.lookups import LookupActivities
from activities.sending import send_id_for, send_key_of
from core.config import Settings
from core.db import Database
from core.models import Send, utcnow
from workflows.types import (
    CAP_BY_IN_FLIGHT,
    CAP_BY_SENT,
    CAP_BY_STALE,
    SendCapInput,
    SendInput,
)


def _ids() -> tuple[str, str]:
    t = uuid.uuid4().hex[:10]
    return f"c_cap{t}", f"run-{t}"


async def _other_send(db: Database, cid: str, status: str, age: timedelta) -> str:
    key = f"other-{uuid.uuid4().hex[:8]}/s/1"
    async with db.session() as s:
        s.add(Send(id=send_id_for(key), send_key=key, run_id=key.split("/")[0],
                   journey_key="other", version=1, step="s", visit=1, contact_id=cid,
                   template_key="t", category="care", message_id=f"<{key}@t>", status=status,
                   created_at=utcnow() - age))
        await s.commit()
    return send_id_for(key)


def _decide(cid: str, run_id: str) -> SendCapInput:
    send = SendInput(run_id=run_id, journey_key="j", journey_name="J", version=1,
                     contact_id=cid, step="promo", visit=1, template_key="t", category="care")
    return SendCapInput(contact_id=cid, now=utcnow(), period="P1D", max_sends=1,
                        run_id=run_id, step="promo", visit=1, send=send)


async def _status(db: Database, send_id: str) -> str | None:
    async with db.session() as s:
        row = await s.get(Send, send_id)
    return row.status if row is not None else None


async def test_allowed_send_is_reserved_by_the_decision(db: Database, settings: Settings) -> None:
    cid, run_id = _ids()
    inp = _decide(cid, run_id)
    got = await ActivityEnvironment().run(LookupActivities(db, settings).send_cap, inp)
    assert got.next_allowed_at is None
    assert inp.send is not None
    assert await _status(db, send_id_for(send_key_of(inp.send))) == "reserved"
    # Asked again (an activity retry), the decision does not count its own reservation.
    again = await ActivityEnvironment().run(LookupActivities(db, settings).send_cap, inp)
    assert again.next_allowed_at is None


async def test_a_send_in_flight_that_ends_blocked_does_not_count(
    db: Database, settings: Settings
) -> None:
    cid, run_id = _ids()
    other = await _other_send(db, cid, "sending", timedelta(0))
    decision = asyncio.create_task(
        ActivityEnvironment().run(LookupActivities(db, settings).send_cap, _decide(cid, run_id))
    )
    await asyncio.sleep(0.6)
    assert not decision.done()  # waiting for the other send to settle
    async with db.session() as s:
        row = await s.get(Send, other)
        assert row is not None
        row.status = "blocked"
        s.add(row)
        await s.commit()
    got = await asyncio.wait_for(decision, 5)
    assert got.next_allowed_at is None


async def test_a_send_in_flight_that_is_sent_caps_for_the_period(
    db: Database, settings: Settings
) -> None:
    cid, run_id = _ids()
    other = await _other_send(db, cid, "reserved", timedelta(0))
    inp = _decide(cid, run_id)
    decision = asyncio.create_task(
        ActivityEnvironment().run(LookupActivities(db, settings).send_cap, inp)
    )
    await asyncio.sleep(0.6)
    sent_at = utcnow()
    async with db.session() as s:
        row = await s.get(Send, other)
        assert row is not None
        row.status, row.sent_at = "sent", sent_at
        s.add(row)
        await s.commit()
    got = await asyncio.wait_for(decision, 5)
    assert got.next_allowed_at is not None and got.basis == CAP_BY_SENT
    assert abs(got.next_allowed_at - (sent_at + timedelta(days=1))) < timedelta(seconds=1)
    async with db.session() as s:
        mine = (await s.exec(select(Send).where(Send.run_id == run_id))).all()
    assert mine == []  # a capped send reserves nothing


async def test_a_long_stuck_send_counts_without_waiting(db: Database, settings: Settings) -> None:
    cid, run_id = _ids()
    await _other_send(db, cid, "reserved", timedelta(minutes=30))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await ActivityEnvironment().run(
        LookupActivities(db, settings).send_cap, _decide(cid, run_id)
    )
    assert got.next_allowed_at is not None
    assert got.basis == CAP_BY_STALE  # decided only by assuming it went out
    assert loop.time() - t0 < 2


async def test_a_send_still_in_flight_after_the_settle_wait_leaves_it_undecided(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(activities.lookups, "CAP_SETTLE_WAIT", 0.5)
    cid, run_id = _ids()
    await _other_send(db, cid, "sending", timedelta(minutes=1))
    inp = _decide(cid, run_id)
    got = await ActivityEnvironment().run(LookupActivities(db, settings).send_cap, inp)
    assert got.basis == CAP_BY_IN_FLIGHT
    # When the cap frees should the send go out (the interpreter looks again well before).
    assert got.next_allowed_at is not None
    assert abs(got.next_allowed_at - (inp.now + timedelta(days=1, minutes=-1))) < timedelta(
        seconds=5
    )
    async with db.session() as s:
        assert (await s.exec(select(Send).where(Send.run_id == run_id))).all() == []
