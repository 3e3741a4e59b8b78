"""How the judge runs: in its own process (TRACKING_JUDGE_IN_API=false), woken by
PostgreSQL NOTIFY, and judging many messages at once without losing per-message order or
signalling an event twice. Real PostgreSQL and Temporal throughout.

The runs signalled here are workflows parked on a task queue nobody polls: a signal is
recorded in the run's history whether or not a worker ever picks the run up, and no
journey step moves on that could race the assertions. The module has a database of its
own (tests/integration/own_database.py), so the judges it starts are the only ones on its
queue: what each of them judged, and what is still queued, can be asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest_asyncio
from sqlalchemy import text
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Run, TrackedLink, TrackingEvent, utcnow
from devstack.child_env import child_env
from services.tracking import Hit, record_hit
from services.tracking_buffer import libpq_url
from services.tracking_judge import HITS_CHANNEL, LISTENER_NAME, SIGNAL_SENT, TrackingJudge
from tests.helpers import eventually
from tests.integration.own_database import own_database_fixtures
from tests.integration.tracking_support import (
    CHROME,
    HUMAN_HEADERS,
    Message,
    app_with_judge,
    events_of,
    make_message,
)

ROOT = Path(__file__).resolve().parents[2]
LINKS = {
    "book": "https://portal.example.org/book",
    "portal": "https://portal.example.org/",
    "call": "https://portal.example.org/call",
}


own, judge_db, judge_settings = own_database_fixtures("judge_modes")


@pytest_asyncio.fixture(scope="module")
async def parked(temporal: Client) -> AsyncIterator[list[str]]:
    """Workflow ids started here; terminated at the end of the module."""
    ids: list[str] = []
    yield ids
    for wid in ids:
        try:
            await temporal.get_workflow_handle(wid).terminate("test over")
        except Exception:
            pass


async def _message_of_a_run(
    db: Database, settings: Settings, temporal: Client, parked: list[str]
) -> tuple[Message, str]:
    """A running run (a parked workflow and its run row) and a message it sent."""
    wid = f"judge-test-{uuid.uuid4().hex}"
    handle = await temporal.start_workflow(
        "ParkedForJudgeTest", id=wid, task_queue=f"nobody-{uuid.uuid4().hex[:8]}"
    )
    parked.append(wid)
    run_id = handle.result_run_id or wid
    async with db.session() as s:
        s.add(
            Run(
                id=run_id,
                journey_key="tracking-test",
                version=1,
                contact_id="c_test",
                workflow_id=wid,
                status="running",
            )
        )
        await s.commit()
    return await make_message(db, settings, LINKS, run_id=run_id), wid


async def _engagement_signals(temporal: Client, wid: str) -> int:
    history = await temporal.get_workflow_handle(wid).fetch_history()
    return sum(
        1
        for e in history.events
        if e.HasField("workflow_execution_signaled_event_attributes")
        and e.workflow_execution_signaled_event_attributes.signal_name == "engagement"
    )


def _human_hit(ip: str, seconds: float = 0.0) -> Hit:
    headers = {k: v for k, v in HUMAN_HEADERS.items() if k != "user-agent"}
    return Hit(utcnow() + timedelta(seconds=seconds), ip, "GET", CHROME, headers)


async def _record(db: Database, msg: Message, name: str, hit: Hit) -> str:
    async with db.session() as s:
        row = next(r for r in msg.links.rows if r.name == name)
        link = await s.get(TrackedLink, row.id)
        assert link is not None
        return await record_hit(s, link, hit)


async def _event(db: Database, event_id: str) -> TrackingEvent | None:
    async with db.session() as s:
        return await s.get(TrackingEvent, event_id)


async def _settled(db: Database, event_id: str, field: str) -> TrackingEvent | None:
    """The event once `field` (verdict, signal_result) is set, else None."""
    row = await _event(db, event_id)
    return row if row is not None and getattr(row, field) else None


async def _judged_human_within(db: Database, event_id: str, timeout: float) -> None:
    row = await eventually(
        functools.partial(_settled, db, event_id, "verdict"), timeout=timeout, interval=0.05
    )
    assert row is not None and row.verdict == "human"


async def _listening(db: Database, name: str) -> bool:
    async with db.session() as s:
        n = (
            await s.exec(  # type: ignore[call-overload]
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                    "AND query = :q AND datname = current_database()"
                ).bindparams(name=name, q=f"LISTEN {HITS_CHANNEL}")
            )
        ).scalar_one()
    return bool(n)


async def test_a_judge_process_signals_a_click_recorded_by_an_api_without_a_judge(
    judge_db: Database, judge_settings: Settings, temporal: Client, parked: list[str]
) -> None:
    """`journeys judge` beside an API with TRACKING_JUDGE_IN_API=false: the API records
    the click and NOTIFYs; the judge process (polling only every 60 s) judges it and
    signals the run."""
    api_settings = judge_settings.model_copy(update={"tracking_judge_in_api": False})
    msg, wid = await _message_of_a_run(judge_db, judge_settings, temporal, parked)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "judge", "--poll-interval", "60"],
        env=child_env(judge_settings),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await eventually(lambda: _listening(judge_db, f"{LISTENER_NAME}-{proc.pid}"), timeout=60)
        async for app, client in app_with_judge(api_settings, judge_db, temporal):
            assert getattr(app.state, "tracking_judge", None) is None, "no judge in the API"
            r = await client.get(
                msg.click("book"), headers={**HUMAN_HEADERS, "x-forwarded-for": "73.15.40.12"}
            )
            assert r.status_code == 302
            stored = await events_of(judge_db, msg.send_id)
            assert len(stored) == 1
            probe = functools.partial(_settled, judge_db, stored[0].id, "signal_result")
            row = await eventually(probe, timeout=10, interval=0.05)
            assert row is not None and (row.verdict, row.signal_result) == ("human", SIGNAL_SENT)
            assert await _engagement_signals(temporal, wid) == 1
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]


async def test_notify_wakes_a_judge_that_would_not_poll_for_a_minute(
    judge_db: Database, judge_settings: Settings
) -> None:
    judge = TrackingJudge(judge_db, judge_settings, None, poll_interval=60)
    judge.start()
    try:
        await eventually(lambda: _listening(judge_db, f"{LISTENER_NAME}-{os.getpid()}"))
        await asyncio.sleep(0.5)  # the round LISTEN's start triggers is over
        msg = await make_message(judge_db, judge_settings, LINKS)
        first = await _record(judge_db, msg, "book", _human_hit("73.15.41.12"))
        await asyncio.sleep(1.5)
        row = await _event(judge_db, first)
        assert row is not None and row.verdict is None, "no NOTIFY yet: still queued"
        heard = judge.notifications
        async with judge_db.session() as s:
            await s.exec(text(f"NOTIFY {HITS_CHANNEL}"))  # type: ignore[call-overload]
            await s.commit()
        await eventually(lambda: _true(judge.notifications > heard), timeout=3, interval=0.05)

        await _judged_human_within(judge_db, first, timeout=10)
    finally:
        await judge.stop()


async def test_an_inline_write_wakes_a_judge_elsewhere_with_one_notify(
    db: Database, settings: Settings, temporal: Client
) -> None:
    """API with TRACKING_JUDGE_IN_API=false writing a hit inline (here: the routes alone,
    no buffer): the writing statement's own pg_notify wakes a judge of another process
    (one polling only every minute), and no second NOTIFY follows it."""
    from api.main import create_app

    api_settings = settings.model_copy(update={"tracking_judge_in_api": False})
    listener = await psycopg.AsyncConnection.connect(libpq_url(db), autocommit=True)
    judge = TrackingJudge(db, settings, None, poll_interval=60)
    judge.start()
    try:
        await listener.execute(f"LISTEN {HITS_CHANNEL}")
        await eventually(lambda: _listening(db, f"{LISTENER_NAME}-{os.getpid()}"))
        await asyncio.sleep(0.5)  # the round LISTEN's start triggers is over
        msg = await make_message(db, settings, LINKS)
        app = create_app(api_settings, db=db, temporal=temporal)  # no lifespan: inline writes
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        heard = judge.notifications
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            r = await c.get(msg.click("book"), headers=HUMAN_HEADERS)
        assert r.status_code == 302
        assert getattr(app.state, "tracking_judge", None) is None, "no judge in the API"
        await eventually(lambda: _true(judge.notifications > heard), timeout=3, interval=0.05)
        stored = await events_of(db, msg.send_id)
        assert len(stored) == 1
        await _judged_human_within(db, stored[0].id, timeout=10)
        # What the write sent: the statement's NOTIFY (its payload counts the rows), and
        # no payload-less ring after it.
        notes = [n.payload async for n in listener.notifies(timeout=1.0)]
        assert "1" in notes and "" not in notes, notes
    finally:
        await judge.stop()
        await listener.close()


async def test_concurrent_judging_keeps_message_order_and_signals_each_human_once(
    judge_db: Database, judge_settings: Settings, temporal: Client, parked: list[str]
) -> None:
    """Two judges, each with several transactions in flight over small batches: a link
    sweep is only seen (and not signalled) if each message's clicks are judged in order
    by one classifier; every human click reaches its run exactly once. On a loaded machine
    one judge can finish a round before the other reads the queue: up to three rounds,
    each checked in full, until one has had both judges at work."""
    judges = [
        TrackingJudge(
            judge_db, judge_settings, temporal, batch_messages=2, judge_tasks=4, listen=False
        )
        for _ in range(2)
    ]
    await judges[0].work_once()  # whatever earlier tests of this module left queued
    rounds = []
    for _ in range(3):
        done = await _judge_concurrently(judge_db, judge_settings, temporal, parked, judges)
        rounds.append(done)
        if all(n > 0 for n in done):
            break
    assert all(n > 0 for n in rounds[-1]), f"both judges took part in a round: {rounds}"


async def _judge_concurrently(
    judge_db: Database,
    judge_settings: Settings,
    temporal: Client,
    parked: list[str],
    judges: list[TrackingJudge],
) -> list[int]:
    sweeps = [await _message_of_a_run(judge_db, judge_settings, temporal, parked) for _ in range(8)]
    humans = [await _message_of_a_run(judge_db, judge_settings, temporal, parked) for _ in range(8)]
    for n, (msg, _) in enumerate(sweeps):
        for i, name in enumerate(("book", "portal", "call")):
            await _record(judge_db, msg, name, _human_hit(f"93.184.{n}.9", 0.5 * i))
    human_events = [
        await _record(judge_db, msg, "book", _human_hit(f"73.15.{n}.200"))
        for n, (msg, _) in enumerate(humans)
    ]
    done = await asyncio.gather(*(j.work_once() for j in judges))

    for msg, wid in sweeps:
        rows = await events_of(judge_db, msg.send_id)
        assert [(r.verdict, r.reason) for r in rows] == [("automated", "link_sweep")] * 3
        assert all(r.signal_result is None for r in rows), "a revised click is not signalled"
        assert await _engagement_signals(temporal, wid) == 0
    for event_id, (_, wid) in zip(human_events, humans, strict=True):
        row = await _event(judge_db, event_id)
        assert row is not None and (row.verdict, row.signal_result) == ("human", SIGNAL_SENT)
        assert await _engagement_signals(temporal, wid) == 1
    # Once more with nothing queued: nothing is judged or signalled again.
    assert await asyncio.gather(*(j.work_once() for j in judges)) == [0, 0]
    for _, wid in humans:
        assert await _engagement_signals(temporal, wid) == 1
    return list(done)


async def test_a_message_another_judge_holds_is_left_to_it_without_spinning(
    judge_db: Database, judge_settings: Settings
) -> None:
    judge = TrackingJudge(judge_db, judge_settings, None, listen=False)
    await judge.work_once()  # whatever earlier tests of this module left queued
    msg = await make_message(judge_db, judge_settings, LINKS)
    event = await _record(judge_db, msg, "book", _human_hit("73.15.42.12"))
    async with judge_db.session() as other:  # another judge in the middle of this message
        await other.exec(  # type: ignore[call-overload]
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended('tracking_event:' || :id, 0))"
            ).bindparams(id=msg.send_id)
        )
        assert await asyncio.wait_for(judge.judge_pending(), timeout=5) == 0
        row = await _event(judge_db, event)
        assert row is not None and row.verdict is None
        await other.rollback()
    assert await judge.judge_pending() == 1  # once released, the message is judged
    row = await _event(judge_db, event)
    assert row is not None and row.verdict == "human"


async def test_human_clicks_refresh_behavioural_segments_in_one_batch(
    judge_db: Database, judge_settings: Settings
) -> None:
    """Off the click's path, the contacts engaged by a burst enter a "clicked in the last
    30 days" segment, and the machine-only contact does not."""
    from core.models import Contact, Send
    from services.context import ServiceContext
    from services.segments import SegmentIn, create_segment

    t = uuid.uuid4().hex[:8]
    people = [f"c_seg{t}{i}" for i in range(3)]
    machine = f"c_seg{t}m"
    sends: dict[str, str] = {}
    async with judge_db.session() as s:
        for cid in [*people, machine]:
            s.add(Contact(id=cid, external_id=cid, attributes={"cohort": t}))
            sends[cid] = f"s_{uuid.uuid4().hex[:20]}"
            s.add(
                Send(
                    id=sends[cid],
                    send_key=f"r_{cid}/hello/1",
                    run_id=f"r_{cid}",
                    journey_key="tracking-test",
                    version=1,
                    step="hello",
                    visit=1,
                    contact_id=cid,
                    template_key="t",
                    message_id=f"<{uuid.uuid4().hex}@example.org>",
                    status="sent",
                    sent_at=utcnow(),
                )
            )
        await s.commit()
        rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                        {"engagement": "click", "within": "P30D"}]}  # fmt: skip
        await create_segment(
            ServiceContext(s, judge_settings, None), SegmentIn(key=f"clicked-{t}", rule=rule)
        )
    for n, cid in enumerate([*people, machine]):
        msg = await make_message(judge_db, judge_settings, LINKS, send_id=sends[cid])
        ip = "40.94.28.163" if cid == machine else f"73.15.{n + 50}.12"  # a Safe Links scanner
        await _record(judge_db, msg, "book", _human_hit(ip))
    judge = TrackingJudge(judge_db, judge_settings, None, listen=False, segment_delay=0.1)
    await judge.work_once()
    await judge.stop()  # waits for the segment refresh it started

    async def members() -> set[str]:
        async with judge_db.session() as s:
            return set(
                (
                    await s.exec(  # type: ignore[call-overload]
                        text(
                            "SELECT contact_id FROM segment_membership WHERE segment_key = :k"
                        ).bindparams(k=f"clicked-{t}")
                    )
                ).scalars()
            )

    # The machine-only contact never enters it.
    assert await members() == set(people)


async def _true(value: bool) -> bool:
    return value


async def _judged_at(db: Database, event_ids: list[str]) -> set[object]:
    async with db.session() as s:
        rows = await s.exec(  # type: ignore[call-overload]
            text("SELECT judged_at FROM tracking_event WHERE id = ANY(:ids)").bindparams(
                ids=event_ids
            )
        )
        return {r[0] for r in rows}


async def test_a_burst_is_judged_in_fewer_larger_transactions(
    judge_db: Database, judge_settings: Settings
) -> None:
    """Eight queued messages and four free slots: two transactions of four messages (each
    transaction's statements are paid once for its messages), not four of two. A
    transaction stamps its events with one judged_at."""
    judge = TrackingJudge(judge_db, judge_settings, None, listen=False)
    await judge.work_once()  # whatever earlier tests of this module left queued
    events = []
    for n in range(8):
        msg = await make_message(judge_db, judge_settings, LINKS)
        events.append(await _record(judge_db, msg, "book", _human_hit(f"73.16.{n}.9")))
    assert await judge.judge_pending() == 8
    assert len(await _judged_at(judge_db, events)) == 2


class _Counted:
    """A judge connection that counts statements and round trips (a pipeline is one)."""

    def __init__(self, conn: psycopg.AsyncConnection[object], tally: dict[str, int]) -> None:
        self._conn, self._tally, self._piped = conn, tally, False

    def __getattr__(self, name: str) -> object:
        return getattr(self._conn, name)

    async def execute(self, *args: object, **kw: object) -> object:
        self._tally["statements"] += 1
        self._tally["round trips"] += 0 if self._piped else 1
        return await self._conn.execute(*args, **kw)  # type: ignore[call-overload]

    async def commit(self) -> None:
        self._tally["round trips"] += 0 if self._piped else 1
        await self._conn.commit()

    @contextlib.asynccontextmanager
    async def pipeline(self) -> AsyncIterator[object]:
        self._tally["round trips"] += 1
        self._piped = True
        try:
            async with self._conn.pipeline() as p:
                yield p
        finally:
            self._piped = False


async def test_a_judging_transaction_is_two_round_trips_of_seven_statements(
    judge_db: Database, judge_settings: Settings
) -> None:
    """Statement budget of one judging transaction over several messages: [lock, queued
    rows, message facts] then [verdict updates, the report rollup's three statements,
    COMMIT], whatever the number of events (no statement per event or per message). A
    judge that has not seen the messages rebuilds their classifiers in one more."""

    def counted(judge: TrackingJudge) -> dict[str, int]:
        tally = {"statements": 0, "round trips": 0}
        connect = judge._connect

        async def connect_counted(*, autocommit: bool) -> Any:
            conn = await connect(autocommit=autocommit)
            return conn if autocommit else _Counted(conn, tally)  # the queue reads aside

        judge._connect = connect_counted  # type: ignore[method-assign]
        return tally

    def judge() -> TrackingJudge:
        return TrackingJudge(judge_db, judge_settings, None, listen=False, judge_tasks=1)

    await judge().work_once()  # whatever earlier tests of this module left queued
    messages = [await make_message(judge_db, judge_settings, LINKS) for _ in range(3)]
    for n, msg in enumerate(messages):
        for i, name in enumerate(("book", "portal")):
            await _record(judge_db, msg, name, _human_hit(f"73.17.{n}.9", 30.0 * i))
    first = judge()
    tally = counted(first)
    assert await first.judge_pending() == 6
    assert first.transactions == 1
    assert tally == {"statements": 7, "round trips": 2}

    for n, msg in enumerate(messages):
        await _record(judge_db, msg, "call", _human_hit(f"73.17.{n}.9", 60.0))
    fresh = judge()  # another process: no classifier state for these messages
    tally = counted(fresh)
    assert await fresh.judge_pending() == 3
    assert fresh.transactions == 1
    assert tally == {"statements": 8, "round trips": 3}


async def test_the_sweep_signals_human_events_judged_while_temporal_was_away(
    judge_db: Database, judge_settings: Settings, temporal: Client, parked: list[str]
) -> None:
    back = TrackingJudge(judge_db, judge_settings, temporal, listen=False)
    await back.work_once()  # whatever earlier tests of this module left unsignalled
    away = TrackingJudge(judge_db, judge_settings, None, listen=False)
    msg, wid = await _message_of_a_run(judge_db, judge_settings, temporal, parked)
    event = await _record(judge_db, msg, "book", _human_hit("73.18.1.9"))
    await away.work_once()
    row = await _event(judge_db, event)
    assert row is not None and (row.verdict, row.signal_result) == ("human", None)

    assert await back.signal_pending() == 1
    row = await _event(judge_db, event)
    assert row is not None and (row.signal_result, row.signalled) == (SIGNAL_SENT, True)
    assert row.signalled_at is not None and (row.verdict, row.first_verdict) == ("human", "human")
    assert await _engagement_signals(temporal, wid) == 1
    assert await back.signal_pending() == 0  # signalled once


async def test_a_judge_whose_connections_were_cut_judges_the_next_click_promptly(
    judge_db: Database, judge_settings: Settings
) -> None:
    """The judge keeps its connections between transactions. When the server drops them
    (a restart), one round fails and the next runs on fresh ones: not a failed round, and
    a doubled back-off, for each connection it had kept."""
    judge = TrackingJudge(judge_db, judge_settings, None, listen=False, poll_interval=0.2)
    judge.start()
    try:
        await eventually(
            lambda: _true(len(judge._idle) == judge.judge_tasks and judge._reader is not None)
        )
        assert judge._reader is not None
        pids = [c.info.backend_pid for c in [*judge._idle, judge._reader]]
        async with judge_db.session() as s:
            cut = await s.exec(  # type: ignore[call-overload]
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM unnest(:pids) AS pid"
                ).bindparams(pids=pids)
            )
            assert cut.scalar_one() == judge.judge_tasks + 1  # and the queue reader's
            await s.commit()
        msg = await make_message(judge_db, judge_settings, LINKS)
        event = await _record(judge_db, msg, "book", _human_hit("73.19.1.9"))
        judge.notify()
        await _judged_human_within(judge_db, event, timeout=2.5)
    finally:
        await judge.stop()


async def test_hits_during_a_transaction_wait_for_it_without_reading_the_queue(
    judge_db: Database, judge_settings: Settings
) -> None:
    """While a transaction is in flight, a few new hits (fewer than `min_share` messages)
    neither start transactions of their own nor read the queue on each wake-up: the
    commit reads it once and judges them together."""
    judge = TrackingJudge(judge_db, judge_settings, None, listen=False)
    await judge.work_once()  # whatever earlier tests of this module left queued
    reads = 0
    read, judge_batch = judge._candidates, judge._judge_batch
    release = asyncio.Event()

    async def counted(held: Any) -> list[str]:
        nonlocal reads
        reads += 1
        return await read(held)

    async def held_open(active: Any, part: list[str]) -> tuple[int, int]:
        await release.wait()  # the first transaction stays in flight until released
        return await judge_batch(active, part)

    judge._candidates = counted  # type: ignore[method-assign]
    judge._judge_batch = held_open  # type: ignore[method-assign,assignment]
    msg = await make_message(judge_db, judge_settings, LINKS)
    await _record(judge_db, msg, "book", _human_hit("73.20.0.9"))
    judging = asyncio.create_task(judge.judge_pending())
    await eventually(lambda: _true(reads == 1), timeout=5, interval=0.02)
    later = []
    for n in range(3):
        msg = await make_message(judge_db, judge_settings, LINKS)
        later.append(await _record(judge_db, msg, "book", _human_hit(f"73.20.{n + 1}.9")))
        judge.notify()
        await asyncio.sleep(0.05)
    assert reads == 1, "the wake-ups did not read the queue"
    release.set()
    assert await asyncio.wait_for(judging, timeout=10) == 4
    assert reads == 3  # after each commit
    assert len(await _judged_at(judge_db, later)) == 1, "the three in one transaction"
