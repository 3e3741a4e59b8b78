"""SMTP transport (aiosmtplib). TLS with verified certificates unless a local sink is configured."""

from __future__ import annotations

import asyncio
import re
import ssl
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

import aiosmtplib

from activities.smtp_pool import PoolBusy, PooledConnection, SmtpPool

if TYPE_CHECKING:
    from core.config import Settings


COMMAND_TIMEOUT = 30.0  # seconds per SMTP command
# Seconds a send waits for a pooled connection: well under send_email's 60 s budget, so a
# busy pool ends the attempt (retried later) instead of the budget running out.
POOL_WAIT = 10.0


class SmtpConfigError(RuntimeError):
    pass


# The built-in sink's greeting carries this; a relay never does. It tells the worker the
# outbox table is the truth about what was received (activities/sending.py).
SINK_IDENT = "journeys-outbox-sink"


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Reply codes that can mean the mailbox itself is bad: unavailable, not local, name not allowed.
_BAD_MAILBOX_CODES = frozenset({550, 551, 553})


class TransientSmtpError(Exception):
    """4xx answers and dropped connections: the activity retries with backoff.

    `delivered_unknown` is True when the connection broke while the message was being
    transferred: the relay may have accepted it without us hearing the answer.
    """

    def __init__(self, detail: str, *, delivered_unknown: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.delivered_unknown = delivered_unknown


@dataclass
class PermanentSmtpError(Exception):
    code: int
    stage: str = "data"  # mail | rcpt | data (the command the relay refused)
    enhanced: str | None = None  # RFC 3463 status such as "5.1.1", when the relay gave one

    def __str__(self) -> str:
        return f"SMTP permanent failure {self.code} at {self.stage}"

    @property
    def bad_mailbox(self) -> bool:
        """The recipient address does not exist or is unusable: suppress it.

        550/551/553 at RCPT or after DATA, unless the enhanced code says the refusal is
        about something else (5.7.x policy or spam verdicts are not a bad mailbox).
        """
        if self.stage == "mail" or self.code not in _BAD_MAILBOX_CODES:
            return False
        return self.enhanced is None or self.enhanced.startswith(("5.1.", "5.2.1"))


def _enhanced(message: str) -> str | None:
    m = _ENHANCED.match(message or "")
    return ".".join(m.groups()) if m else None


def _refused(exc: aiosmtplib.SMTPResponseException, stage: str) -> Exception:
    if 400 <= exc.code < 500:
        return TransientSmtpError(f"smtp_{exc.code}")
    return PermanentSmtpError(exc.code, stage, _enhanced(exc.message))


@dataclass
class SmtpTarget:
    host: str
    port: int
    implicit_tls: bool
    starttls: bool
    username: str | None
    password: str | None


def parse_smtp_url(url: str, allow_plaintext: bool) -> SmtpTarget:
    """smtps://user:pass@host:465 (implicit TLS) or smtp://host:587 (STARTTLS required).

    Plain smtp:// without TLS is refused unless SMTP_ALLOW_PLAINTEXT is set (the local sink).
    """
    u = urlparse(url)
    if u.scheme not in ("smtp", "smtps") or not u.hostname:
        raise SmtpConfigError(
            "SMTP_URL must look like smtps://USER:PASS@HOST:465 or smtp://HOST:587"
        )
    implicit = u.scheme == "smtps"
    return SmtpTarget(
        host=u.hostname,
        port=u.port or (465 if implicit else 587),
        implicit_tls=implicit,
        starttls=not implicit and not allow_plaintext,
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
    )


@dataclass
class SendProgress:
    """How far `SmtpTransport.send` got: once DATA has begun the relay may hold the
    message; before that nothing can have been accepted."""

    data_started: bool = False


class _StaleConnection(Exception):
    """A reused connection failed before DATA: the relay had given up on it while idle."""

    def __init__(self, cause: TransientSmtpError) -> None:
        super().__init__(cause.detail)
        self.cause = cause


def _closing(exc: aiosmtplib.SMTPResponseException) -> bool:
    """421: the server is closing the transmission channel (RFC 5321 3.8)."""
    return exc.code == 421


class SmtpTransport:
    """Sends through a bounded per-process pool of open connections (activities/smtp_pool.py).

    A connection goes back to the pool after a delivered message, or after a refused one
    once RSET has cleared the transaction; after anything else (a dropped connection, a
    timeout, a 421 answer) it is closed. A reused connection that fails before DATA is
    one the relay closed while idle: nothing can have been accepted, so the message is
    tried once more on a new connection instead of failing the send.
    """

    def __init__(
        self,
        target: SmtpTarget,
        *,
        pool_size: int = 10,
        idle_timeout: float = 30.0,
        max_messages: int = 100,
    ) -> None:
        self.target = target
        # Verifies certificates and host names; built only for TLS (loading the system's
        # CA certificates is a noticeable part of a worker's start).
        tls = target.implicit_tls or target.starttls
        self.tls_context = ssl.create_default_context() if tls else None
        self._builtin_sink: bool | None = None
        self.pool = SmtpPool(
            self._open,
            max_size=pool_size,
            idle_timeout=idle_timeout,
            max_messages=max_messages,
            acquire_timeout=POOL_WAIT,
        )
        _transports.add(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpTransport:
        if not settings.smtp_url:
            raise SmtpConfigError("SMTP_URL is not set")
        return cls(
            parse_smtp_url(settings.smtp_url, settings.smtp_allow_plaintext),
            pool_size=settings.smtp_pool_size,
            idle_timeout=settings.smtp_pool_idle_seconds,
            max_messages=settings.smtp_pool_max_messages,
        )

    def _client(self) -> aiosmtplib.SMTP:
        t = self.target
        return aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.implicit_tls,
            start_tls=t.starttls if t.starttls else False,
            tls_context=self.tls_context,
            timeout=COMMAND_TIMEOUT,
        )

    async def _open(self) -> tuple[aiosmtplib.SMTP, str]:
        """Connect (TLS as configured) and authenticate; errors as `send` reports them."""
        t = self.target
        client = self._client()
        stage = "connect"
        try:
            greeting = await client.connect()
            if t.username:
                stage = "auth"
                await client.login(t.username, t.password or "")
        except aiosmtplib.SMTPAuthenticationError as exc:
            client.close()
            # A configuration problem, not this message's: keep retrying until it is fixed.
            raise TransientSmtpError(f"smtp_auth_{exc.code}") from None
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            raise _refused(exc, stage) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise TransientSmtpError(f"smtp_{stage}_{type(exc).__name__}") from None
        return client, greeting.message or ""

    async def acquire(self) -> PooledConnection:
        """A pooled connection for one `send` (which gives it back), waiting at most
        POOL_WAIT for a free slot; `release` it if the send does not happen."""
        try:
            return await self.pool.acquire()
        except PoolBusy:
            raise TransientSmtpError("smtp_pool_busy") from None

    async def release(self, conn: PooledConnection) -> None:
        """Give back a connection from `acquire` that carried no transaction."""
        await self.pool.release(conn, reusable=True)

    async def is_builtin_sink(self) -> bool:
        """Whether the target greets as the built-in sink (asked once, then remembered)."""
        if self._builtin_sink is None:
            conn = await self.acquire()
            greeting = conn.greeting
            await self.release(conn)
            self._builtin_sink = SINK_IDENT in greeting
        return self._builtin_sink

    async def send(
        self,
        mail_from: str,
        rcpt: str,
        message: bytes,
        *,
        conn: PooledConnection | None = None,
        progress: SendProgress | None = None,
    ) -> None:
        """Hand one message to the relay, or raise what went wrong and whether it may
        have been accepted anyway (see TransientSmtpError.delivered_unknown). `conn`, from
        `acquire`, is used (and given back) instead of waiting for one here; `progress`
        tells a caller whose send was cancelled whether DATA had begun."""
        if conn is None:
            conn = await self.acquire()
        progress = progress if progress is not None else SendProgress()
        settled = False  # the exchange ended where the protocol expects (else cut it off)
        try:
            try:
                await self._transaction(conn, mail_from, rcpt, message, progress)
            except _StaleConnection:
                await self.pool.discard(conn)
                conn = await self.pool.open_new()  # same slot; fails as a fresh connect would
                try:
                    await self._transaction(conn, mail_from, rcpt, message, progress)
                except _StaleConnection as again:  # not raised for a new connection
                    raise again.cause from None
            settled = True
        except (TransientSmtpError, PermanentSmtpError):
            settled = True  # _transaction closed the connection if it is unfit for reuse
            raise
        finally:
            await self.pool.release(conn, reusable=settled)

    async def _transaction(
        self,
        conn: PooledConnection,
        mail_from: str,
        rcpt: str,
        message: bytes,
        progress: SendProgress,
    ) -> None:
        """MAIL, RCPT, DATA on `conn`. Whatever leaves `conn` unfit for another message
        (a 421, a dropped connection, a timeout, a failed RSET) closes it here."""
        client = conn.client
        stale_possible = conn.was_idle
        conn.transactions += 1
        utf8 = not (mail_from.isascii() and rcpt.isascii())
        options = ["SMTPUTF8"] if utf8 else []
        encoding = "utf-8" if utf8 else "ascii"
        stage = "mail"
        try:
            await client.mail(mail_from, options=options, encoding=encoding)
            stage = "rcpt"
            await client.rcpt(rcpt, encoding=encoding)
            stage = "data"
            progress.data_started = True
            await client.data(message)
        except aiosmtplib.SMTPResponseException as exc:
            # The relay answered: nothing was accepted, whatever the stage.
            refused = _refused(exc, stage)
            if _closing(exc):
                client.close()  # it is hanging up; never reuse it
                if stale_possible and stage != "data" and isinstance(refused, TransientSmtpError):
                    raise _StaleConnection(refused) from None
                raise refused from None
            # Clear the refused transaction so the connection can carry the next message.
            if not await _reset(client):
                client.close()
            raise refused from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            # Before DATA nothing can have been accepted; during it the relay may have
            # queued the message and lost only its answer.
            failure = TransientSmtpError(
                f"smtp_{stage}_{type(exc).__name__}", delivered_unknown=stage == "data"
            )
            # Not after a timeout: a second wait of up to COMMAND_TIMEOUT on a new
            # connection would outlast the send's budget; the activity retries instead.
            if stale_possible and stage != "data" and not isinstance(exc, TimeoutError):
                raise _StaleConnection(failure) from None
            raise failure from None


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a refused transaction; False when the connection is no longer usable."""
    if not client.is_connected:
        return False
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        return False
    return True


# Every transport of this process, so the worker can QUIT their connections at shutdown.
_transports: weakref.WeakSet[SmtpTransport] = weakref.WeakSet()


async def close_transports() -> None:
    """QUIT every pooled connection of this process (worker shutdown)."""
    await asyncio.gather(*(t.pool.close() for t in list(_transports)))
