"""The dev sink keeps a message once when its INSERT commits but the answer is lost: it
checks the outbox and answers 250, so the sender does not send the message again. A
message the sender really sends twice is still two rows (the exactly-once tests count
them)."""

from __future__ import annotations

import uuid

from sqlmodel import select

from activities.smtp import SmtpTransport, parse_smtp_url
from core.db import Database
from core.models import OutboxMessage
from devstack.ports import free_port
from devstack.smtp_sink import ReceivedMessage, SinkHandler, SmtpSink, db_store, db_stored


async def _rows(db: Database, mid: str) -> int:
    async with db.session() as s:
        rows = (await s.exec(select(OutboxMessage).where(OutboxMessage.message_id == mid))).all()
    return len(rows)


async def test_a_store_whose_reply_was_lost_is_accepted_once(db: Database) -> None:
    real = db_store(db)
    lose_reply = [True]

    async def store(msg: ReceivedMessage) -> None:
        await real(msg)  # committed...
        if lose_reply.pop() if lose_reply else False:
            raise ConnectionError("connection lost after COMMIT")  # ...but not heard

    sink = SmtpSink(SinkHandler(store, stored=db_stored(db)), port=free_port())
    await sink.start()
    try:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{sink.port}", True))
        mid = f"<{uuid.uuid4().hex}@sink.test>"
        raw = f"Subject: once\r\nMessage-ID: {mid}\r\n\r\nHello\r\n".encode()
        await transport.send("bounces@sink.test", "pat@example.com", raw)  # 250, not 451
        assert lose_reply == []  # the lost answer did happen
        await transport.pool.close()
    finally:
        await sink.stop()
    assert await _rows(db, mid) == 1


async def test_a_message_sent_twice_is_two_rows(db: Database) -> None:
    sink = SmtpSink(SinkHandler(db_store(db), stored=db_stored(db)), port=free_port())
    await sink.start()
    try:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{sink.port}", True))
        mid = f"<{uuid.uuid4().hex}@sink.test>"
        raw = f"Subject: twice\r\nMessage-ID: {mid}\r\n\r\nHello\r\n".encode()
        await transport.send("bounces@sink.test", "pat@example.com", raw)
        await transport.send("bounces@sink.test", "pat@example.com", raw)
        await transport.pool.close()
    finally:
        await sink.stop()
    assert await _rows(db, mid) == 2
