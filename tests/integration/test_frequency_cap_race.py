"""The frequency cap holds when two journeys of one contact reach a send at the same
instant: the count and the send's reservation are one decision per contact
(activities.lookups.send_cap). Real stack: API, Temporal, worker, PostgreSQL, SMTP sink."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client

from activities.lookups import CAP_SETTLE_WAIT
from core.db import Database
from core.models import Contact, OutboxMessage, Send
from tests.helpers import eventually
from tests.journey_support import (
    enroll,
    finished,
    journey,
    make_contact,
    make_template,
    publish,
    until,
    waiting,
)
from workflows import steps
from workflows.steps import UNDECIDED_CAP_LOOKS

CONTACTS = 6  # several contacts, so the unlocked version loses the race in practice
# On a loaded machine the winner's send may still be in flight when the loser has waited
# CAP_SETTLE_WAIT for it: the loser then looks again after UNDECIDED_CAP_WAIT (a real
# minute in production), shortened here. The runs end within every look's settle wait and
# durable wait, plus slack for the load.
LOOK_AGAIN = timedelta(seconds=2)
RUN_ENDS_WITHIN = UNDECIDED_CAP_LOOKS * (CAP_SETTLE_WAIT + LOOK_AGAIN.total_seconds()) + 30


def _capped(tpl: str, action: str) -> dict[str, Any]:
    return journey(
        {
            "promo": {"type": "send_email", "template": tpl, "next": "done"},
            "done": {"type": "exit"},
        },
        "promo",
        frequency_cap={"max": 1, "period": "P1D", "action": action},
    )


async def _mails_to(db: Database, contact_ids: list[str]) -> dict[str, int]:
    async with db.session() as s:
        emails = {
            c.email: c.id
            for c in (await s.exec(select(Contact).where(col(Contact.id).in_(contact_ids)))).all()
        }
        counts = dict.fromkeys(contact_ids, 0)
        for m in (await s.exec(select(OutboxMessage))).all():
            for rcpt in m.rcpt_to:
                if rcpt in emails:
                    counts[emails[rcpt]] += 1
    return counts


async def _two_journeys_at_once(
    api: httpx.AsyncClient, db: Database, action: str
) -> tuple[str, str, list[str]]:
    tpl = await make_template(api)
    a = await publish(api, _capped(tpl, action))
    b = await publish(api, _capped(tpl, action))
    cids = [await make_contact(api, db) for _ in range(CONTACTS)]
    await asyncio.gather(enroll(api, a, *cids), enroll(api, b, *cids))
    return a, b, cids


async def test_cap_of_one_with_skip_sends_exactly_once(
    api: httpx.AsyncClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (The worker's sandbox passes `workflows` through: the interpreter reads this.)
    monkeypatch.setattr(steps, "UNDECIDED_CAP_WAIT", LOOK_AGAIN)
    a, b, cids = await _two_journeys_at_once(api, db, "skip")
    for cid in cids:
        runs = [await finished(api, key, cid, timeout=RUN_ENDS_WITHIN) for key in (a, b)]
        skipped = [
            r
            for r in runs
            if ("promo", "skipped", "frequency_cap")
            in [(h["step"], h["action"], h["outcome"]) for h in r["history"]]
        ]
        assert len(skipped) == 1, (cid, [r["history"] for r in runs])
    async with db.session() as s:
        sends = (await s.exec(select(Send).where(col(Send.contact_id).in_(cids)))).all()
    assert sorted(x.contact_id for x in sends if x.status == "sent") == sorted(cids)
    assert all(x.status == "sent" for x in sends)  # the skipped run reserved nothing

    async def one_each() -> dict[str, int] | None:
        counts = await _mails_to(db, cids)
        return counts if all(n >= 1 for n in counts.values()) else None

    counts = await eventually(one_each, timeout=20)
    await asyncio.sleep(0.5)  # a second message, if any, would have landed by now
    assert await _mails_to(db, cids) == dict.fromkeys(cids, 1), counts


async def test_cap_of_one_with_defer_sends_once_and_defers_the_other(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    a, b, cids = await _two_journeys_at_once(api, db, "defer")

    async def settled() -> list[tuple[str, str]] | None:
        async with db.session() as s:
            sends = (await s.exec(select(Send).where(col(Send.contact_id).in_(cids)))).all()
        done = [(x.contact_id, x.journey_key) for x in sends if x.status == "sent"]
        return done if len(done) >= len(cids) else None

    sent = await until(settled, timeout=30)
    assert sorted(cid for cid, _ in sent) == sorted(cids)  # one send per contact
    for cid, key in sent:
        other = b if key == a else a
        state = await waiting(temporal, other, cid, "frequency_cap")
        assert state["step"] == "promo"
    assert await _mails_to(db, cids) == dict.fromkeys(cids, 1)
