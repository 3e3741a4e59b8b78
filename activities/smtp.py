"""SMTP transport (aiosmtplib). TLS with verified certificates unless a local sink is configured."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import aiosmtplib


class SmtpConfigError(RuntimeError):
    pass


class TransientSmtpError(Exception):
    """4xx answers and dropped connections: the activity retries with backoff."""


@dataclass
class PermanentSmtpError(Exception):
    code: int

    def __str__(self) -> str:
        return f"SMTP permanent failure {self.code}"


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

    async def send(self, mail_from: str, rcpt: str, message: bytes) -> None:
        t = self.target
        client = aiosmtplib.SMTP(
            hostname=t.host,
            port=t.port,
            use_tls=t.implicit_tls,
            start_tls=t.starttls if t.starttls else False,
            tls_context=self.tls_context,
            timeout=30,
        )
        try:
            await client.connect()
            if t.username:
                await client.login(t.username, t.password or "")
            await client.sendmail(mail_from, [rcpt], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            code = codes[0] if codes else 550
            if 400 <= code < 500:
                raise TransientSmtpError(f"SMTP {code}") from None
            raise PermanentSmtpError(code) from None
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                raise TransientSmtpError(f"SMTP {exc.code}") from None
            raise PermanentSmtpError(exc.code) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientSmtpError(type(exc).__name__) from None
        finally:
            if client.is_connected:
                try:
                    await client.quit()
                except Exception:
                    client.close()
