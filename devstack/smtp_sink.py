"""The dev/test SMTP sink (aiosmtpd): every message it receives is kept in the database.

It runs inside the caller's event loop. `faults` lets fault tests make it answer
transient errors or drop connections, the way a real relay sometimes does. `inbound`
takes mail addressed to the product itself (bounce reports to bounces@MAIL_DOMAIN,
feedback reports, mailto unsubscribes) instead of keeping it as outbox mail.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from activities.smtp import SINK_IDENT
from core.db import Database
from core.models import OutboxMessage

Store = Callable[[OutboxMessage], Awaitable[None]]


@dataclass
class SinkFaults:
    """Answers to give instead of 250, consumed one per DATA (fault tests).

    `queue` applies to any message; `by_rcpt` only to messages for that recipient, so a
    test can inject faults on a sink other tests share. A fault is "drop" (the
    connection is cut after the data arrived) or an SMTP reply code such as "421",
    "451", "550", "551", "553", "554".
    """

    queue: list[str] = field(default_factory=list)
    by_rcpt: dict[str, list[str]] = field(default_factory=dict)

    def take(self, rcpt_tos: list[str]) -> str | None:
        for rcpt in rcpt_tos:
            pending = self.by_rcpt.get(rcpt.lower())
            if pending:
                return pending.pop(0)
        return self.queue.pop(0) if self.queue else None


_FAULT_REPLIES = {
    "421": "421 4.3.2 service not available, try later",
    "451": "451 4.3.0 temporary failure, try later",
    "550": "550 5.1.1 mailbox unavailable",
    "551": "551 5.1.6 user not local",
    "553": "553 5.1.3 mailbox name not allowed",
    "554": "554 5.7.1 message rejected by policy",
}


class InboundHook(Protocol):
    """Mail for the product itself (delivery reports, mailto unsubscribes), not outbox mail."""

    def wants(self, rcpt_tos: list[str], raw: bytes) -> bool: ...

    async def handle(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> None: ...


class SinkHandler:
    def __init__(
        self, store: Store, faults: SinkFaults | None = None, inbound: InboundHook | None = None
    ) -> None:
        self.store = store
        self.faults = faults or SinkFaults()
        self.inbound = inbound
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        rcpt_tos = [str(r) for r in envelope.rcpt_tos]
        fault = self.faults.take(rcpt_tos)
        if fault == "drop":
            # Cut the connection after the data arrived: the client never hears an answer.
            if isinstance(server.transport, asyncio.Transport):
                server.transport.abort()
            return "421 4.3.0 connection dropped"
        if fault is not None:
            return _FAULT_REPLIES.get(fault, _FAULT_REPLIES["451"])
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
        if self.inbound is not None and self.inbound.wants(rcpt_tos, raw):
            await self.inbound.handle(str(envelope.mail_from or ""), rcpt_tos, raw)
            return "250 2.0.0 OK: processed"
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        msg = OutboxMessage(
            mail_from=str(envelope.mail_from or ""),
            rcpt_to=[str(r) for r in envelope.rcpt_tos],
            subject=str(parsed.get("Subject", "")),
            message_id=str(parsed.get("Message-ID", "")).strip() or None,
            raw=raw,
        )
        await self.store(msg)
        self.received += 1
        return "250 2.0.0 OK: queued"


def db_store(db: Database) -> Store:
    async def store(msg: OutboxMessage) -> None:
        async with db.session() as s:
            s.add(msg)
            await s.commit()

    return store


class SmtpSink:
    def __init__(self, handler: SinkHandler, host: str = "127.0.0.1", port: int = 8025) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {
            "data_size_limit": 25 * 1024 * 1024,
            "enable_SMTPUTF8": True,
            "ident": SINK_IDENT,  # lets workers know the outbox is authoritative
        }
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, **kwargs), host=self.host, port=self.port
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
