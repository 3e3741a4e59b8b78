"""Sending from real journey runs: every outgoing message passes the header check (and
DKIM verification when signed), and blocked or failed sends let the run go on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import col, select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import JourneyVersion, OutboxMessage, Send
from devstack.smtp_sink import SmtpSink
from mail import dkim
from mail.headers_check import check_marketing_headers
from services.enrollment import start_run
from tests.helpers import eventually
from tests.integration.sending_support import sending_settings, tag
from worker import build_worker

CAT = "care_reminders"


async def _publish(
    api: httpx.AsyncClient, steps: dict[str, Any], templates: list[dict[str, Any]]
) -> str:
    for t in templates:
        r = await api.post("/v1/templates", json=t)
        assert r.status_code == 201, r.text
    key = f"send-{tag()}"
    definition = {
        "key": key,
        "name": "Screening reminder",
        "category": CAT,
        "trigger": {"type": "manual"},
        "start": "first",
        "steps": steps,
    }
    r = await api.post("/v1/journeys", json=definition)
    assert r.status_code == 201, r.text
    assert (await api.post(f"/v1/journeys/{key}/publish")).status_code == 200
    return key


async def _contact(api: httpx.AsyncClient, grant: bool) -> tuple[str, str]:
    t = tag()
    email = f"pat-{t}@example.com"
    r = await api.post(
        "/v1/contacts",
        json={"external_id": f"mrn-{t}", "email": email, "attributes": {"first": "Sam"}},
    )
    cid = r.json()["id"]
    if grant:
        r = await api.put(
            f"/v1/contacts/{cid}/consents/{CAT}", json={"granted": True, "source": "t"}
        )
        assert r.status_code == 200
    return cid, email


async def _sends(db: Database, key: str) -> list[Send]:
    async with db.session() as s:
        return list(
            (
                await s.exec(select(Send).where(Send.journey_key == key).order_by(col(Send.step)))
            ).all()
        )


@pytest_asyncio.fixture
async def dkim_stack(
    temporal: Client, db: Database, settings: Settings, sink: SmtpSink, workdir: Path
) -> AsyncIterator[tuple[Settings, bytes]]:
    """A worker that signs with a test DKIM key, on its own task queue."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = workdir / f"dkim-{tag()}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signed = sending_settings(
        settings,
        dkim_selector="t2026",
        dkim_domain="example.org",
        dkim_private_key_path=path,
        temporal_task_queue=f"dkim-{tag()}",
    )
    w = build_worker(temporal, db, signed)
    task = asyncio.create_task(w.run())
    yield signed, public
    await w.shutdown()
    await asyncio.gather(task, return_exceptions=True)


async def test_every_message_of_a_real_run_passes_the_header_check(
    api: httpx.AsyncClient, db: Database, temporal: Client, dkim_stack: tuple[Settings, bytes]
) -> None:
    signed, public = dkim_stack
    t = tag()
    key = await _publish(
        api,
        {
            "first": {"type": "send_email", "template": f"h1-{t}", "next": "second"},
            "second": {"type": "send_email", "template": f"h2-{t}", "next": "done"},
            "done": {"type": "exit"},
        },
        [
            {
                "key": f"h1-{t}",
                "subject": "Time for your screening, {{ contact.attributes.first }}",
                "html": "<html><body><p>Book now: "
                "<a href=\"{{ link('book', 'https://clinic.example/book') }}\">book</a></p>"
                "</body></html>",
            },
            {
                "key": f"h2-{t}",
                "subject": "A reminder — ünïcödé subject",
                "html": "<p>Hello</p>",
                "text": "Hello {{ contact.attributes.first }}",
                "track": {"opens": False, "clicks": False},
            },
        ],
    )
    async with db.session() as s:
        version = await s.get(JourneyVersion, (key, 1))
    assert version is not None
    contacts = [await _contact(api, grant=True) for _ in range(3)]
    for cid, _ in contacts:
        assert await start_run(temporal, signed.temporal_task_queue, version, cid)

    async def all_sent() -> list[Send]:
        sends = await _sends(db, key)
        return sends if len(sends) == 6 and all(x.status == "sent" for x in sends) else []

    sends = await eventually(all_sent, timeout=30)
    async with db.session() as s:
        messages = (
            await s.exec(
                select(OutboxMessage).where(
                    col(OutboxMessage.message_id).in_([x.message_id for x in sends])
                )
            )
        ).all()
    assert len(messages) == 6
    for msg in messages:
        assert check_marketing_headers(msg.raw, require_dkim=True) == [], msg.subject
        assert dkim.verify(msg.raw, public), msg.subject


async def test_blocked_and_failed_sends_are_recorded_and_the_run_goes_on(
    api: httpx.AsyncClient, db: Database
) -> None:
    t = tag()
    key = await _publish(
        api,
        {
            "first": {"type": "send_email", "template": f"b1-{t}", "next": "second"},
            "second": {"type": "send_email", "template": f"b2-{t}", "next": "done"},
            "done": {"type": "exit"},
        },
        [
            {
                "key": f"b1-{t}",
                "subject": "One",
                "html": "<p>{{ contact.attributes.plan.name }}</p>",
            },
            {"key": f"b2-{t}", "subject": "Two", "html": "<p>Hi</p>"},
        ],
    )
    no_grant, no_grant_email = await _contact(api, grant=False)
    granted, granted_email = await _contact(api, grant=True)
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [no_grant, granted]})
    assert r.json()["enrolled"] == 2

    async def done(cid: str) -> dict[str, Any] | None:
        body: dict[str, Any] = (await api.get(f"/v1/journeys/{key}/runs/{cid}")).json()
        return body if body.get("status") == "completed" else None

    for cid in (no_grant, granted):
        run = await eventually(lambda c=cid: done(c), timeout=20)  # type: ignore[misc]
        assert run is not None and run["visits"] == {"first": 1, "second": 1, "done": 1}

    by = {(x.contact_id, x.step): x for x in await _sends(db, key)}
    assert (by[no_grant, "first"].status, by[no_grant, "first"].detail) == ("blocked", "no_consent")
    assert (by[no_grant, "second"].status, by[no_grant, "second"].detail) == (
        "blocked",
        "no_consent",
    )
    failed = by[granted, "first"]
    assert failed.status == "failed" and f"b1-{t}" in (failed.detail or "")
    assert "html part, line 1" in (failed.detail or "")
    assert by[granted, "second"].status == "sent"
    async with db.session() as s:
        rows = (await s.exec(select(OutboxMessage))).all()
    assert [m.subject for m in rows if granted_email in m.rcpt_to] == ["Two"]
    assert [m for m in rows if no_grant_email in m.rcpt_to] == []
