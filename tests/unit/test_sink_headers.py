"""The sink reads Subject and Message-ID from the header block alone: the outbox row must
hold exactly what parsing the whole message with email.policy.default gives."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.smtp_sink import outbox_headers
from mail.message import message_bytes
from mail.template_types import Rendered
from tests.unit.test_mail_message import _build

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mail"


def whole_parse(raw: bytes) -> tuple[str, str | None]:
    """What the sink stored before it went lean."""
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return str(parsed.get("Subject", "")), str(parsed.get("Message-ID", "")).strip() or None


def composed(subject: str) -> bytes:
    html = "<html><body>" + "<p>Hello Alice, see you soon.</p>" * 40 + "</body></html>"
    return message_bytes(_build(Rendered(subject=subject, html=html, text="Hi\n", links=())))


CASES = {
    "ascii": composed("Your appointment"),
    "encoded words": composed("Thanks for your visit — Riverside ✓ Ünïcode"),
    "long, folded": composed("A rather long subject line " * 8),
    "lf only": b"Subject: plain\nMessage-ID: <a@b.example>\n\nbody\n\nmore\n",
    "no body": b"Subject: only headers\r\nMessage-ID: <c@d.example>\r\n",
    "no separator": b"Subject: s\r\nMessage-ID: <e@f.example>\r\nnot a header line\r\n\r\nx",
    "missing both": b"From: a@b.example\r\n\r\nSubject: in the body\r\n",
    "padded id": b"Message-ID:   <g@h.example>  \r\nSubject:  spaced  \r\n\r\nx",
    "folded id": b"Message-ID:\r\n <i@j.example>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n",
    "raw utf-8": "Subject: café déjà\r\nMessage-ID: <k@l.example>\r\n\r\nx".encode(),
    "twice": b"Subject: first\r\nSubject: second\r\nMessage-ID: <m@n.example>\r\n\r\n",
    "empty": b"",
    "unix from": b"From sender@x Thu Jan 1 00:00:00 2026\r\nSubject: s\r\n\r\nb",
    "body blank first": b"\r\nSubject: not a header\r\n",
}


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_headers_match_a_whole_message_parse(raw: bytes) -> None:
    assert outbox_headers(raw) == whole_parse(raw)


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.eml")), ids=lambda p: p.name)
def test_fixture_messages(path: Path) -> None:
    raw = path.read_bytes()
    assert outbox_headers(raw) == whole_parse(raw)


@settings(max_examples=60, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=120))
def test_any_subject_we_compose(subject: str) -> None:
    try:
        raw = composed(subject)
    except ValueError:
        return  # build_message refuses it (e.g. line breaks); the sink never sees it
    assert outbox_headers(raw) == whole_parse(raw)
