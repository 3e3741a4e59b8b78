"""The judge's database queue without an API process: crash safety, cache rebuilds,
two judge processes sharing the work, and refreshed network lists.

No app (and so no background judge) runs in this module, and it has a database of its own
(tests/integration/own_database.py): the judges each test drives are the only ones on its
queue, so what they judged can be counted.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest

from core.config import Settings
from core.db import Database
from core.models import TrackedLink, utcnow
from services.tracking import Hit, record_hit
from services.tracking_judge import TrackingJudge
from tests.integration.own_database import own_database_fixtures
from tests.integration.tracking_support import (
    CHROME,
    HOME_IP,
    HUMAN_HEADERS,
    Message,
    judged,
    make_message,
)

LINKS = {
    "book": "https://portal.example.org/book",
    "portal": "https://portal.example.org/",
    "call": "https://portal.example.org/call",
}


own, judge_db, judge_settings = own_database_fixtures("judge_queue")


def _hit(ip: str, seconds: float, sent: Message, ua: str = CHROME) -> Hit:
    headers = {k: v for k, v in HUMAN_HEADERS.items() if k != "user-agent"}
    return Hit(
        at=utcnow() + timedelta(seconds=seconds),
        ip=ip,
        method="GET",
        user_agent=ua,
        headers=headers,
    )


async def _record(db: Database, msg: Message, kind_or_link: str, hit: Hit) -> str:
    async with db.session() as s:
        if kind_or_link == "open":
            row = next(r for r in msg.links.rows if r.kind == "open")
        elif kind_or_link == "trap":
            row = next(r for r in msg.links.rows if r.kind == "trap")
        else:
            row = next(r for r in msg.links.rows if r.name == kind_or_link)
        link = await s.get(TrackedLink, row.id)
        assert link is not None
        return await record_hit(s, link, hit)


async def test_queued_events_survive_and_a_fresh_judge_rebuilds_message_state(
    judge_db: Database, judge_settings: Settings
) -> None:
    """Rows wait in the table with no judge running (as after a crash); a second judge
    process that never saw the message rebuilds its memory from the stored events."""
    msg = await make_message(judge_db, judge_settings, LINKS)
    ip = "88.198.202.10"
    await _record(judge_db, msg, "open", _hit(ip, 0, msg))
    await _record(judge_db, msg, "book", _hit(ip, 1, msg))
    first = TrackingJudge(judge_db, judge_settings, None)
    await first.work_once()
    rows = await judged(judge_db, msg.send_id, 2)
    assert rows and [r.verdict for r in rows] == ["human", "human"]

    await _record(judge_db, msg, "trap", _hit(ip, 2, msg))
    second = TrackingJudge(judge_db, judge_settings, None)  # another process: empty cache
    await second.work_once()
    rows = await judged(judge_db, msg.send_id, 3)
    assert rows and [(r.verdict, r.reason) for r in rows] == [("automated", "trap_link")] * 3
    assert [r.first_verdict for r in rows] == ["human", "human", "automated"]

    # The first judge's cache is now stale; it must notice and rebuild, not reuse it.
    await _record(judge_db, msg, "portal", _hit(HOME_IP, 30, msg))
    await first.work_once()
    rows = await judged(judge_db, msg.send_id, 4)
    assert rows and (rows[-1].verdict, rows[-1].reason) == ("human", "browser")


async def test_two_judges_share_the_queue_and_keep_each_message_in_order(
    judge_db: Database, judge_settings: Settings
) -> None:
    """Link sweeps are only seen if one classifier judges a message's clicks in order."""
    a = TrackingJudge(judge_db, judge_settings, None, batch_messages=2)
    b = TrackingJudge(judge_db, judge_settings, None, batch_messages=2)
    await a.work_once()  # events earlier tests of this module left queued are not counted
    messages = [await make_message(judge_db, judge_settings, LINKS) for _ in range(20)]
    for n, msg in enumerate(messages):
        ip = f"93.184.{n}.7"
        for i, name in enumerate(("book", "portal", "call")):
            await _record(judge_db, msg, name, _hit(ip, 0.5 * i, msg))
    done_a, done_b = await asyncio.gather(a.work_once(), b.work_once())
    assert done_a > 0 and done_b > 0, "both processes took part"
    assert done_a + done_b == 60, "each event judged once"
    for msg in messages:
        rows = await judged(judge_db, msg.send_id, 3)
        assert rows, "every queued event is judged"
        assert [(r.verdict, r.reason) for r in rows] == [("automated", "link_sweep")] * 3


async def test_refreshed_network_list_is_picked_up(
    judge_db: Database, judge_settings: Settings, tmp_path: Path
) -> None:
    from classifier import shipped_document_text

    home = tmp_path / "home"
    home.mkdir()
    local = judge_settings.model_copy(update={"journeys_home": home})
    judge = TrackingJudge(judge_db, local, None)
    msg = await make_message(judge_db, judge_settings, LINKS)
    await _record(judge_db, msg, "book", _hit("198.18.7.9", 0, msg))
    await judge.work_once()
    rows = await judged(judge_db, msg.send_id, 1)
    assert rows and rows[0].verdict == "human"

    doc = json.loads(shipped_document_text())
    doc["entries"].append(
        {
            "cidr": "198.18.7.0/24",
            "owner": "Example scanner",
            "scope": "link_scanner",
            "certainty": 0.95,
            "source": "https://example.org/ranges",
        }
    )
    from services.network_list import write_override

    write_override(home, doc)
    await _record(judge_db, msg, "portal", _hit("198.18.7.9", 60, msg))
    await judge.work_once()
    rows = await judged(judge_db, msg.send_id, 2)
    assert rows and (rows[-1].verdict, rows[-1].reason) == ("automated", "link_scanner")


@pytest.mark.parametrize("bad", ["not json", '{"as_of": "2026-01-01", "entries": [{"cidr": "x"}]}'])
async def test_invalid_refreshed_list_falls_back_to_the_shipped_one(
    tmp_path: Path, bad: str
) -> None:
    from services.network_list import load_active, override_path

    override_path(tmp_path).write_text(bad)
    active = load_active(tmp_path)
    assert active.path is None and active.entries > 100


async def test_every_verdict_and_revision_reaches_the_reports_rollup_before_commit(
    judge_db: Database, judge_settings: Settings
) -> None:
    """The report rollup counts each event under its stored verdict (its state row), in
    the judging transaction: a revision moves the count."""
    from sqlalchemy import text

    async def counted(*event_ids: str) -> list[tuple[str, str]]:
        async with judge_db.session() as s:
            rows = await s.exec(  # type: ignore[call-overload]
                text(
                    "SELECT te.id, st.verdict FROM tracking_event te "
                    "JOIN report_tracking_state st ON st.event_id = te.id "
                    "WHERE te.id = ANY(:ids) AND st.verdict = te.verdict ORDER BY te.at"
                ).bindparams(ids=list(event_ids))
            )
            return [(r[0], r[1]) for r in rows]

    msg = await make_message(judge_db, judge_settings, LINKS)
    ip = "88.198.202.11"
    click = await _record(judge_db, msg, "book", _hit(ip, 0, msg))
    await TrackingJudge(judge_db, judge_settings, None).work_once()
    assert await counted(click) == [(click, "human")]
    trap = await _record(judge_db, msg, "trap", _hit(ip, 5, msg))
    await TrackingJudge(judge_db, judge_settings, None).work_once()
    assert await counted(click, trap) == [(click, "automated"), (trap, "automated")]
