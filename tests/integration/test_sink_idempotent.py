"""The dev sink stores a message once per Message-ID: when its INSERT commits but the
answer is lost, it says 451, the sender sends again, and the outbox still has one row."""

from __future__ import annotations

import uuid

import pytest
from sqlmodel import select

from activities.smtp import SmtpTransport, TransientSmtpError, parse_smtp_url
from core.db import Database
from core.models import OutboxMessage
from devstack.ports import free_port
from devstack.smtp_sink import ReceivedMessage, SinkHandler, SmtpSink, db_store


async def test_a_resent_message_whose_store_reply_was_lost_is_stored_once(db: Database) -> None:
    real = db_store(db)
    lose_reply = [True]

    async def store(msg: ReceivedMessage) -> None:
        await real(msg)  # committed...
        if lose_reply.pop() if lose_reply else False:
            raise ConnectionError("connection lost after COMMIT")  # ...but not heard

    sink = SmtpSink(SinkHandler(store), port=free_port())
    await sink.start()
    try:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{sink.port}", True))
        mid = f"<{uuid.uuid4().hex}@sink.test>"
        raw = f"Subject: once\r\nMessage-ID: {mid}\r\n\r\nHello\r\n".encode()
        with pytest.raises(TransientSmtpError):  # the sink answered 451
            await transport.send("bounces@sink.test", "pat@example.com", raw)
        await transport.send("bounces@sink.test", "pat@example.com", raw)  # the retry
        await transport.pool.close()
    finally:
        await sink.stop()
    async with db.session() as s:
        rows = (await s.exec(select(OutboxMessage).where(OutboxMessage.message_id == mid))).all()
    assert len(rows) == 1
