"""The dev sink stores messages that arrive together with one INSERT (group commit), each
before its 250; a row the database refuses fails only its own message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlmodel import col, select

from activities.smtp import SmtpTransport, TransientSmtpError, parse_smtp_url
from core.db import Database
from core.models import OutboxMessage
from devstack.ports import free_port
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store, db_stored


@contextmanager
def outbox_inserts(db: Database) -> Iterator[list[int]]:
    """Rows per INSERT INTO outbox_message statement the engine runs."""
    seen: list[int] = []

    def before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.startswith("INSERT INTO outbox_message"):
            seen.append(len(params["mail_from"]))

    event.listen(db.engine.sync_engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", before)


def message(mid: str, subject: str = "together") -> bytes:
    return f"Subject: {subject}\r\nMessage-ID: {mid}\r\n\r\nHello\r\n".encode()


async def _stored(db: Database, mids: list[str]) -> list[str]:
    async with db.session() as s:
        rows = (
            await s.exec(
                select(OutboxMessage.message_id).where(col(OutboxMessage.message_id).in_(mids))
            )
        ).all()
    return [str(r) for r in rows]


async def test_messages_arriving_together_share_an_insert(db: Database) -> None:
    sink = SmtpSink(SinkHandler(db_store(db), stored=db_stored(db)), port=free_port())
    await sink.start()
    transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{sink.port}", True), pool_size=20)
    mids = [f"<{uuid.uuid4().hex}@sink.test>" for _ in range(40)]
    try:
        with outbox_inserts(db) as inserts:
            await asyncio.gather(
                *(transport.send("bounces@sink.test", "pat@example.com", message(m)) for m in mids)
            )
        await transport.pool.close()
    finally:
        await sink.stop()
    assert sorted(await _stored(db, mids)) == sorted(mids)  # each once, before its 250
    assert sum(inserts) == len(mids)
    assert len(inserts) < len(mids) / 2, inserts  # one INSERT per message before


async def test_a_row_the_database_refuses_fails_only_its_message(db: Database) -> None:
    sink = SmtpSink(SinkHandler(db_store(db), stored=db_stored(db)), port=free_port())
    await sink.start()
    transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{sink.port}", True), pool_size=20)
    good = [f"<{uuid.uuid4().hex}@sink.test>" for _ in range(19)]
    bad = f"<{uuid.uuid4().hex}@sink.test>"
    # An encoded word decoding to a NUL: PostgreSQL text cannot hold it.
    sends = [transport.send("b@sink.test", "pat@example.com", message(m)) for m in good]
    poison = message(bad, "=?utf-8?q?a=00b?=")
    sends.insert(7, transport.send("b@sink.test", "pat@example.com", poison))
    try:
        results = await asyncio.gather(*sends, return_exceptions=True)
        await transport.pool.close()
    finally:
        await sink.stop()
    failed = results.pop(7)
    assert isinstance(failed, TransientSmtpError)  # 451: not stored, so not accepted
    assert results == [None] * len(good)
    assert sorted(await _stored(db, [*good, bad])) == sorted(good)
