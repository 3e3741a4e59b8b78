"""The background judge against the real database: verdicts, revisions, shared queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
from fastapi import FastAPI
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import TrackingEvent
from services.tracking_judge import SIGNAL_NO_RUN
from tests.helpers import eventually
from tests.integration.tracking_support import (
    CHROME,
    HOME_IP,
    HUMAN_HEADERS,
    MPP_IP,
    SCANNER_IP,
    app_with_judge,
    events_of,
    judged,
    make_message,
)

LINKS = {
    "book": "https://portal.example.org/book",
    "portal": "https://portal.example.org/",
    "call": "https://portal.example.org/call",
}


@pytest_asyncio.fixture(scope="module")
async def client(
    settings: Settings, db: Database, temporal: Client
) -> AsyncIterator[httpx.AsyncClient]:
    pair: tuple[FastAPI, httpx.AsyncClient]
    async for pair in app_with_judge(settings, db, temporal):
        yield pair[1]


async def test_mpp_open_scanner_click_and_human_click(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await make_message(db, settings, LINKS)
    await client.get(msg.pixel, headers={"user-agent": "Mozilla/5.0", "x-forwarded-for": MPP_IP})
    await client.get(
        msg.click("portal"),
        headers={
            "user-agent": CHROME,
            "accept": HUMAN_HEADERS["accept"],
            "x-forwarded-for": SCANNER_IP,
        },
    )
    await client.get(msg.click("book"), headers={**HUMAN_HEADERS, "x-forwarded-for": HOME_IP})
    rows = await eventually(lambda: judged(db, msg.send_id, 3), timeout=10)
    got = [(e.kind, e.link, e.verdict, e.reason) for e in rows]
    assert got == [
        ("open", None, "automated", "apple_mpp"),
        ("click", "portal", "automated", "link_scanner"),
        ("click", "book", "human", "browser"),
    ]
    for e in rows:
        assert e.confidence is not None and 0.5 <= e.confidence <= 1.0
        assert (e.first_verdict, e.first_reason) == (e.verdict, e.reason)
        assert e.judged_at is not None and e.revised_at is None
    # The human click has no run behind this test send: recorded as such, not signalled.
    human = await eventually(lambda: _signal_result(db, msg.send_id, "book"), timeout=10)
    assert human is not None
    assert (human.signal_result, human.signalled) == (SIGNAL_NO_RUN, False)
    assert all(e.signal_result is None for e in rows if e.verdict != "human")


async def _signal_result(db: Database, send_id: str, link: str) -> TrackingEvent | None:
    for e in await events_of(db, send_id):
        if e.link == link and e.signal_result is not None:
            return e
    return None


async def test_trap_hit_revises_the_same_clients_earlier_events(
    client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    msg = await make_message(db, settings, LINKS)
    bot = {**HUMAN_HEADERS, "x-forwarded-for": "88.198.202.173"}
    await client.get(msg.pixel, headers=bot)
    await client.get(msg.click("book"), headers=bot)
    await eventually(lambda: judged(db, msg.send_id, 2), timeout=10)
    # Someone else (the patient) opens it from home.
    await client.get(msg.pixel, headers={**HUMAN_HEADERS, "x-forwarded-for": HOME_IP})
    await client.get(msg.trap, headers=bot)

    async def revised() -> list[TrackingEvent]:
        rows = await judged(db, msg.send_id, 4)
        return rows if sum(r.revised_at is not None for r in rows) == 2 else []

    rows = await eventually(revised, timeout=10)
    by_ip = [
        (r.ip, r.link, r.verdict, r.reason, r.first_verdict, r.revised_at is not None) for r in rows
    ]
    assert by_ip == [
        ("88.198.202.173", None, "automated", "trap_link", "human", True),
        ("88.198.202.173", "book", "automated", "trap_link", "human", True),
        (HOME_IP, None, "human", "browser", "human", False),
        ("88.198.202.173", "__trap__", "automated", "trap_link", "automated", False),
    ]
