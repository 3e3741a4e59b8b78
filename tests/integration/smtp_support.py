"""A real aiosmtpd sink of a test's own (messages kept in memory, RSET and QUIT counted)
and a transport pointed at it: the SMTP pool tests' set-up."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiosmtpd.smtp import SMTP, Envelope, Session

from activities.smtp import SmtpTransport, parse_smtp_url
from devstack.ports import free_port
from devstack.smtp_sink import ReceivedMessage, SinkHandler, SmtpSink


class Recorder(SinkHandler):
    """The sink's handler, keeping messages in memory and counting RSETs."""

    def __init__(self) -> None:
        self.messages: list[ReceivedMessage] = []
        self.resets = 0
        self.quits = 0
        self.stall = False  # hold every DATA answer (to cancel a send mid-transfer)
        self.stalled = asyncio.Event()
        self.store_failures = 0  # the next N stores fail (a database that went away)

        async def store(msg: ReceivedMessage) -> None:
            if self.store_failures:
                self.store_failures -= 1
                raise ConnectionError("database unavailable")
            self.messages.append(msg)

        super().__init__(store)

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.resets += 1
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.stall:
            self.stalled.set()
            await asyncio.sleep(5)
        return await super().handle_DATA(server, session, envelope)

    def ids(self) -> list[str | None]:
        return [m.message_id for m in self.messages]


@asynccontextmanager
async def running_sink(idle_timeout: float = 300.0) -> AsyncIterator[SmtpSink]:
    sink = SmtpSink(Recorder(), port=free_port(), idle_timeout=idle_timeout)
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


def transport_for(sink: SmtpSink, **pool: float) -> SmtpTransport:
    return SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{sink.port}", True), **pool)  # type: ignore[arg-type]


def recorder(sink: SmtpSink) -> Recorder:
    assert isinstance(sink.handler, Recorder)
    return sink.handler


def message(n: object) -> tuple[str, bytes]:
    mid = f"<{n}.{uuid.uuid4().hex[:8]}@pool.test>"
    return mid, f"Subject: pool {n}\r\nMessage-ID: {mid}\r\n\r\nHello\r\n".encode()


async def send(t: SmtpTransport, n: object) -> str:
    mid, raw = message(n)
    await t.send("bounces@pool.test", f"p{n}@example.com", raw)
    return mid
