"""message_bytes_for writes the bytes the email package writes (message_bytes of
build_message), without it for the common case: compared over generated inputs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mail.message import (
    MessageFields,
    _fast_bytes,
    build_message,
    message_bytes,
    message_bytes_for,
)
from mail.template_types import Rendered

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
URL_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/?#@!$&'()*+;=%"

atoms = st.text(ATEXT, min_size=1, max_size=12)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
plain_addresses = st.builds(
    lambda local, host: f"{'.'.join(local)}@{'.'.join(host)}",
    st.lists(atoms, min_size=1, max_size=3),
    st.lists(labels, min_size=2, max_size=4),
)
odd_addresses = st.sampled_from(
    [
        "Pat Doe <pat@example.org>",
        '"Doe, Pat" <pat@example.org>',
        "pat@exämple.org",
        "pät@example.org",
        "pat@[127.0.0.1]",
        '"pat doe"@example.org',
        "pat..doe@example.org",
        "pat@example",
        "not an address",
        "a@b.c, d@e.f",
    ]
)
subjects = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=0, max_size=90),
    st.text(min_size=0, max_size=40).filter(lambda s: "\r" not in s and "\n" not in s),
    st.sampled_from(["Hi", "=?utf-8?q?Hi?=", "Hi  there", " Hi", "Hi ", "Visite — merci"]),
)
bodies = st.text(min_size=0, max_size=400)
from_addrs = st.sampled_from(
    [
        "Riverside Clinic <care@clinic.example>",
        "care@clinic.example",
        '"Dr. Smith, Riverside" <care@clinic.example>',
        "Clinique Évry <care@clinic.example>",
        "A very long display name of a clinic that goes on and on <care@clinic.example>",
    ]
)
list_names = st.one_of(
    st.none(), st.sampled_from(["", "bench", 'Post "visit"', "Suivi ö", "x" * 70])
)
urls = st.builds(
    lambda scheme, path: f"{scheme}://journeys.example/{path}",
    st.sampled_from(["https", "http"]),
    st.text(URL_CHARS, min_size=0, max_size=120),
)
dates = st.sampled_from(
    [
        datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
        datetime(2026, 7, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5))),
    ]
)


def _both(content: Rendered, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    try:
        expected: Any = message_bytes(build_message(content, **kwargs))
    except ValueError as exc:
        expected = ("ValueError", str(exc))
    try:
        got: Any = message_bytes_for(content, **kwargs)
    except ValueError as exc:
        got = ("ValueError", str(exc))
    return expected, got


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_addr=st.one_of(plain_addresses, odd_addresses),
    subject=subjects,
    text=bodies,
    html=bodies,
    from_addr=from_addrs,
    list_name=list_names,
    unsubscribe_url=urls,
    pixel=st.one_of(st.none(), urls),
    trap=st.one_of(st.none(), urls),
    date=dates,
    domain=st.sampled_from(["clinic.example", "a" * 40 + ".example"]),
)
def test_same_bytes_or_same_error_as_the_email_package(
    to_addr: str,
    subject: str,
    text: str,
    html: str,
    from_addr: str,
    list_name: str | None,
    unsubscribe_url: str,
    pixel: str | None,
    trap: str | None,
    date: datetime,
    domain: str,
) -> None:
    content = Rendered(subject=subject, html=html, text=text, links=())
    kwargs: dict[str, Any] = {
        "from_addr": from_addr,
        "to_addr": to_addr,
        "message_id": f"<3dfb628faa4ceadb0122b1ea6797dc8a@{domain}>",
        "date": date,
        "unsubscribe_url": unsubscribe_url,
        "unsubscribe_mailto": "unsubscribe@clinic.example",
        "list_id": "post-visit.clinic.example",
        "list_name": list_name,
        "physical_address": "Riverside Clinic\n12 Harbor Road\nSpringfield, IL 62701",
        "pixel_url": pixel,
        "trap_url": trap,
    }
    expected, got = _both(content, kwargs)
    assert got == expected


@pytest.mark.parametrize("subject", ["Your visit", "Thanks for your visit, Alice! (ref 12345)"])
def test_a_usual_message_is_written_without_the_email_package(subject: str) -> None:
    content = Rendered(subject=subject, html="<p>Hello é</p>", text="Hello\n", links=())
    kwargs: dict[str, Any] = {
        "from_addr": "Riverside Clinic <care@clinic.example>",
        "to_addr": "pat.doe@example.org",
        "message_id": "<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>",
        "date": datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
        "unsubscribe_url": "https://journeys.example/u/" + "Qw3" * 15,
        "unsubscribe_mailto": "unsubscribe@clinic.example",
        "list_id": "post-visit.clinic.example",
        "list_name": "Post-visit follow-up",
        "physical_address": "Riverside Clinic\n12 Harbor Road",
        "pixel_url": "https://journeys.example/t/o/PiXeL",
        "trap_url": "https://journeys.example/t/c/TrAp",
    }
    fast = _fast_bytes(content, cast(MessageFields, kwargs))
    assert fast is not None
    assert fast == message_bytes(build_message(content, **kwargs))
