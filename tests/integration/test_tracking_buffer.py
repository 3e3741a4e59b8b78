"""The tracking hit pipeline against the real database: the buffer writes every hit it
answered (batches, NOTIFY, shutdown, a full buffer, a refused row), the link cache
expires, and the lean /t/* path answers exactly as the framework routes do."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import psycopg
import pytest
from sqlalchemy import text
from temporalio.client import Client

from api.serve import Front
from api.tracking_fastpath import TrackingEndpoints
from core.config import Settings
from core.db import Database
from core.models import TrackedLink
from services.tracking import LinkCache
from services.tracking_buffer import NOTIFY_CHANNEL, HitBuffer, HitRow, hit_row, libpq_url
from services.tracking_links import token_signer
from tests.helpers import eventually
from tests.integration.tracking_support import HUMAN_HEADERS, Message, app_with_judge, make_message

DEST = "https://portal.example.org/book"
UA = HUMAN_HEADERS["user-agent"].encode()


def _row(send_id: str, n: int, link: str | None = "book") -> HitRow:
    return hit_row(
        send_id=send_id,
        link_id=f"{n:024x}",
        kind="click",
        link=link,
        at=time.time(),
        ip="73.15.237.200",
        user_agent="Mozilla/5.0 \\ tab\there",  # COPY's escapes must round-trip
        method="GET",
        headers={"accept": "text/html", "accept-language": "fr-FR\tx\\y"},
    )


async def _count(db: Database, send_id: str) -> int:
    async with db.engine.connect() as conn:
        q = text("SELECT count(*) FROM tracking_event WHERE send_id = :s")
        return int((await conn.execute(q, {"s": send_id})).scalar_one())


async def test_buffered_hits_are_written_in_batches_with_a_notify(db: Database) -> None:
    send_id = f"s_{uuid.uuid4().hex[:20]}"
    commits: list[int] = []
    listener = await psycopg.AsyncConnection.connect(libpq_url(db), autocommit=True)
    try:
        await listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        buffer = HitBuffer(db, interval=0.05, on_commit=commits.append)
        buffer.start()
        try:
            for n in range(250):
                assert buffer.offer(_row(send_id, n))
            assert await buffer.flush(timeout=10)
        finally:
            await buffer.stop()
        assert await _count(db, send_id) == 250
        assert sum(commits) == 250 and len(commits) < 250  # batched, not one by one
        notes = listener.notifies(timeout=5, stop_after=1)
        got = [n async for n in notes]
        assert got and got[0].channel == NOTIFY_CHANNEL
    finally:
        await listener.close()
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT id, user_agent, headers FROM tracking_event WHERE send_id = :s LIMIT 1"
                ),
                {"s": send_id},
            )
        ).one()
    assert row.id.startswith("te_") and len(row.id) == 23
    assert row.user_agent == "Mozilla/5.0 \\ tab\there"
    assert row.headers == {"accept": "text/html", "accept-language": "fr-FR\tx\\y"}
    # (Its verdict is the judge's business: the session's judge may already have woken.)


async def test_stop_writes_every_accepted_hit(db: Database) -> None:
    send_id = f"s_{uuid.uuid4().hex[:20]}"
    buffer = HitBuffer(db, interval=3600)  # nothing is written until shutdown
    buffer.start()
    for n in range(40):
        assert buffer.offer(_row(send_id, n))
    await asyncio.sleep(0.1)
    assert await _count(db, send_id) == 0
    await buffer.stop()
    assert await _count(db, send_id) == 40
    assert not buffer.offer(_row(send_id, 99))  # stopped: the caller writes inline


async def test_a_row_the_database_refuses_does_not_hold_the_others_back(db: Database) -> None:
    send_id = f"s_{uuid.uuid4().hex[:20]}"
    buffer = HitBuffer(db, interval=0.05)
    buffer.start()
    try:
        buffer.offer(_row(send_id, 1))
        buffer.offer(_row(send_id, 2, link="bad\x00name"))  # PostgreSQL text refuses NUL
        buffer.offer(_row(send_id, 3))
        assert await buffer.flush(timeout=10)
    finally:
        await buffer.stop()
    assert await _count(db, send_id) == 2
    assert buffer.failed == 1


# --- through the endpoints ------------------------------------------------------------


def _endpoints(settings: Settings, db: Database, buffer: HitBuffer | None) -> TrackingEndpoints:
    return TrackingEndpoints(settings, db, token_signer(settings), LinkCache(db), buffer=buffer)


def _token(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_a_full_buffer_writes_inline_and_every_hit_is_answered(
    db: Database, settings: Settings
) -> None:
    msg = await make_message(db, settings, {"book": DEST})
    buffer = HitBuffer(db, capacity=2, interval=3600)
    buffer.start()
    endpoints = _endpoints(settings, db, buffer)
    try:
        for _ in range(5):
            reply = await endpoints.respond(
                "c", _token(msg.click("book")), "GET", [(b"user-agent", UA)], "127.0.0.1"
            )
            assert reply.status == 302
        # Two wait in the full buffer; the other three were written before the answer.
        assert len(buffer) == 2 and endpoints.inline_writes == 3
        assert await _count(db, msg.send_id) == 3
    finally:
        await buffer.stop()
    assert await _count(db, msg.send_id) == 5


async def test_with_the_database_down_a_cached_click_still_redirects(
    db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    msg = await make_message(db, settings, {"book": DEST})
    up = _endpoints(settings, db, None)
    await up.respond("c", _token(msg.click("book")), "GET", [], "127.0.0.1")  # fills the cache
    down_db = Database("postgresql://nobody@127.0.0.1:9/nothing")  # nothing listens on 9
    down_cache = LinkCache(down_db)
    down_cache._entries.update(up.cache._entries)  # what this process had looked up
    down = TrackingEndpoints(settings, down_db, token_signer(settings), down_cache)
    try:
        reply = await down.respond("c", _token(msg.click("book")), "GET", [], "127.0.0.1")
        assert (reply.status, dict(reply.headers)[b"location"]) == (302, DEST.encode())
        pixel = await down.respond("o", _token(msg.pixel), "GET", [], "127.0.0.1")
        assert pixel.status == 200  # never break the email over a lookup
        fresh = await make_message(db, settings, {"book": DEST})
        uncached = await down.respond("c", _token(fresh.click("book")), "GET", [], "127.0.0.1")
        assert uncached.status == 503  # nowhere safe to send the reader; not a 500
    finally:
        await down_cache.close()
        await down_db.dispose()
        await up.cache.close()
    assert "click not recorded" in caplog.text


async def test_link_cache_expires_and_bad_tokens_cost_no_lookup(
    db: Database, settings: Settings
) -> None:
    msg = await make_message(db, settings, {"book": DEST})
    now = [0.0]
    cache = LinkCache(db, ttl=60, refresh_ahead=0, clock=lambda: now[0])
    endpoints = TrackingEndpoints(settings, db, token_signer(settings), cache)
    token = _token(msg.click("book"))
    link_id = next(r.id for r in msg.links.rows if r.name == "book")
    try:
        assert (await endpoints.respond("c", token, "HEAD", [], "127.0.0.1")).status == 302
        assert cache.lookups == 1
        for bad in (token[:-2] + "AA", "x" * 44, ""):
            assert (await endpoints.respond("c", bad, "GET", [], "127.0.0.1")).status == 404
        assert cache.lookups == 1  # the MAC said no: no database round-trip
        async with db.session() as s:  # the link is revoked (deleted) in the database
            await s.exec(text("DELETE FROM tracked_link WHERE id = :i").bindparams(i=link_id))  # type: ignore[call-overload]
            await s.commit()
        now[0] = 59.0
        assert (await endpoints.respond("c", token, "GET", [], "127.0.0.1")).status == 302
        now[0] = 61.0  # past the TTL: looked up again, and gone
        assert (await endpoints.respond("c", token, "GET", [], "127.0.0.1")).status == 404
        assert cache.lookups == 2
        # forget() makes a change take effect at once in this process.
        pixel_id = next(r.id for r in msg.links.rows if r.kind == "open")
        assert (await cache.get(pixel_id)) is not None
        async with db.session() as s:
            link = await s.get(TrackedLink, pixel_id)
            assert link is not None
            await s.delete(link)
            await s.commit()
        assert (await cache.get(pixel_id)) is not None
        cache.forget(pixel_id)
        assert (await cache.get(pixel_id)) is None
    finally:
        await cache.close()


async def test_busy_links_are_renewed_ahead_of_expiry_and_never_served_stale(
    db: Database, settings: Settings
) -> None:
    msg = await make_message(db, settings, {"book": DEST})
    now = [0.0]
    cache = LinkCache(db, ttl=10, refresh_ahead=2, clock=lambda: now[0])
    endpoints = TrackingEndpoints(settings, db, token_signer(settings), cache)
    token = _token(msg.click("book"))
    link_id = next(r.id for r in msg.links.rows if r.name == "book")
    pixel_id = next(r.id for r in msg.links.rows if r.kind == "open")
    try:
        assert (await endpoints.respond("c", token, "GET", [], "127.0.0.1")).status == 302
        assert (await cache.get(pixel_id)) is not None
        assert cache.lookups == 2
        now[0] = 8.5  # in the last 2 s: answered from the cache, renewed in the background
        assert cache.peek(link_id) is not None
        await eventually(lambda: _true(cache.refreshed == 1), timeout=5, interval=0.01)
        now[0] = 15.0  # past the first TTL, within the renewed one: still no wait
        assert cache.peek(link_id) is not None
        assert cache.lookups == 3
        assert cache.peek(pixel_id) is None  # not used meanwhile: simply expired
        # A link deleted in the database disappears at its renewal, before its TTL.
        async with db.session() as s:
            await s.exec(text("DELETE FROM tracked_link WHERE id = :i").bindparams(i=link_id))  # type: ignore[call-overload]
            await s.commit()
        now[0] = 17.0
        assert cache.peek(link_id) is not None  # still within its TTL: served, renewal asked
        await eventually(lambda: _true(cache.peek(link_id) is None), timeout=5, interval=0.01)
        assert (await endpoints.respond("c", token, "GET", [], "127.0.0.1")).status == 404
    finally:
        await cache.close()


async def test_renewals_coming_due_apart_share_one_lookup(db: Database, settings: Settings) -> None:
    """Links cached together come due a little apart (each on its own next hit); their
    renewals wait for company instead of costing a query each."""
    msgs = [await make_message(db, settings, {"book": DEST}) for _ in range(3)]
    ids = [r.id for m in msgs for r in m.links.rows]
    now = [0.0]
    # A wide gather window, so that a stalled machine cannot split the renewals.
    cache = LinkCache(db, ttl=30, refresh_ahead=16, refresh_gather=3.0, clock=lambda: now[0])
    try:
        assert all(await asyncio.gather(*(cache.get(i) for i in ids)))
        before = cache.lookups
        now[0] = 20.0  # every entry in its last 16 s
        for link_id in ids:
            assert cache.peek(link_id) is not None
            await asyncio.sleep(0.02)  # long enough for an eager lookup to go out
        await eventually(lambda: _true(cache.refreshed == len(ids)), timeout=10, interval=0.01)
        assert cache.lookups == before + 1
        # A miss does not wait: it takes the renewals waiting with it.
        now[0] = 20.5
        again = [await make_message(db, settings, {"book": DEST})]
        fresh = again[0].links.rows[0].id
        cache.forget(ids[0])
        assert cache.peek(ids[1]) is not None  # renewed at 20: not due again yet
        before = cache.lookups
        assert (await asyncio.wait_for(cache.get(fresh), timeout=0.5)) is not None
        assert cache.lookups == before + 1
    finally:
        await cache.close()


async def _true(value: bool) -> bool:
    return value


async def test_concurrent_misses_share_lookups(db: Database, settings: Settings) -> None:
    msgs = [await make_message(db, settings, {"book": DEST}) for _ in range(10)]
    cache = LinkCache(db)
    ids = [r.id for m in msgs for r in m.links.rows]
    try:
        found = await asyncio.gather(*(cache.get(i) for i in ids), cache.get("0" * 24))
        assert [f.id if f else None for f in found] == [*ids, None]
        assert cache.lookups <= 2 < len(ids)
    finally:
        await cache.close()


# --- the lean path answers as the framework does ----------------------------------------


def _comparable(r: httpx.Response) -> tuple[int, dict[str, str], bytes]:
    headers = {k: v for k, v in r.headers.items() if k not in ("date", "server")}
    return r.status_code, headers, r.content


async def test_fast_path_answers_exactly_as_the_routes(
    settings: Settings, db: Database, temporal: Client
) -> None:
    from api.main import create_app

    msg: Message = await make_message(db, settings, {"book": DEST})
    paths = [
        msg.pixel,
        msg.click("book"),
        msg.click("book") + "?url=https://evil.example/",
        msg.trap,
        "/t/c/" + "A" * 44,
        "/t/o/nope/",
        "/t/c/",
    ]
    # Routes only: the app without its lifespan (no pipeline, hits written inline).
    quiet = settings.model_copy(update={"tracking_judge_in_api": False})  # no stray judge
    plain = create_app(quiet, db=db, temporal=temporal)
    transport = httpx.ASGITransport(app=plain, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        expected = [
            _comparable(await c.request(m, p, headers=HUMAN_HEADERS))
            for p in paths
            for m in ("GET", "HEAD")
        ]
    async for app, client in app_with_judge(settings, db, temporal):
        assert app.state.tracking_fastpath is not None
        served = app.state.tracking_buffer.written
        got = [
            _comparable(await client.request(m, p, headers=HUMAN_HEADERS))
            for p in paths
            for m in ("GET", "HEAD")
        ]
        assert got == expected
        # And through api.serve.Front, as `journeys api` serves it.
        front = httpx.ASGITransport(app=Front(app), client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=front, base_url="http://testserver") as fc:
            assert [
                _comparable(await fc.request(m, p, headers=HUMAN_HEADERS))
                for p in paths
                for m in ("GET", "HEAD")
            ] == expected
            assert (await fc.post(msg.click("book"))).status_code == 405
        assert await app.state.tracking_buffer.flush()
        assert app.state.tracking_buffer.written > served  # the pipeline wrote them


async def test_ids_drawn_twice_are_written_again_under_new_ones_never_dropped(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes drawing the same time-ordered ids (see new_event_ids): the second
    batch's INSERT fails on the key, stores nothing, and goes again under fresh ids."""
    from services import tracking_buffer

    send_id = f"s_{uuid.uuid4().hex[:20]}"
    first = [_row(send_id, n) for n in range(3)]
    buffer = HitBuffer(db, interval=0.01)
    buffer.start()
    try:
        await buffer._write(first)
        taken = [row[0] for row in first]
        real = tracking_buffer.new_event_ids
        calls: list[int] = []

        def same_ids_first(n: int) -> list[str]:
            calls.append(n)
            return taken[:n] if len(calls) == 1 else real(n)

        monkeypatch.setattr(tracking_buffer, "new_event_ids", same_ids_first)
        for n in range(3, 6):
            assert buffer.offer(_row(send_id, n))
        assert await buffer.flush(timeout=10)
    finally:
        await buffer.stop()
    assert len(calls) == 2 and buffer.failed == 0
    assert await _count(db, send_id) == 6


async def test_a_retried_batch_is_not_stored_twice(db: Database) -> None:
    """A batch whose commit reply was lost is written again with the same ids."""
    send_id = f"s_{uuid.uuid4().hex[:20]}"
    batch = [_row(send_id, n) for n in range(3)]
    buffer = HitBuffer(db)
    try:
        await buffer._write(batch)
        await buffer._write(batch)  # the retry after "connection lost" on the reply
    finally:
        await buffer.stop()
    assert await _count(db, send_id) == 3


async def test_fresh_rows_behind_a_retried_row_still_get_new_ids_on_a_collision(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After an unknown outcome the failed rows wait at the front of the queue, keeping
    their ids. Fresh rows queued behind them must not share their ON CONFLICT DO NOTHING:
    a fresh row whose id another process drew must fail on the key and be written again
    under a new id, not be skipped."""
    from services import tracking_buffer

    send_id = f"s_{uuid.uuid4().hex[:20]}"
    others = [_row(send_id, n) for n in range(3)]  # "another process's" rows
    buffer = HitBuffer(db, interval=3600)  # written only when flushed
    buffer.start()
    try:
        await buffer._write(others)
        taken = [row[0] for row in others]
        retried = _row(send_id, 3)
        retried[0] = tracking_buffer.new_event_ids(1)[0]  # its first attempt's id
        assert buffer.offer(retried)
        real = tracking_buffer.new_event_ids
        calls: list[int] = []

        def taken_ids_first(n: int) -> list[str]:
            if n:
                calls.append(n)
            return taken[:n] if len(calls) == 1 else real(n)

        monkeypatch.setattr(tracking_buffer, "new_event_ids", taken_ids_first)
        for n in range(4, 7):
            assert buffer.offer(_row(send_id, n))
        assert await buffer.flush(timeout=10)
    finally:
        await buffer.stop()
    assert await _count(db, send_id) == 7
    assert buffer.failed == 0
    assert calls == [3, 3]  # the fresh rows drew taken ids once, then new ones


async def test_each_request_verifies_its_token_and_reads_its_evidence_once(
    db: Database, settings: Settings
) -> None:
    """With a full buffer (the hit written inline) and with an uncached link alike, the
    lean path checks the token and parses the headers once per request."""
    from api.tracking_fastpath import TrackingFastPath

    msg = await make_message(db, settings, {"book": DEST})
    buffer = HitBuffer(db, capacity=0, interval=3600)  # running, and always full
    buffer.start()
    endpoints = _endpoints(settings, db, buffer)
    verified: list[str] = []
    read: list[str | None] = []
    verify, read_evidence = endpoints._verify, endpoints.evidence.read

    def counting_verify(token: str, purpose: str) -> tuple[str, bool] | None:
        verified.append(token)
        return verify(token, purpose)

    def counting_read(raw: object, peer: str | None) -> object:
        read.append(peer)
        return read_evidence(raw, peer)  # type: ignore[arg-type]

    endpoints._verify = counting_verify  # type: ignore[method-assign]
    endpoints.evidence.read = counting_read  # type: ignore[method-assign,assignment]
    front = TrackingFastPath(lambda *_: None, endpoints)  # type: ignore[arg-type,return-value]
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def get(path: str) -> int:
        verified.clear()
        read.clear()
        sent.clear()
        scope = {
            "type": "http",
            "path": path,
            "method": "GET",
            "headers": [(b"user-agent", UA)],
            "client": ("73.15.237.200", 4242),
        }
        assert await front.handle(scope, send)  # type: ignore[arg-type]
        return int(sent[0]["status"])  # type: ignore[call-overload]

    try:
        assert await get(msg.click("book")) == 302  # uncached: looked up, written inline
        assert (len(verified), len(read)) == (1, 1)
        assert await get(msg.click("book")) == 302  # cached, the buffer full: inline
        assert (len(verified), len(read)) == (1, 1)
        assert await get(msg.pixel) == 200
        assert (len(verified), len(read)) == (1, 1)
        assert endpoints.inline_writes == 3
        assert await _count(db, msg.send_id) == 3
    finally:
        await buffer.stop()
        await endpoints.cache.close()
