"""Helpers for the interpreter tests: build contacts, templates and journeys through the API,
deliver events and engagements to runs, and read what runs recorded."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import httpx
from sqlmodel import col, select
from temporalio.client import Client

from core.db import Database
from core.models import Consent, Event, Run, StepLog, TrackingEvent, new_id
from tests.helpers import eventually
from workflows.journey import workflow_id
from workflows.types import EngagementSignal, EventSignal

CATEGORY = "care_reminders"
T = TypeVar("T")


async def until(probe: Callable[[], Awaitable[T | None]], timeout: float = 20) -> T:  # noqa: ASYNC109
    """eventually() for probes that return None until the thing exists."""
    return cast(T, await eventually(probe, timeout=timeout))


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def make_contact(
    api: httpx.AsyncClient,
    db: Database,
    *,
    timezone: str = "America/New_York",
    attributes: dict[str, Any] | None = None,
) -> str:
    t = tag()
    r = await api.post(
        "/v1/contacts",
        json={
            "external_id": f"mrn-{t}",
            "email": f"pat-{t}@example.com",
            "timezone": timezone,
            "attributes": attributes or {},
        },
    )
    assert r.status_code == 201, r.text
    cid: str = r.json()["id"]
    await grant_consent(db, cid)
    return cid


async def grant_consent(db: Database, contact_id: str, category: str = CATEGORY) -> None:
    """Consent written directly (the consent API belongs to another area of work)."""
    async with db.session() as s:
        s.add(Consent(contact_id=contact_id, category=category, granted=True, source="test"))
        await s.commit()


async def make_template(api: httpx.AsyncClient, html: str | None = None) -> str:
    key = f"tpl-{tag()}"
    r = await api.post(
        "/v1/templates",
        json={
            "key": key,
            "subject": f"Subject {key}",
            "html": html or "<p>Hello {{ contact.external_id }}</p>",
            "track": {"opens": False, "clicks": False},
        },
    )
    assert r.status_code == 201, r.text
    return key


def journey(steps: dict[str, Any], start: str, **extra: Any) -> dict[str, Any]:
    key = f"j-{tag()}"
    return {
        "key": key,
        "name": f"Journey {key}",
        "category": CATEGORY,
        "trigger": {"type": "manual"},
        "reentry": {"mode": "always"},
        "start": start,
        "steps": steps,
        **extra,
    }


async def publish(api: httpx.AsyncClient, definition: dict[str, Any]) -> str:
    r = await api.post("/v1/journeys", json=definition)
    assert r.status_code == 201, r.text
    key: str = definition["key"]
    r = await api.post(f"/v1/journeys/{key}/publish")
    assert r.status_code == 200, r.text
    return key


async def enroll(api: httpx.AsyncClient, key: str, *contact_ids: str) -> None:
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": list(contact_ids)})
    assert r.status_code == 200, r.text
    assert r.json()["enrolled"] == len(contact_ids), r.text


async def start(api: httpx.AsyncClient, definition: dict[str, Any], *contact_ids: str) -> str:
    key = await publish(api, definition)
    await enroll(api, key, *contact_ids)
    return key


async def run_of(api: httpx.AsyncClient, key: str, contact_id: str) -> dict[str, Any]:
    r = await api.get(f"/v1/journeys/{key}/runs/{contact_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def finished(
    api: httpx.AsyncClient, key: str, contact_id: str, timeout: float = 20  # noqa: ASYNC109
) -> dict[str, Any]:
    """The run once it has ended and its database row (with the whole trail) says so; the
    live query may report the end a moment before the final records are written."""

    async def probe() -> dict[str, Any] | None:
        r = await api.get(f"/v1/journeys/{key}/runs/{contact_id}")
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        ended = body["status"] in ("completed", "exited") and body["ended_at"] is not None
        return body if ended else None

    return await until(probe, timeout=timeout)


async def waiting(
    temporal: Client, key: str, contact_id: str, kind: str, step: str | None = None
) -> dict[str, Any]:
    """The run's live state once it waits for `kind` (in `step` if given)."""
    handle = temporal.get_workflow_handle(workflow_id(key, contact_id))

    async def probe() -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = await handle.query("state")
        except Exception:
            return None
        w = state.get("waiting_for") or {}
        if w.get("kind") == kind and (step is None or state["step"] == step):
            return state
        return None

    return await until(probe)


def entered(run: dict[str, Any]) -> list[str]:
    return [h["step"] for h in run["history"] if h["action"] == "entered"]


async def deliver_event(
    db: Database,
    temporal: Client,
    key: str,
    contact_id: str,
    name: str,
    properties: dict[str, Any] | None = None,
    *,
    occurred_at: datetime | None = None,
    signal: bool = True,
) -> str:
    """Store an event as POST /v1/events does and signal it to the run."""
    at = occurred_at or datetime.now(UTC)
    ev = Event(
        id=new_id("ev"), contact_id=contact_id, name=name, properties=properties or {},
        occurred_at=at,
    )
    async with db.session() as s:
        s.add(ev)
        await s.commit()
    if signal:
        handle = temporal.get_workflow_handle(workflow_id(key, contact_id))
        await handle.signal("event", EventSignal(ev.id, name, at))
    return ev.id


async def human_engagement(
    db: Database,
    temporal: Client | None,
    key: str,
    contact_id: str,
    send_id: str,
    step: str,
    kind: str,
    link: str | None = None,
    verdict: str = "human",
) -> str:
    """A judged tracking event; signalled to the run (as tracking does) when temporal is given."""
    te_id = new_id("te")
    async with db.session() as s:
        s.add(TrackingEvent(id=te_id, send_id=send_id, kind=kind, link=link, verdict=verdict,
                            reason="test"))
        await s.commit()
    if temporal is not None:
        handle = temporal.get_workflow_handle(workflow_id(key, contact_id))
        await handle.signal(
            "engagement",
            EngagementSignal(te_id, send_id, step, kind, link, datetime.now(UTC)),
        )
    return te_id


async def run_row(db: Database, key: str, contact_id: str) -> Run:
    async with db.session() as s:
        row = (
            await s.exec(
                select(Run)
                .where(Run.journey_key == key, Run.contact_id == contact_id)
                .order_by(col(Run.started_at).desc())
            )
        ).first()
    assert row is not None
    return row


async def step_log(db: Database, run_id: str) -> list[StepLog]:
    async with db.session() as s:
        q = select(StepLog).where(StepLog.run_id == run_id).order_by(col(StepLog.seq))
        return list((await s.exec(q)).all())
