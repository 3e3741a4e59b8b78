"""The open pixel and click redirect over HTTP against the real database."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from temporalio.client import Client

from classifier import TRAP_LINK
from core.config import Settings
from core.db import Database
from core.tokens import new_link_id
from services.tracking_links import token_signer
from tests.helpers import eventually
from tests.integration.tracking_support import (
    HOME_IP,
    HUMAN_HEADERS,
    Message,
    app_with_judge,
    events_of,
    judged,
    make_message,
)

DEST = "https://portal.example.org/book?visit=follow-up&utm_source=email"


@pytest_asyncio.fixture(scope="module")
async def tracked(
    settings: Settings, db: Database, temporal: Client
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async for pair in app_with_judge(settings, db, temporal):
        yield pair


@pytest.fixture
def client(tracked: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return tracked[1]


async def _message(db: Database, settings: Settings) -> Message:
    return await make_message(db, settings, {"book": DEST, "portal": "https://portal.example.org/"})


def _gif_size(body: bytes) -> tuple[int, int]:
    assert body[:6] == b"GIF89a"
    assert body[-1:] == b";"
    return struct.unpack("<HH", body[6:10])


async def test_open_pixel_serves_a_gif_and_records_evidence(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    r = await client.get(
        msg.pixel,
        headers={
            "user-agent": HUMAN_HEADERS["user-agent"],
            "accept": "image/avif,image/webp,*/*",
            "cookie": "sid=secret",
            "x-forwarded-for": HOME_IP,
        },
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/gif"
    assert "no-store" in r.headers["cache-control"]
    assert _gif_size(r.content) == (1, 1)
    assert len(r.content) == int(r.headers["content-length"])
    [ev] = await events_of(db, msg.send_id)
    assert (ev.kind, ev.link, ev.method, ev.ip) == ("open", None, "GET", HOME_IP)
    assert ev.user_agent == HUMAN_HEADERS["user-agent"]
    assert ev.headers["accept"] == "image/avif,image/webp,*/*"
    assert "cookie" not in ev.headers


async def test_click_redirects_to_the_stored_destination_only(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    for suffix in ("", "?url=https://evil.example/", "?url=https%3A%2F%2Fevil.example&next=//evil"):
        r = await client.get(msg.click("book") + suffix, headers=HUMAN_HEADERS)
        assert r.status_code == 302
        assert r.headers["location"] == DEST
        assert "no-store" in r.headers["cache-control"]
        assert r.headers["referrer-policy"] == "no-referrer"
    rows = await events_of(db, msg.send_id)
    assert [(e.kind, e.link) for e in rows] == [("click", "book")] * 3


async def test_every_link_goes_to_its_own_destination(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    for name, url in msg.destinations.items():
        r = await client.get(msg.click(name))
        assert (r.status_code, r.headers["location"]) == (302, url)


def _tamper(token: str, at: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    c = token[at]
    return token[:at] + alphabet[(alphabet.index(c) + 1) % 64] + token[at + 1 :]


async def test_bad_tokens_are_404_and_never_redirect(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    click_token = msg.click("book").rsplit("/", 1)[1]
    open_token = msg.pixel.rsplit("/", 1)[1]
    signer = token_signer(settings)
    unknown = signer.make(new_link_id(), int(time.time()) + 3600, "click")
    bad = [
        *(f"/t/c/{_tamper(click_token, i)}" for i in (0, 1, 5, 20, 30, 43)),
        f"/t/c/{unknown}",  # authentic, but no such link
        f"/t/c/{open_token}",  # an open token is not a click token
        f"/t/o/{click_token}",  # and the other way round
        f"/t/o/{_tamper(open_token, 40)}",
        "/t/c/" + "A" * 60_000,  # huge (httpx refuses URLs over 64 KiB)
        "/t/c/" + quote("ÿ" * 44),  # non-ascii of the right length
        "/t/c/" + quote("é✓漢字") + "?url=https://evil.example/",
        "/t/c/",
        "/t/o/%00",
        "/t/c/..%2F..%2Fv1",
        "/t/c/x/",  # no trailing-slash redirect either
        "/t/c/a%2F",
        f"/t/c/{click_token}/",
        f"/t/o/{open_token}/extra",
        "/t/o/.",  # clients normalise these to "/t/o" and "/t/c": no redirect to "/t/o/"
        "/t/c/..",
        "/t/c",
    ]
    for path in bad:
        for method in ("GET", "HEAD"):
            r = await client.request(method, path)
            assert r.status_code == 404, (path[:60], r.status_code)
            assert "location" not in r.headers
    assert await events_of(db, msg.send_id) == []


async def test_head_is_recorded_and_judged_a_head_request(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    r = await client.head(msg.click("book"), headers=HUMAN_HEADERS)
    assert (r.status_code, r.headers["location"]) == (302, DEST)
    r = await client.head(msg.pixel)
    assert r.status_code == 200 and r.content == b""
    rows = await eventually(lambda: judged(db, msg.send_id, 2), timeout=10)
    assert [(e.method, e.verdict, e.reason) for e in rows] == [
        ("HEAD", "automated", "head_request")
    ] * 2


async def test_expired_tokens_still_work_but_are_not_recorded(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    signer = token_signer(settings)
    past = int(time.time()) - 60
    by_kind = {r.kind: r for r in msg.links.rows}
    click_row = next(r for r in msg.links.rows if r.name == "book")
    click = signer.make(bytes.fromhex(click_row.id), past, "click")
    pixel = signer.make(bytes.fromhex(by_kind["open"].id), past, "open")
    trap = signer.make(bytes.fromhex(by_kind["trap"].id), past, "click")
    r = await client.get(f"/t/c/{click}", headers=HUMAN_HEADERS)
    assert (r.status_code, r.headers["location"]) == (302, DEST)
    r = await client.get(f"/t/o/{pixel}")
    assert r.status_code == 200 and r.content[:6] == b"GIF89a"
    r = await client.get(f"/t/c/{trap}")
    assert r.status_code == 404
    await asyncio.sleep(0.2)
    assert await events_of(db, msg.send_id) == []


async def test_trap_link_gives_a_harmless_page_and_is_recorded(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    r = await client.get(msg.trap, headers={"user-agent": "Mozilla/5.0 (compatible; scanner)"})
    assert r.status_code == 404
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    rows = await eventually(lambda: judged(db, msg.send_id, 1), timeout=10)
    assert [(e.kind, e.link, e.verdict, e.reason) for e in rows] == [
        ("click", TRAP_LINK, "automated", "trap_link")
    ]


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    settings: Settings, db: Database, temporal: Client, client: httpx.AsyncClient
) -> None:
    msg = await _message(db, settings)
    await client.get(msg.pixel, headers={"x-forwarded-for": f"6.6.6.6, {HOME_IP}"})
    async for _, outsider in app_with_judge(settings, db, temporal, peer="198.51.100.7"):
        await outsider.get(msg.pixel, headers={"x-forwarded-for": HOME_IP})
    rows = await events_of(db, msg.send_id)
    assert [(e.ip, e.headers.get("x-forwarded-for-hops")) for e in rows] == [
        (HOME_IP, "2"),
        ("198.51.100.7", "1"),
    ]


async def test_other_methods_are_refused(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await _message(db, settings)
    r = await client.post(msg.click("book"))
    assert r.status_code == 405
    assert await events_of(db, msg.send_id) == []


@pytest_asyncio.fixture(scope="module")
async def fuzz_target(
    tracked: tuple[FastAPI, httpx.AsyncClient], db: Database, settings: Settings
) -> tuple[httpx.AsyncClient, Message, asyncio.AbstractEventLoop]:
    msg = await _message(db, settings)
    return tracked[1], msg, asyncio.get_running_loop()


_token_chars = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=120
)


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    token=st.one_of(
        _token_chars,
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
            min_size=44,
            max_size=44,
        ),
    ),
    query=st.dictionaries(
        st.sampled_from(["url", "u", "next", "redirect", "to"]), st.text(max_size=40), max_size=3
    ),
    route=st.sampled_from(["/t/c/", "/t/o/"]),
    method=st.sampled_from(["GET", "HEAD"]),
    xff=st.text(max_size=60),
)
def test_fuzzed_tokens_never_500_and_never_redirect_elsewhere(
    fuzz_target: tuple[httpx.AsyncClient, Message, asyncio.AbstractEventLoop],
    token: str,
    query: dict[str, str],
    route: str,
    method: str,
    xff: str,
) -> None:
    client, msg, loop = fuzz_target
    # Between tests the session loop is idle, so this sync property test can drive it.
    path = route + quote(token, safe="")
    headers = {"x-forwarded-for": xff.encode("ascii", "ignore").decode()}
    r = loop.run_until_complete(client.request(method, path, params=query, headers=headers))
    assert r.status_code < 500
    assert r.status_code in (200, 302, 404), r.status_code
    if r.status_code == 302:
        assert r.headers["location"] in msg.destinations.values()
    # And a real token with the same junk appended still goes only where it should.
    real = msg.click("book")
    r = loop.run_until_complete(client.request(method, real, params=query, headers=headers))
    assert (r.status_code, r.headers.get("location")) == (302, msg.destinations["book"])
