"""End to end through the real stack: a journey sends, then waits for engagement.

What the tracking work owns is asserted on the run's Temporal history: an Apple MPP open
and a link-scanner click are stored as automated and send no `engagement` signal; a
human click reaches the run as an `engagement` signal within a second; a later trap-link
hit revises that click (recorded) without a second signal.

Where the interpreter handles `wait_for_engagement` the journey waits in that step and
the test also checks the run stays put for the machines and moves on for the person.
Without it (the interpreter lands on another branch) an unknown step type would fail
the workflow task over and over, so the journey waits in a plain `wait` instead: the
signal reaching the run is the same either way.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from sqlmodel import select
from temporalio.client import Client
from temporalio.worker import Worker

from core.config import Settings
from core.db import Database
from core.models import Consent, Run, Send, TrackingEvent
from services.tracking_judge import SIGNAL_SENT
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

BOOK = "https://portal.example.org/book"


def _interpreter_waits_for_engagement() -> bool:
    import workflows

    return any(
        "wait_for_engagement" in path.read_text(encoding="utf-8")
        for path in Path(workflows.__file__).parent.rglob("*.py")
    )


WAITS_FOR_ENGAGEMENT = _interpreter_waits_for_engagement()


@pytest_asyncio.fixture(scope="module")
async def stack(
    settings: Settings, db: Database, temporal: Client, worker: Worker, admin_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    async for _, client in app_with_judge(settings, db, temporal):
        client.headers["Authorization"] = f"Bearer {admin_key}"
        yield client


async def _engagement_signals(temporal: Client, workflow_id: str) -> list[Any]:
    history = await temporal.get_workflow_handle(workflow_id).fetch_history()
    return [
        e.workflow_execution_signaled_event_attributes
        for e in history.events
        if e.HasField("workflow_execution_signaled_event_attributes")
        and e.workflow_execution_signaled_event_attributes.signal_name == "engagement"
    ]


async def _state(temporal: Client, workflow_id: str) -> dict[str, Any]:
    state: dict[str, Any] = await temporal.get_workflow_handle(workflow_id).query("state")
    return state


async def _start_journey(api: httpx.AsyncClient, db: Database, tag: str) -> tuple[str, str, Send]:
    r = await api.post(
        "/v1/contacts",
        json={"external_id": f"mrn-{tag}", "email": f"pat-{tag}@example.com"},
    )
    assert r.status_code in (200, 201), r.text
    contact_id = r.json()["id"]
    async with db.session() as s:
        s.add(
            Consent(contact_id=contact_id, category="care_reminders", granted=True, source="test")
        )
        await s.commit()
    r = await api.post(
        "/v1/templates",
        json={
            "key": f"trk-{tag}",
            "subject": "Your visit",
            "html": "<p>Book a follow-up: <a href=\"{{ link('book', '"
            + BOOK
            + "') }}\">book</a></p>",
        },
    )
    assert r.status_code == 201, r.text
    key = f"trk-{tag}"
    definition = {
        "key": key,
        "name": "Tracking e2e",
        "category": "care_reminders",
        "trigger": {"type": "manual"},
        "start": "hello",
        "steps": {
            "hello": {"type": "send_email", "template": f"trk-{tag}", "next": "engaged?"},
            "engaged?": {
                "type": "wait_for_engagement",
                "send_step": "hello",
                "event": "click",
                "link": "book",
                "timeout": "PT10M",
                "yes": "clicked",
                "no": "missed",
            },
            "clicked": {"type": "exit"},
            "missed": {"type": "exit"},
        },
    }
    if not WAITS_FOR_ENGAGEMENT:
        definition["steps"]["engaged?"] = {"type": "wait", "duration": "PT10M", "next": "missed"}  # type: ignore[index]
        del definition["steps"]["clicked"]  # type: ignore[attr-defined]
    r = await api.post("/v1/journeys", json=definition)
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/journeys/{key}/publish")
    assert r.status_code == 200, r.text
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [contact_id]})
    assert r.status_code == 200 and r.json()["enrolled"] == 1, r.text

    async def sent() -> Send | None:
        async with db.session() as s:
            q = select(Send).where(Send.journey_key == key).where(Send.status == "sent")
            return (await s.exec(q)).first()

    send = await eventually(sent, timeout=20)
    assert send is not None
    return key, str(contact_id), send


async def test_only_the_human_click_signals_the_run(
    stack: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    tag = uuid.uuid4().hex[:8]
    key, contact_id, send = await _start_journey(stack, db, tag)
    async with db.session() as s:
        run = await s.get(Run, send.run_id)
    assert run is not None and run.status == "running"
    workflow_id = run.workflow_id

    # The message's links, as the send activity stores them (the sending work embeds them
    # in the mail); the message went out a minute ago.
    msg = await make_message(
        db, settings, {"book": BOOK}, send_id=send.id, sent_ago=timedelta(minutes=1)
    )

    # Apple Mail Privacy Protection fetches the pixel; a Safe Links scanner follows the link.
    r = await stack.get(msg.pixel, headers={"user-agent": "Mozilla/5.0", "x-forwarded-for": MPP_IP})
    assert r.status_code == 200
    r = await stack.get(
        msg.click("book"),
        headers={
            "user-agent": CHROME,
            "accept": HUMAN_HEADERS["accept"],
            "x-forwarded-for": SCANNER_IP,
        },
    )
    assert (r.status_code, r.headers["location"]) == (302, BOOK)
    rows = await eventually(lambda: judged(db, send.id, 2), timeout=10)
    assert [(e.verdict, e.reason) for e in rows] == [
        ("automated", "apple_mpp"),
        ("automated", "link_scanner"),
    ]
    assert await _engagement_signals(temporal, workflow_id) == []
    if WAITS_FOR_ENGAGEMENT:
        assert (await _state(temporal, workflow_id))["step"] == "engaged?"

    # The patient taps the link at home.
    started = time.monotonic()
    r = await stack.get(msg.click("book"), headers={**HUMAN_HEADERS, "x-forwarded-for": HOME_IP})
    assert (r.status_code, r.headers["location"]) == (302, BOOK)

    async def signalled() -> list[Any]:
        return await _engagement_signals(temporal, workflow_id)

    signals = await eventually(signalled, timeout=5, interval=0.02)
    elapsed = time.monotonic() - started
    print(f"engagement signal in history after {elapsed * 1000:.0f} ms")
    assert elapsed < 1.0, f"engagement signal took {elapsed:.2f}s"
    assert len(signals) == 1
    if WAITS_FOR_ENGAGEMENT:

        async def moved_on() -> bool:
            state = await _state(temporal, workflow_id)
            return state["step"] != "engaged?" or state["status"] != "running"

        await eventually(moved_on, timeout=5, interval=0.02)
        elapsed = time.monotonic() - started
        print(f"the run left wait_for_engagement {elapsed * 1000:.0f} ms after the click")
        assert elapsed < 1.0, f"the run moved on after {elapsed:.2f}s"
        assert "clicked" in (await _state(temporal, workflow_id))["visits"]
    human = [e for e in await events_of(db, send.id) if e.verdict == "human"]
    assert len(human) == 1 and human[0].reason == "browser"

    async def marked() -> bool:
        rows = await events_of(db, send.id)
        return any(e.signalled and e.signal_result == SIGNAL_SENT for e in rows)

    await eventually(marked, timeout=5)

    # A trap hit from that same address later: the click is revised to automated and the
    # revision is stored, but a signal cannot be taken back and none is sent again.
    r = await stack.get(msg.trap, headers={**HUMAN_HEADERS, "x-forwarded-for": HOME_IP})
    assert r.status_code == 404
    rows = await eventually(lambda: judged(db, send.id, 4), timeout=10)

    async def revised() -> list[TrackingEvent]:
        rows = await events_of(db, send.id)
        return [e for e in rows if e.id == human[0].id and e.revised_at is not None]

    [click] = await eventually(revised, timeout=10)
    assert (click.verdict, click.reason, click.first_verdict) == ("automated", "trap_link", "human")
    assert click.signalled and click.signal_result == SIGNAL_SENT
    assert len(await _engagement_signals(temporal, workflow_id)) == 1
