"""The dev/test SMTP sink (aiosmtpd): every message it receives is kept in the database.

It runs inside the caller's event loop. `faults` lets fault tests make it answer
transient errors or drop connections, the way a real relay sometimes does. `inbound`
takes mail addressed to the product itself (bounce reports to bounces@MAIL_DOMAIN,
feedback reports, mailto unsubscribes) instead of keeping it as outbox mail.

It is on the benchmarks' measured path, so it stays lean: of a message it parses only
the header block, and only the two headers the outbox keeps; messages arriving together
are stored with one INSERT (group commit), each before its 250.
"""

from __future__ import annotations

import asyncio
import email.policy
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from activities.smtp import SINK_IDENT
from core.db import Database
from core.models import utcnow

log = logging.getLogger("journeys.sink")


@dataclass
class ReceivedMessage:
    """What the outbox keeps of a message (one outbox_message row, less id and time)."""

    mail_from: str
    rcpt_to: list[str]
    subject: str
    message_id: str | None
    raw: bytes


Store = Callable[[ReceivedMessage], Awaitable[None]]
Stored = Callable[[ReceivedMessage], Awaitable[bool]]

# The header block ends at the first empty line (CRLF on the wire; LF tolerated).
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
_HEADERS = BytesHeaderParser(policy=email.policy.default)


def outbox_headers(raw: bytes) -> tuple[str, str | None]:
    """(Subject, Message-ID) as email.policy.default reads them from the whole message
    (encoded words decoded, folding undone), from the header block alone: the body,
    often most of the bytes, is never split into lines or MIME parts."""
    end = _END_OF_HEADERS.search(raw)
    headers = _HEADERS.parsebytes(raw[: end.end()] if end else raw)
    message_id = str(headers.get("Message-ID", "")).strip() or None
    return str(headers.get("Subject", "")), message_id


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
    # Consumed one per MAIL command, before the message: "drop" (the connection is cut
    # with no answer) or "421", the way a relay treats a client it has timed out.
    at_mail: list[str] = field(default_factory=list)

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


@dataclass
class SinkConnections:
    """Connections the sink accepted: over its life, open now, and the most at once."""

    opened: int = 0
    open: int = 0
    peak: int = 0


class _CountingSMTP(SMTP):
    def __init__(
        self, counts: SinkConnections, live: set[_CountingSMTP], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._counts = counts
        self._live = live
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:  # STARTTLS calls it again for the same connection
            self._counted = True
            self._live.add(self)
            c = self._counts
            c.opened += 1
            c.open += 1
            c.peak = max(c.peak, c.open)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._live.discard(self)
            self._counts.open -= 1
        super().connection_lost(error)


class InboundHook(Protocol):
    """Mail for the product itself (delivery reports, mailto unsubscribes), not outbox mail."""

    def wants(self, rcpt_tos: list[str], raw: bytes) -> bool: ...

    async def handle(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> None: ...


class SinkHandler:
    def __init__(
        self,
        store: Store,
        faults: SinkFaults | None = None,
        inbound: InboundHook | None = None,
        stored: Stored | None = None,
    ) -> None:
        self.store = store
        self.stored = stored
        self.faults = faults or SinkFaults()
        self.inbound = inbound
        self.received = 0

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.faults.at_mail:
            fault = self.faults.at_mail.pop(0)
            if fault == "drop":
                if isinstance(server.transport, asyncio.Transport):
                    server.transport.abort()
                return "421 4.3.0 connection dropped"
            return _FAULT_REPLIES.get(fault, _FAULT_REPLIES["451"])
        envelope.mail_from = address  # what aiosmtpd does without this hook
        envelope.mail_options.extend(mail_options)
        return "250 OK"

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
        subject, message_id = outbox_headers(raw)
        msg = ReceivedMessage(
            mail_from=str(envelope.mail_from or ""),
            rcpt_to=rcpt_tos,
            subject=subject,
            message_id=message_id,
            raw=raw,
        )
        try:
            await self.store(msg)
        except Exception as exc:
            if await self._stored_anyway(msg):
                # The INSERT committed but its answer was lost: the message is kept, so it
                # is accepted (a 451 would make the sender send it a second time).
                self.received += 1
                return "250 2.0.0 OK: queued"
            # Not stored, so not accepted: a 4xx the sender retries, as a relay answers
            # when its queue is unavailable (aiosmtpd would answer 500, a permanent
            # failure). Type only: messages of database errors can quote the row.
            log.warning("outbox store failed (%s); answered 451", type(exc).__name__)
            return "451 4.3.0 temporary failure storing the message, try later"
        self.received += 1
        return "250 2.0.0 OK: queued"


    async def _stored_anyway(self, msg: ReceivedMessage) -> bool:
        if self.stored is None or msg.message_id is None:
            return False
        try:
            return await self.stored(msg)
        except Exception:
            return False


def db_store(db: Database) -> Store:
    """Stores each message before the sink answers 250, so the outbox holds every message
    the sink accepted: one autocommitted INSERT per batch of the messages waiting at that
    moment (_OutboxWriter), not a connection and an INSERT per message.

    Every accepted copy is its own row, so a sender that mails one message twice shows
    as two rows (the exactly-once tests count them); `db_stored` tells a failed INSERT
    that did commit from one that did not."""
    return _OutboxWriter(db).store


class _OutboxWriter:
    """Group commit for the sink. Messages arriving while an INSERT is on its way wait and
    go together in the next one (one statement, one commit), so under load the sink
    neither opens a pool connection per concurrent message (the engine's overflow
    connections were opened and closed again for every burst) nor commits per message.
    A store call returns only once its row is committed, or raises."""

    MAX_BATCH = 200

    def __init__(self, db: Database) -> None:
        self.engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def store(self, msg: ReceivedMessage) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        row = {
            "mail_from": msg.mail_from,
            "rcpt_to": msg.rcpt_to,
            "subject": msg.subject,
            "message_id": msg.message_id,
            "raw": msg.raw,
            "received_at": utcnow(),
        }
        self._waiting.append((row, done))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())
        await done

    async def _write(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.MAX_BATCH]
            del self._waiting[: self.MAX_BATCH]
            try:
                await self._insert([row for row, _ in batch])
            except Exception as exc:
                if len(batch) > 1 and _statement_error(exc):
                    # Nothing of the batch was committed (one statement, refused): store
                    # the rows one by one, so one bad row fails only its own message.
                    for row, done in batch:
                        try:
                            await self._insert([row])
                        except Exception as one:
                            _settle(done, one)
                        else:
                            _settle(done, None)
                    continue
                for _, done in batch:
                    _settle(done, exc)  # the handler asks whether each was stored anyway
            else:
                for _, done in batch:
                    _settle(done, None)

    async def _insert(self, rows: list[dict[str, Any]]) -> None:
        params = {
            "mail_from": [r["mail_from"] for r in rows],
            "rcpt_to": [json.dumps(r["rcpt_to"]) for r in rows],
            "subject": [r["subject"] for r in rows],
            "message_id": [r["message_id"] for r in rows],
            "raw": [r["raw"] for r in rows],
            "received_at": [r["received_at"] for r in rows],
        }
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql(_OUTBOX_INSERT, params)


# One statement whatever the batch size, so a batch commits whole or not at all (an
# executemany would be a statement, and with autocommit a commit, per row).
_OUTBOX_INSERT = """\
INSERT INTO outbox_message (mail_from, rcpt_to, subject, message_id, raw, received_at)
SELECT m.mail_from, CAST(m.rcpt_to AS jsonb), m.subject, m.message_id, m.raw, m.received_at
FROM unnest(CAST(%(mail_from)s AS text[]), CAST(%(rcpt_to)s AS text[]),
            CAST(%(subject)s AS text[]), CAST(%(message_id)s AS text[]),
            CAST(%(raw)s AS bytea[]), CAST(%(received_at)s AS timestamptz[]))
     AS m(mail_from, rcpt_to, subject, message_id, raw, received_at)"""


def _statement_error(exc: Exception) -> bool:
    """The database refused the statement itself (the connection is fine): it did not
    commit. A lost connection leaves that unknown."""
    return isinstance(exc, DBAPIError) and not exc.connection_invalidated


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():  # the handler went away (its client hung up)
        return
    if exc is None:
        done.set_result(None)
    else:
        done.set_exception(exc)


_STORED = text(
    "SELECT 1 FROM outbox_message WHERE message_id = :mid AND raw = :raw"
    " AND received_at > now() - interval '5 minutes' LIMIT 1"
)


def db_stored(db: Database) -> Stored:
    """Whether this very message was stored in the last minutes (asked after a failed
    store, whose INSERT may have committed before the connection broke)."""

    async def stored(msg: ReceivedMessage) -> bool:
        async with db.engine.connect() as conn:
            found = await conn.execute(_STORED, {"mid": msg.message_id, "raw": msg.raw})
            return found.first() is not None

    return stored


class SmtpSink:
    def __init__(
        self,
        handler: SinkHandler,
        host: str = "127.0.0.1",
        port: int = 8025,
        idle_timeout: float = 300.0,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        # Seconds a client may stay silent before the sink hangs up (aiosmtpd's default,
        # as relays do; tests shorten it to see how clients cope).
        self.idle_timeout = idle_timeout
        self.connections = SinkConnections()
        self._live: set[_CountingSMTP] = set()
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {
            "data_size_limit": 25 * 1024 * 1024,
            "enable_SMTPUTF8": True,
            "ident": SINK_IDENT,  # lets workers know the outbox is authoritative
            "timeout": self.idle_timeout,
        }
        self.server = await loop.create_server(
            lambda: _CountingSMTP(self.connections, self._live, self.handler, **kwargs),
            host=self.host,
            port=self.port,
        )

    async def stop(self) -> None:
        """Stop listening and hang up on every client, as a relay going down does."""
        if self.server is not None:
            self.server.close()
            for protocol in list(self._live):
                if protocol.transport is not None:
                    protocol.transport.close()
            await self.server.wait_closed()
            self.server = None
