"""A stuck database does not hang tracking requests or the hit writer: the link lookup,
the inline write and the batch writer run under statement_timeout / lock_timeout
(TRACKING_*_DB_TIMEOUT_MS, TRACKING_DB_LOCK_TIMEOUT_MS), and the request answers as on
any database error. "Stuck" here is a lock held by another session (a migration's
ACCESS EXCLUSIVE lock, an erasure's hold on the hit lock), against the real database."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from temporalio.client import Client

from api.routers.tracking import link_cache
from api.tracking_fastpath import TrackingEndpoints
from core.config import Settings
from core.db import Database
from services.tracking_buffer import HITS_LOCK, libpq_url
from services.tracking_links import token_signer
from tests.helpers import eventually
from tests.integration.tracking_support import HUMAN_HEADERS, app_with_judge, make_message

DEST = "https://portal.example.org/book"
UA = HUMAN_HEADERS["user-agent"].encode()


def _quick(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "tracking_request_db_timeout_ms": 400,
            "tracking_writer_db_timeout_ms": 400,
            "tracking_db_lock_timeout_ms": 150,
            "tracking_judge_in_api": False,  # no judge of this app in the way
        }
    )


@asynccontextmanager
async def _holding(db: Database, statement: str) -> AsyncIterator[None]:
    """Another session holds a lock (taken by `statement`) until the block ends."""
    conn: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(libpq_url(db))
    try:
        await conn.execute("SET lock_timeout = '5s'")  # never wait long for it ourselves
        await conn.execute(statement)  # type: ignore[arg-type]
        yield
    finally:
        await conn.rollback()
        await conn.close()


def _token(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def _count(db: Database, send_id: str) -> int:
    async with db.engine.connect() as conn:
        q = text("SELECT count(*) FROM tracking_event WHERE send_id = :s")
        return int((await conn.execute(q, {"s": send_id})).scalar_one())


async def test_a_link_lookup_stuck_on_a_lock_answers_as_on_a_database_error(
    db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    quick = _quick(settings)
    msg = await make_message(db, quick, {"book": DEST})
    cache = link_cache(quick, db)
    endpoints = TrackingEndpoints(quick, db, token_signer(quick), cache)
    try:
        async with _holding(db, "LOCK TABLE tracked_link IN ACCESS EXCLUSIVE MODE"):
            started = time.monotonic()
            pixel = await asyncio.wait_for(
                endpoints.respond("o", _token(msg.pixel), "GET", [], "127.0.0.1"), timeout=5
            )
            click = await asyncio.wait_for(
                endpoints.respond("c", _token(msg.click("book")), "GET", [], "127.0.0.1"),
                timeout=5,
            )
            took = time.monotonic() - started
        # The pixel still renders (nothing recorded); the click has nowhere safe to go.
        assert (pixel.status, click.status) == (200, 503)
        assert took < 2.0, f"waited {took:.1f}s for a stuck lookup"
        assert "LockNotAvailable" in caplog.text
        # Once the lock is gone, the same click redirects and is recorded (inline here).
        again = await endpoints.respond("c", _token(msg.click("book")), "GET", [], "127.0.0.1")
        assert again.status == 302
        assert await _count(db, msg.send_id) == 1
    finally:
        await cache.close()


async def test_an_inline_write_stuck_on_the_hit_lock_still_answers_at_once(
    db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    quick = _quick(settings)
    msg = await make_message(db, quick, {"book": DEST})
    cache = link_cache(quick, db)
    endpoints = TrackingEndpoints(quick, db, token_signer(quick), cache)  # no buffer: inline
    token = _token(msg.click("book"))
    try:
        await endpoints.cache.get(next(r.id for r in msg.links.rows if r.name == "book"))
        # An erasure in progress holds the hit lock exclusively.
        async with _holding(db, f"SELECT pg_advisory_xact_lock({HITS_LOCK})"):
            started = time.monotonic()
            reply = await endpoints.respond("c", token, "GET", [(b"user-agent", UA)], "73.1.2.3")
            took = time.monotonic() - started
        assert reply.status == 302
        assert took < 1.5, f"the reader waited {took:.1f}s for the hit's write"
        assert "click not recorded" in caplog.text
    finally:
        await cache.close()


async def test_the_hit_writer_gives_up_on_a_stuck_lock_and_writes_once_it_is_free(
    db: Database, settings: Settings, temporal: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the app's lifespan, so the settings reach the writer's connection."""
    quick = _quick(settings)
    msg = await make_message(db, quick, {"book": DEST})
    caplog.set_level(logging.ERROR, logger="journeys.tracking.buffer")
    async for app, client in app_with_judge(quick, db, temporal):
        assert (await client.get(msg.click("book"), headers=HUMAN_HEADERS)).status_code == 302
        assert await app.state.tracking_buffer.flush()  # the link is cached, the lock free
        async with _holding(db, f"SELECT pg_advisory_xact_lock({HITS_LOCK})"):
            r = await client.get(msg.pixel, headers={**HUMAN_HEADERS, "x-test": uuid.uuid4().hex})
            assert r.status_code == 200
            await eventually(
                lambda: _true("tracking batch not written: LockNotAvailable" in caplog.text),
                timeout=3,
                interval=0.05,
            )
            assert await _count(db, msg.send_id) == 1  # the pixel's hit waits in the buffer
        assert await app.state.tracking_buffer.flush(timeout=10)
        assert await _count(db, msg.send_id) == 2


async def _true(value: bool) -> bool:
    return value
