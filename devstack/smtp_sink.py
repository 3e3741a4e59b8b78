"""The dev/test SMTP sink (aiosmtpd): every message it receives is kept in the database.

It runs inside the caller's event loop. `faults` lets fault tests make it answer
transient errors or drop connections, the way a real relay sometimes does.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from core.db import Database
from core.models import OutboxMessage

Store = Callable[[OutboxMessage], Awaitable[None]]


@dataclass
class SinkFaults:
    """Answers to give instead of 250, consumed one per DATA (fault tests)."""

    queue: list[str] = field(default_factory=list)  # e.g. "421", "451", "drop"


class SinkHandler:
    def __init__(self, store: Store, faults: SinkFaults | None = None) -> None:
        self.store = store
        self.faults = faults or SinkFaults()
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.faults.queue:
            fault = self.faults.queue.pop(0)
            if fault == "drop":
                transport = getattr(server, "transport", None)
                if transport is not None:
                    transport.abort()
                return "421 4.3.0 connection dropped"
            if fault == "421":
                return "421 4.3.2 service not available, try later"
            return "451 4.3.0 temporary failure, try later"
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode()
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
        kwargs: dict[str, Any] = {"data_size_limit": 25 * 1024 * 1024, "enable_SMTPUTF8": True}
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, **kwargs), host=self.host, port=self.port
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
