from __future__ import annotations

import pytest

from mail.headers_check import check_marketing_headers

GOOD = (
    b"From: Riverside Clinic <care@clinic.example>\r\n"
    b"To: pat.doe@example.org\r\n"
    b"Subject: Thanks for your visit\r\n"
    b"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n"
    b"Message-ID: <3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>\r\n"
    b'List-Id: "Post-visit" <post-visit.clinic.example>\r\n'
    b"List-Unsubscribe: <https://journeys.clinic.example/u/tok>,\r\n"
    b" <mailto:unsubscribe+tok@clinic.example?subject=unsubscribe>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Hello\r\n"
)

SIGNATURE = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=clinic.example;\r\n"
    b" s=s2026; h=from : to : subject : date : message-id :\r\n"
    b" list-unsubscribe : list-unsubscribe-post : list-id;\r\n"
    b" bh=AAAA; b=BBBB\r\n"
)


def _replace(old: bytes, new: bytes) -> bytes:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


def test_good_message_has_no_problems() -> None:
    assert check_marketing_headers(GOOD) == []
    assert check_marketing_headers(SIGNATURE + GOOD, require_dkim=True) == []


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            _replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b""),
            "List-Unsubscribe-Post: missing",
        ),
        (
            _replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=one-click"),
            "List-Unsubscribe-Post: must be exactly 'List-Unsubscribe=One-Click'",
        ),
        (
            _replace(b"<https://journeys", b"<http://journeys"),
            "List-Unsubscribe: no https URI (RFC 8058 one-click needs one)",
        ),
        (
            _replace(b",\r\n <mailto:unsubscribe+tok@clinic.example?subject=unsubscribe>", b""),
            "List-Unsubscribe: no mailto URI",
        ),
        (
            _replace(b"<https://journeys.clinic.example/u/tok>", b"https://journeys.example/u/t"),
            "List-Unsubscribe: not a comma-separated list of <URI>",
        ),
        (
            _replace(b"Message-ID: <3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>\r\n", b""),
            "Message-ID: missing",
        ),
        (
            _replace(b"<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>", b"3dfb628f"),
            "Message-ID: not in <id-left@id-right> form",
        ),
        (
            _replace(b"Date: ", b"Message-ID: <x@y.example>\r\nDate: "),
            "Message-ID: appears 2 times",
        ),
        (_replace(b"Mon, 05 Jan 2026 10:00:00 +0000", b"yesterday"), "Date: not an RFC 5322 date"),
        (_replace(b"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n", b""), "Date: missing"),
        (_replace(b"From: Riverside Clinic <care@clinic.example>\r\n", b""), "From: missing"),
        (_replace(b"<care@clinic.example>", b"<nobody>"), "From: no valid address"),
        (
            _replace(b'List-Id: "Post-visit" <post-visit.clinic.example>\r\n', b""),
            "List-Id: missing",
        ),
        (
            _replace(b"<post-visit.clinic.example>", b"post-visit"),
            "List-Id: no <dotted.list.identifier>",
        ),
    ],
)
def test_each_problem_is_reported(raw: bytes, expected: str) -> None:
    assert expected in check_marketing_headers(raw)


def test_signature_must_cover_the_unsubscribe_headers() -> None:
    weak = SIGNATURE.replace(b" list-unsubscribe : list-unsubscribe-post : list-id;", b" list-id;")
    assert weak != SIGNATURE
    problems = check_marketing_headers(weak + GOOD)
    assert problems == [
        "DKIM-Signature: h= does not cover List-Unsubscribe",
        "DKIM-Signature: h= does not cover List-Unsubscribe-Post",
    ]


def test_missing_signature_only_matters_when_required() -> None:
    assert check_marketing_headers(GOOD) == []
    assert check_marketing_headers(GOOD, require_dkim=True) == ["DKIM-Signature: missing"]


def test_problems_never_quote_header_values() -> None:
    raw = (
        _replace(b"<care@clinic.example>", b"<pat.secret>")
        .replace(b"<https://journeys", b"<http://journeys")
        .replace(b"post-visit.clinic.example>", b"post-visit>")
    )
    problems = check_marketing_headers(raw)
    assert len(problems) >= 3
    for problem in problems:
        assert "pat." not in problem and "journeys" not in problem and "post-visit" not in problem


def test_empty_input_reports_everything_missing() -> None:
    problems = check_marketing_headers(b"")
    assert "From: missing" in problems and "List-Unsubscribe: missing" in problems
