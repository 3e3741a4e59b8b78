"""SmtpTransport set-up: TLS targets verify certificates; pool settings come from Settings."""

from __future__ import annotations

import ssl

import pytest

from activities.smtp import SmtpConfigError, SmtpTransport, parse_smtp_url
from activities.smtp_pool import SmtpPool
from core.config import Settings


@pytest.mark.parametrize("url", ["smtps://u:p@relay.example:465", "smtp://relay.example:587"])
def test_tls_targets_verify_certificates_and_host_names(url: str) -> None:
    t = SmtpTransport(parse_smtp_url(url, allow_plaintext=False))
    assert t.tls_context is not None
    assert t.tls_context.verify_mode == ssl.CERT_REQUIRED and t.tls_context.check_hostname


def test_the_plaintext_sink_needs_no_tls_context() -> None:
    assert SmtpTransport(parse_smtp_url("smtp://127.0.0.1:8025", True)).tls_context is None


def test_pool_settings_come_from_settings() -> None:
    s = Settings(  # type: ignore[call-arg]
        _env_file=None,
        smtp_url="smtp://127.0.0.1:8025",
        smtp_allow_plaintext=True,
        smtp_pool_size=3,
        smtp_pool_idle_seconds=2.5,
        smtp_pool_max_messages=7,
    )
    pool = SmtpTransport.from_settings(s).pool
    assert (pool.max_size, pool.idle_timeout, pool.max_messages) == (3, 2.5, 7)


def test_missing_url_and_bad_pool_settings_are_refused() -> None:
    with pytest.raises(SmtpConfigError):
        SmtpTransport.from_settings(Settings(_env_file=None, smtp_url=None))  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        Settings(_env_file=None, smtp_pool_size=0)  # type: ignore[call-arg]

    async def opener() -> object:
        raise AssertionError

    with pytest.raises(ValueError):
        SmtpPool(opener, max_messages=0)  # type: ignore[arg-type]
