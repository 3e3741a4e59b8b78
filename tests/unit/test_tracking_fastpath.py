"""The lean tracking path's pieces: replies byte-for-byte as Starlette's responses,
evidence as the Starlette-based functions read it, COPY lines and event ids."""

from __future__ import annotations

import os
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, RedirectResponse, Response

from api.tracking_fastpath import (
    _NOT_FOUND,
    _PIXEL,
    NO_STORE,
    NOT_FOUND_PAGE,
    PIXEL_GIF,
    _redirect,
)
from services.tracking_buffer import batch_payload, hit_row, new_event_ids
from services.tracking_request import (
    MAX_USER_AGENT,
    EvidenceReader,
    client_ip,
    evidence_headers,
    forwarded_chain,
    parse_trusted_proxies,
)


def test_replies_are_what_starlette_would_send() -> None:
    page = HTMLResponse(NOT_FOUND_PAGE, status_code=404, headers=NO_STORE)
    assert (_NOT_FOUND[0].status, _NOT_FOUND[0].headers, _NOT_FOUND[0].body) == (
        404,
        page.raw_headers,
        page.body,
    )
    head = HTMLResponse("", status_code=404, headers=NO_STORE)
    assert (_NOT_FOUND[1].headers, _NOT_FOUND[1].body) == (head.raw_headers, b"")
    pixel = Response(
        PIXEL_GIF,
        media_type="image/gif",
        headers=dict(NO_STORE, **{"Content-Length": str(len(PIXEL_GIF))}),
    )
    assert (_PIXEL[0].headers, _PIXEL[0].body) == (pixel.raw_headers, PIXEL_GIF)
    assert (_PIXEL[1].headers, _PIXEL[1].body) == (pixel.raw_headers, b"")
    for url in (
        "https://portal.example.org/book?visit=follow-up&utm_source=email",
        "https://example.org/ü path/?q=a b#frag",
    ):
        redirect = RedirectResponse(url, status_code=302, headers=NO_STORE)
        assert (_redirect(url).status, _redirect(url).headers) == (302, redirect.raw_headers)


def test_answers_carry_only_the_headers_that_mean_something() -> None:
    """Every hit writes and every client parses each header line: no caching (max-age=0
    makes a recipient ignore Expires, and Pragma means nothing in a response), no
    Referer onwards, no indexing, and what the body is."""
    for reply, last in (
        (_PIXEL[0], b"content-type"),
        (_redirect("https://example.org/"), b"location"),
    ):
        names = [name for name, _ in reply.headers]
        assert names == [
            b"cache-control",
            b"referrer-policy",
            b"x-robots-tag",
            b"content-length",
            last,
        ]
        cache = dict(reply.headers)[b"cache-control"]
        assert b"no-store" in cache and b"max-age=0" in cache


PROXIES = parse_trusted_proxies("127.0.0.0/8, 10.0.0.0/8")
_names = st.sampled_from(
    ["user-agent", "accept", "Accept", "x-forwarded-for", "X-Forwarded-For", "referer",
     "sec-fetch-mode", "via", "cookie", "authorization", "accept-language", "host"]
)  # fmt: skip
_values = st.one_of(
    st.sampled_from(["73.1.2.3", "10.0.0.7, 73.1.2.3", "junk", "", "[::1]:80", "6.6.6.6,"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=1200),
)


@given(
    headers=st.lists(st.tuples(_names, _values), max_size=8),
    peer=st.sampled_from(["127.0.0.1", "10.1.2.3", "203.0.113.9", "::1", None]),
)
def test_evidence_reader_reads_as_the_starlette_functions(
    headers: list[tuple[str, str]], peer: str | None
) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    starlette = Headers(raw=[(k.lower(), v) for k, v in raw])
    xff = forwarded_chain(starlette.getlist("x-forwarded-for"))
    expected = (
        client_ip(peer, xff, PROXIES),
        starlette.get("user-agent", "")[:MAX_USER_AGENT],
        evidence_headers(starlette, len(xff), "referer" in starlette),
    )
    reader = EvidenceReader(PROXIES)
    assert reader.read(raw, peer) == expected
    assert reader.read(raw, peer) == expected  # and again, from its address cache


def test_nul_never_reaches_the_database() -> None:
    ip, ua, kept = EvidenceReader(()).read(
        [(b"user-agent", b"a\x00b"), (b"accept", b"x\x00")], "198.51.100.1"
    )
    assert (ip, ua, kept["accept"]) == ("198.51.100.1", "ab", "x")


def test_event_ids_look_like_new_id() -> None:
    ids = new_event_ids(1000)
    assert len(set(ids)) == 1000
    assert all(i.startswith("te_") and len(i) == 23 and int(i[3:], 16) >= 0 for i in ids)


def test_event_id_counters_run_on_and_wrap_at_32_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.tracking_buffer as tb

    monkeypatch.setattr(tb, "_next_counter", 2**32 - 3)
    ids = new_event_ids(5) + new_event_ids(2)
    assert [i[15:] for i in ids] == [f"{c & 0xFFFFFFFF:08x}" for c in range(2**32 - 3, 2**32 + 4)]
    assert new_event_ids(0) == []


def test_event_ids_grow_with_time_so_the_primary_key_grows_at_its_edge() -> None:
    before = new_event_ids(3)
    time.sleep(0.002)
    after = new_event_ids(3)
    assert max(before) < min(after)  # the millisecond prefix moved on
    assert int(after[0][3:15], 16) == pytest.approx(time.time() * 1000, abs=5_000)


def test_a_batch_takes_ids_once_and_says_when_it_is_a_retry() -> None:
    row = hit_row("s_1", "ab" * 12, "click", "book", 1.5, None, "ua", "GET", {"accept": ""})
    payload, retry = batch_payload([row])
    assert not retry and row[0] is not None
    again, retry = batch_payload([row])
    assert retry and again == payload  # same ids: ON CONFLICT keeps it from doubling
    assert orjson.loads(payload)[0][1:] == [
        "s_1",
        "ab" * 12,
        "click",
        "book",
        1.5,
        None,
        "ua",
        "GET",
        {"accept": ""},
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_continue_its_parents_id_sequence() -> None:
    """A server that imports the app and then forks its workers must not start every
    child on the same counter: their ids would collide in every shared millisecond."""
    new_event_ids(1)  # the parent's counter is in use before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id's counter and leave at once
        try:
            os.write(write, new_event_ids(1)[0][15:].encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = b""
        while chunk := os.read(read, 64):
            child += chunk
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = new_event_ids(1)[0][15:]
    assert len(child) == 8
    assert child.decode() != parent  # equal by chance once in 2**32
