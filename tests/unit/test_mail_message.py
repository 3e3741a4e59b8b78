from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest

from mail.headers_check import check_marketing_headers
from mail.message import build_message, message_bytes, message_id_for
from mail.template_types import Link, Rendered

UNSUB = "https://journeys.clinic.example/u/" + "Qw3" * 40
MAILTO = "unsubscribe+Qw3Qw3@clinic.example"
PIXEL = "https://journeys.clinic.example/t/o/PiXeL"
TRAP = "https://journeys.clinic.example/t/c/TrApLiNk"
ADDRESS = "Riverside Clinic\n12 Harbor Road\nSpringfield, IL 62701"
MESSAGE_ID = "<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>"


def _content(html: str | None = None, text: str = "Hello Alice\n") -> Rendered:
    return Rendered(
        subject="Thanks for your visit — Riverside",
        html=html
        if html is not None
        else '<html><body><p>Hello Alice</p><a href="https://t.example/c/1">Book</a></body></html>',
        text=text,
        links=(Link("book", "https://clinic.example/book"),),
    )


def _build(content: Rendered | None = None, **overrides: Any) -> EmailMessage:
    kwargs: dict[str, Any] = {
        "from_addr": "Riverside Clinic <care@clinic.example>",
        "to_addr": "pat.doe@example.org",
        "message_id": MESSAGE_ID,
        "date": datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
        "unsubscribe_url": UNSUB,
        "unsubscribe_mailto": MAILTO,
        "list_id": "post-visit.clinic.example",
        "list_name": "Post-visit follow-up",
        "physical_address": ADDRESS,
        "pixel_url": PIXEL,
        "trap_url": TRAP,
    }
    kwargs.update(overrides)
    return build_message(content or _content(), **kwargs)


def _wire(msg: EmailMessage) -> EmailMessage:
    parsed = message_from_bytes(message_bytes(msg), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body((subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


def _html(msg: EmailMessage) -> str:
    return _body(msg, "html")


def _text(msg: EmailMessage) -> str:
    return _body(msg, "plain")


def test_headers_survive_the_wire() -> None:
    msg = _wire(_build())
    assert msg["From"] == "Riverside Clinic <care@clinic.example>"
    assert msg["To"] == "pat.doe@example.org"
    assert msg["Subject"] == "Thanks for your visit — Riverside"
    assert msg["Date"] == "Mon, 05 Jan 2026 10:00:00 +0000"
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["List-Id"] == '"Post-visit follow-up" <post-visit.clinic.example>'
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The long URL stays intact (not RFC 2047-encoded) after folding.
    assert msg["List-Unsubscribe"] == f"<{UNSUB}>, <mailto:{MAILTO}?subject=unsubscribe>"


def test_long_list_unsubscribe_folds_between_uris() -> None:
    raw = message_bytes(_build()).decode("ascii")
    header = re.search(r"^List-Unsubscribe: .*?\r\n(?! )", raw, re.MULTILINE | re.DOTALL)
    assert header is not None
    assert "=?" not in header.group(0)
    assert header.group(0) == (
        f"List-Unsubscribe: <{UNSUB}>,\r\n <mailto:{MAILTO}?subject=unsubscribe>\r\n"
    )


def test_short_list_unsubscribe_stays_on_one_line() -> None:
    raw = message_bytes(_build(unsubscribe_url="https://c.ex/u", unsubscribe_mailto="u@c.ex"))
    line = b"List-Unsubscribe: <https://c.ex/u>, <mailto:u@c.ex?subject=unsubscribe>\r\n"
    assert line in raw


def test_passes_the_marketing_header_check() -> None:
    assert check_marketing_headers(message_bytes(_build())) == []


def test_multipart_alternative_with_text_then_html() -> None:
    msg = _wire(_build())
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_wire_form_is_seven_bit_crlf() -> None:
    raw = message_bytes(_build(_content(text="Grüße, Zoë\n")))
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert "Grüße, Zoë" in _text(_wire(_build(_content(text="Grüße, Zoë\n"))))


def test_pixel_and_trap_are_in_the_html() -> None:
    html = _html(_wire(_build()))
    pixel = re.search(r"<img[^>]*src=\"" + re.escape(PIXEL) + r"\"[^>]*>", html)
    assert pixel is not None
    assert 'width="1"' in pixel.group(0) and 'height="1"' in pixel.group(0)
    assert 'alt=""' in pixel.group(0)
    trap = re.search(r"<a [^>]*href=\"" + re.escape(TRAP) + r"\"[^>]*>(.*?)</a>", html)
    assert trap is not None
    tag, link_text = trap.group(0), trap.group(1)
    assert link_text == ""
    assert "display:none" in tag and 'aria-hidden="true"' in tag and 'tabindex="-1"' in tag
    # The trap sits inside a hidden wrapper right after <body>, before visible content.
    assert html.index(TRAP) < html.index("Hello Alice")
    wrapper = html[html.index("<body>") + len("<body>") : html.index(TRAP)]
    assert "display:none" in wrapper and 'aria-hidden="true"' in wrapper


def test_trap_and_pixel_never_reach_the_text_part() -> None:
    text = _text(_wire(_build()))
    assert TRAP not in text and PIXEL not in text


def test_pixel_and_trap_are_optional() -> None:
    html = _html(_wire(_build(pixel_url=None, trap_url=None)))
    assert "<img" not in html
    assert "TrApLiNk" not in html and "PiXeL" not in html


def test_footer_with_address_and_unsubscribe_in_both_parts() -> None:
    msg = _wire(_build())
    html, text = _html(msg), _text(msg)
    assert "Riverside Clinic<br>12 Harbor Road<br>Springfield, IL 62701" in html
    assert f'<a href="{UNSUB}"' in html and ">Unsubscribe</a>" in html
    # Footer then pixel, both before </body>.
    assert html.index("12 Harbor Road") < html.index(PIXEL) < html.index("</body>")
    assert text.startswith("Hello Alice\n")
    assert text.endswith(f"\n-- \n{ADDRESS}\nUnsubscribe: {UNSUB}\n")


def test_footer_address_is_escaped() -> None:
    html = _html(_wire(_build(physical_address="A & B <Clinic>")))
    assert "A &amp; B &lt;Clinic&gt;" in html


def test_html_fragment_without_body_gets_trap_first_and_footer_last() -> None:
    html = _html(_wire(_build(_content(html="<p>Fragment</p>"))))
    assert html.index(TRAP) < html.index("Fragment") < html.index("Harbor") < html.index(PIXEL)
    assert html.rstrip().endswith(">")


def test_same_inputs_give_same_bytes() -> None:
    assert message_bytes(_build()) == message_bytes(_build())
    other = message_bytes(_build(message_id="<other@clinic.example>"))
    assert other != message_bytes(_build())


def test_date_keeps_its_offset() -> None:
    chicago = timezone(timedelta(hours=-6))
    msg = _wire(_build(date=datetime(2026, 1, 5, 4, 0, tzinfo=chicago)))
    assert msg["Date"] == "Mon, 05 Jan 2026 04:00:00 -0600"


def test_list_name_quotes_are_escaped() -> None:
    msg = _wire(_build(list_name='Post-visit "care"'))
    assert msg["List-Id"] == '"Post-visit \\"care\\"" <post-visit.clinic.example>'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("date", datetime(2026, 1, 5, 10, 0)),
        ("message_id", "no-brackets@clinic.example"),
        ("unsubscribe_url", "ftp://clinic.example/u/1"),
        ("unsubscribe_url", "https://clinic.example/u/1,2"),
        ("unsubscribe_mailto", "not-an-address"),
        ("list_id", "nodots"),
        ("to_addr", "pat.doe@example.org\r\nBcc: x@example.com"),
        ("to_addr", "pat.doe@example.org, other@example.org"),
        ("to_addr", "pat.doe"),
        ("pixel_url", "javascript:alert(1)"),
    ],
)
def test_invalid_inputs_are_rejected_without_echoing_them(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        _build(**{field: value})
    if isinstance(value, str):
        assert value not in str(info.value)
    assert "pat.doe" not in str(info.value)


def test_message_id_for_is_deterministic_and_well_formed() -> None:
    first = message_id_for("run-7f3a/thanks/1", "clinic.example")
    assert first == message_id_for("run-7f3a/thanks/1", "clinic.example")
    assert re.fullmatch(r"<[0-9a-f]{32}@clinic\.example>", first)
    assert message_id_for("run-7f3a/thanks/2", "clinic.example") != first
    assert message_id_for("run-7f3a/thanks/1", "other.example") != first
    assert "run-7f3a" not in first


def test_message_id_for_rejects_bad_domains() -> None:
    for domain in ("", "bad domain", "a..b", "-x.example", "x.example>"):
        with pytest.raises(ValueError):
            message_id_for("k", domain)


def test_internationalised_domain_is_sent_as_idna() -> None:
    msg = _wire(_build(to_addr="Zoë <zoe@bücher.example>"))
    assert msg["To"].addresses[0].domain == "xn--bcher-kva.example"
    assert msg["To"].addresses[0].display_name == "Zoë"


def test_header_classes_are_built_once_per_name() -> None:
    from email.headerregistry import HeaderRegistry

    from mail.message import MESSAGE_POLICY

    registry = MESSAGE_POLICY.header_factory
    assert isinstance(registry, HeaderRegistry)
    assert registry["Subject"] is registry["subject"]
    assert registry["List-Unsubscribe"] is registry["list-unsubscribe"]


def test_caching_header_classes_leaves_the_bytes_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same message through the stock registry (a fresh class per header)."""
    from email.headerregistry import HeaderRegistry

    import mail.message as message

    ours = message_bytes(_build())
    stock = HeaderRegistry()
    stock.map_to_type("list-unsubscribe", message._UriListHeader)
    policy = message.MESSAGE_POLICY.clone(header_factory=stock)
    monkeypatch.setattr(message, "MESSAGE_POLICY", policy)
    monkeypatch.setattr(message, "_PART_POLICY", policy.clone(max_line_length=76))
    assert message_bytes(_build()) == ours
