from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mail.reports import DeliveryReport, RecipientStatus, parse_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
ALL_FIXTURES = sorted(FIXTURES.glob("*.eml"))


def _parse(name: str) -> DeliveryReport | None:
    return parse_report((FIXTURES / name).read_bytes())


def _report(name: str) -> DeliveryReport:
    report = _parse(name)
    assert report is not None
    return report


def test_hard_bounce() -> None:
    report = _report("dsn_hard_bounce.eml")
    assert report.kind == "bounce"
    assert report.hard is True
    assert report.status == "5.1.1"
    assert report.recipients == ("no-such-patient@example.org",)
    assert report.original_message_id == "<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>"
    assert report.feedback_type is None
    (recipient,) = report.per_recipient
    assert recipient.action == "failed"
    assert recipient.original_recipient == "no-such-patient@example.org"
    assert recipient.diagnostic_code is not None
    assert recipient.diagnostic_code.startswith("smtp; 550 5.1.1")
    assert "User unknown in virtual mailbox table" in recipient.diagnostic_code  # unfolded


def test_soft_bounce_with_headers_only_original() -> None:
    report = _report("dsn_soft_bounce.eml")
    assert (report.kind, report.hard, report.status) == ("bounce", False, "4.2.2")
    assert report.recipients == ("full.mailbox@example.net",)
    assert report.original_message_id == "<9a1c0e77b6f24d0c8e5d3a2b1c0f9e8d@clinic.example>"


def test_delay() -> None:
    report = _report("dsn_delay.eml")
    assert (report.kind, report.hard, report.status) == ("delay", False, "4.4.1")
    assert report.recipients == ("slow.host@example.com",)
    assert report.original_message_id == "<c0ffee00c0ffee00c0ffee00c0ffee00@clinic.example>"


def test_multi_recipient_keeps_only_failed_ones_and_reads_status_from_diagnostic() -> None:
    report = _report("dsn_multi_recipient.eml")
    assert report.kind == "bounce"
    assert report.recipients == ("Blocked.User@example.edu",)
    assert report.status == "5.7.1"  # no Status field: taken from Diagnostic-Code
    assert report.hard is True
    assert report.per_recipient == (
        RecipientStatus("ok.user@example.edu", None, "relayed", "2.0.0", None),
        RecipientStatus(
            "Blocked.User@example.edu",
            "blocked.user@example.edu",
            "failed",
            "5.7.1",
            "smtp; 550 5.7.1 Message rejected by recipient policy",
        ),
    )


def test_successful_delivery_is_not_a_report_to_act_on() -> None:
    assert _parse("dsn_delivered.eml") is None


def test_report_nested_in_a_forward_is_found() -> None:
    report = _report("forwarded_bounce.eml")
    assert (report.kind, report.status, report.hard) == ("bounce", "5.1.6", True)
    assert report.recipients == ("moved.away@example.org",)
    assert report.original_message_id == "<e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1@clinic.example>"


def test_abuse_complaint() -> None:
    report = _report("arf_abuse.eml")
    assert report.kind == "complaint"
    assert report.feedback_type == "abuse"
    assert report.hard is True
    assert report.status is None
    assert report.recipients == ("angry.patient@isp.example.net",)
    assert report.original_message_id == "<5e5e5e5e0a0a0a0a5e5e5e5e0a0a0a0a@clinic.example>"
    assert report.per_recipient == ()


def test_complaint_with_removal_recipient_and_redacted_headers() -> None:
    report = _report("arf_redacted_headers.eml")
    assert (report.kind, report.feedback_type) == ("complaint", "abuse")  # case-folded
    assert report.recipients == ("opt.me.out@example.com",)
    assert report.original_message_id == "<77aa77aa77aa77aa77aa77aa77aa77aa@clinic.example>"


def test_complaint_falls_back_to_the_original_to_header() -> None:
    report = _report("arf_recipient_in_to_only.eml")
    assert (report.kind, report.feedback_type) == ("complaint", "fraud")
    assert report.recipients == ("pat.doe@mailbox.example",)


def test_not_spam_feedback_is_not_a_complaint() -> None:
    assert _parse("arf_not_spam.eml") is None


def test_ordinary_mail_is_not_a_report() -> None:
    assert _parse("plain_message.eml") is None
    assert parse_report(b"") is None


def test_crlf_and_lf_inputs_parse_the_same() -> None:
    for path in ALL_FIXTURES:
        raw = path.read_bytes()
        assert parse_report(raw.replace(b"\n", b"\r\n")) == parse_report(raw), path.name


def test_unknown_report_type_is_ignored() -> None:
    raw = (FIXTURES / "dsn_hard_bounce.eml").read_bytes()
    raw = raw.replace(b"report-type=delivery-status", b"report-type=disposition-notification")
    assert parse_report(raw) is None


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.name)
@settings(max_examples=25, deadline=None)
@given(cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncated_reports_never_raise(path: Path, cut: float) -> None:
    raw = path.read_bytes()
    result = parse_report(raw[: int(len(raw) * cut)])
    assert result is None or isinstance(result, DeliveryReport)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=400).map(
        lambda junk: (
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: message/delivery-status\r\n\r\n" + junk + b"\r\n--b--\r\n"
        )
    )
)
def test_garbage_reports_never_raise(raw: bytes) -> None:
    result = parse_report(raw)
    assert result is None or isinstance(result, DeliveryReport)
