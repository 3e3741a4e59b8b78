"""SMTP transport (aiosmtplib). TLS with verified certificates unless a local sink is configured."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import aiosmtplib


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
        raise SmtpConfigError("SMTP_URL must look like smtps://USER:PASS@HOST:465 or smtp://HOST:587")
    implicit = u.scheme == "smtps"
    return SmtpTarget(
        host=u.hostname,
        port=u.port or (465 if implicit else 587),
        implicit_tls=implicit,
        starttls=not implicit and not allow_plaintext,
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
    )


class SmtpTransport:
    def __init__(self, target: SmtpTarget) -> None:
        self.target = target
        self.tls_context = ssl.create_default_context()  # verifies certificates and host names
        self._builtin_sink: bool | None = None

    def _client(self) -> aiosmtplib.SMTP:
        t = self.target
        return aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.implicit_tls,
            start_tls=t.starttls if t.starttls else False,
            tls_context=self.tls_context,
            timeout=30,
        )

    async def is_builtin_sink(self) -> bool:
        """Whether the target greets as the built-in sink (asked once, then remembered)."""
        if self._builtin_sink is None:
            client = self._client()
            try:
                greeting = await client.connect()
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise TransientSmtpError(f"smtp_connect_{type(exc).__name__}") from None
            try:
                self._builtin_sink = SINK_IDENT in (greeting.message or "")
            finally:
                try:
                    await client.quit()
                except Exception:
                    client.close()
        return self._builtin_sink

    async def send(self, mail_from: str, rcpt: str, message: bytes) -> None:
        """Hand one message to the relay, or raise what went wrong and whether it may
        have been accepted anyway (see TransientSmtpError.delivered_unknown)."""
        t = self.target
        client = self._client()
        stage = "connect"
        try:
            await client.connect()
            if t.username:
                stage = "auth"
                await client.login(t.username, t.password or "")
            utf8 = not (mail_from.isascii() and rcpt.isascii())
            options = ["SMTPUTF8"] if utf8 else []
            encoding = "utf-8" if utf8 else "ascii"
            stage = "mail"
            await client.mail(mail_from, options=options, encoding=encoding)
            stage = "rcpt"
            await client.rcpt(rcpt, encoding=encoding)
            stage = "data"
            await client.data(message)
        except aiosmtplib.SMTPAuthenticationError as exc:
            # A configuration problem, not this message's: keep retrying until it is fixed.
            raise TransientSmtpError(f"smtp_auth_{exc.code}") from None
        except aiosmtplib.SMTPResponseException as exc:
            # The relay answered: nothing was accepted, whatever the stage.
            raise _refused(exc, stage) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            # Before DATA nothing can have been accepted; during it the relay may have
            # queued the message and lost only its answer.
            raise TransientSmtpError(
                f"smtp_{stage}_{type(exc).__name__}", delivered_unknown=stage == "data"
            ) from None
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except Exception:
                    client.close()
