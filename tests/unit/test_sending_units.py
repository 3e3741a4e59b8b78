"""Pure parts of sending: SMTP failure classification, List-Id, DKIM configuration,
the sink's fault selection and inbound routing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from activities.compose import DkimConfigError, list_id, load_dkim, unsubscribe_mailbox
from activities.smtp import PermanentSmtpError, TransientSmtpError, _refused
from core.config import Settings
from devstack.inbound import _is_report
from devstack.smtp_sink import SinkFaults


def _settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg, arg-type]


@pytest.mark.parametrize(
    "code, stage, enhanced, bad",
    [
        (550, "rcpt", "5.1.1", True),
        (550, "rcpt", None, True),
        (551, "rcpt", "5.1.6", True),
        (553, "data", "5.1.3", True),
        (550, "rcpt", "5.2.1", True),  # mailbox disabled
        (550, "rcpt", "5.7.1", False),  # policy, not the mailbox
        (550, "data", "5.7.1", False),  # content refused as spam
        (552, "data", "5.2.2", False),  # mailbox full is not permanent badness
        (554, "data", None, False),
        (550, "mail", "5.1.0", False),  # our sender was refused: not the recipient's fault
    ],
)
def test_bad_mailbox_classification(code: int, stage: str, enhanced: str | None, bad: bool) -> None:
    assert PermanentSmtpError(code, stage, enhanced).bad_mailbox is bad


def test_refusals_split_into_transient_and_permanent() -> None:
    transient = _refused(aiosmtplib.SMTPResponseException(451, "4.3.0 try later"), "data")
    assert isinstance(transient, TransientSmtpError)
    assert transient.detail == "smtp_451" and not transient.delivered_unknown
    permanent = _refused(aiosmtplib.SMTPResponseException(550, "5.1.1 no such user"), "rcpt")
    assert isinstance(permanent, PermanentSmtpError)
    assert (permanent.code, permanent.stage, permanent.enhanced) == (550, "rcpt", "5.1.1")
    bare = _refused(aiosmtplib.SMTPResponseException(553, "mailbox name not allowed"), "rcpt")
    assert isinstance(bare, PermanentSmtpError) and bare.enhanced is None and bare.bad_mailbox


def test_list_id_is_a_dotted_identifier() -> None:
    s = _settings(mail_domain="clinic.example")
    assert list_id("post-visit", s) == "post-visit.clinic.example"
    assert list_id("odd_key.v2", s) == "odd-key-v2.clinic.example"
    assert list_id("___", s) == "journey.clinic.example"
    assert len(list_id("a" * 200, s).split(".")[0]) == 63


def test_unsubscribe_mailbox_accepts_a_display_name() -> None:
    assert (
        unsubscribe_mailbox(_settings(unsubscribe_mailto="Unsub <u@clinic.example>"))
        == "u@clinic.example"
    )
    assert (
        unsubscribe_mailbox(_settings(unsubscribe_mailto="u@clinic.example")) == "u@clinic.example"
    )


def test_envelope_sender_defaults_to_bounces_at_mail_domain() -> None:
    assert _settings(mail_domain="clinic.example").envelope_sender == "bounces@clinic.example"
    assert _settings(bounce_address="rp@mx.example").envelope_sender == "rp@mx.example"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_dkim_configuration(tmp_path: Path) -> None:
    assert load_dkim(_settings()) is None
    with pytest.raises(DkimConfigError, match="needs all of"):
        load_dkim(_settings(dkim_selector="s1", dkim_domain="clinic.example"))
    with pytest.raises(DkimConfigError, match="cannot read"):
        load_dkim(
            _settings(
                dkim_selector="s1",
                dkim_domain="clinic.example",
                dkim_private_key_path=tmp_path / "missing.pem",
            )
        )
    ec_path = tmp_path / "ec.pem"
    ec_path.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(DkimConfigError, match="RSA"):
        load_dkim(
            _settings(
                dkim_selector="s1", dkim_domain="clinic.example", dkim_private_key_path=ec_path
            )
        )
    good = tmp_path / "rsa.pem"
    good.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    key = load_dkim(
        _settings(dkim_selector="s1", dkim_domain="clinic.example", dkim_private_key_path=good)
    )
    assert key is not None and key.selector == "s1"
    assert key.sign(b"From: a@clinic.example\r\n\r\nx\r\n").startswith(b"DKIM-Signature:")


def test_sink_faults_target_one_recipient_first() -> None:
    faults = SinkFaults(queue=["451"], by_rcpt={"a@example.com": ["550", "drop"]})
    assert faults.take(["b@example.com"]) == "451"
    assert faults.take(["b@example.com"]) is None
    assert faults.take(["A@example.com"]) == "550"
    assert faults.take(["a@example.com"]) == "drop"
    assert faults.take(["a@example.com"]) is None


def test_inbound_recognises_reports_by_content_type() -> None:
    fixtures = Path(__file__).parent.parent / "fixtures" / "mail"
    assert _is_report((fixtures / "dsn_hard_bounce.eml").read_bytes().replace(b"\n", b"\r\n"))
    assert _is_report((fixtures / "arf_abuse.eml").read_bytes())
    assert not _is_report((fixtures / "plain_message.eml").read_bytes())
    # Only the top-level header counts, not a quoted part further down.
    assert not _is_report(b"Subject: hi\r\n\r\nContent-Type: multipart/report\r\n")
