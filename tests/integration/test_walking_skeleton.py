"""The walking skeleton end to end over HTTP against real PostgreSQL, Temporal and SMTP."""

from __future__ import annotations

import uuid

import httpx
from sqlmodel import select
from temporalio.client import Client

from core.db import Database
from core.models import OutboxMessage
from tests.helpers import eventually


async def test_contact_template_journey_two_emails(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    tag = uuid.uuid4().hex[:8]
    r = await api.post(
        "/v1/contacts",
        json={"external_id": f"mrn-{tag}", "email": f"pat-{tag}@example.com", "timezone": "America/New_York"},
    )
    assert r.status_code == 201, r.text
    contact_id = r.json()["id"]
    assert contact_id.startswith("c_") and tag not in contact_id
    # A send needs a grant for the journey's category (SPEC section 7).
    r = await api.put(
        f"/v1/contacts/{contact_id}/consents/care_reminders",
        json={"granted": True, "source": "intake-form"},
    )
    assert r.status_code == 200, r.text

    for n in (1, 2):
        r = await api.post(
            "/v1/templates",
            json={
                "key": f"skel-{tag}-{n}",
                "subject": f"Hello {n}" + " {{ contact.attributes.get('first', 'there') }}",
                "html": "<p>Hi {{ contact.external_id }}</p>",
                "track": {"opens": False, "clicks": False},
            },
        )
        assert r.status_code == 201, r.text

    key = f"skel-{tag}"
    definition = {
        "key": key,
        "name": "Skeleton",
        "category": "care_reminders",
        "trigger": {"type": "manual"},
        "start": "first",
        "steps": {
            "first": {"type": "send_email", "template": f"skel-{tag}-1", "next": "pause"},
            "pause": {"type": "wait", "duration": "PT2S", "next": "second"},
            "second": {"type": "send_email", "template": f"skel-{tag}-2", "next": "done"},
            "done": {"type": "exit"},
        },
    }
    r = await api.post("/v1/journeys", json=definition)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "draft"
    r = await api.post(f"/v1/journeys/{key}/publish")
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1

    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [contact_id]})
    assert r.status_code == 200, r.text
    assert r.json()["enrolled"] == 1

    async def at_pause() -> bool:
        r = await api.get(f"/v1/journeys/{key}/runs/{contact_id}")
        return r.status_code == 200 and r.json()["step"] == "pause"

    await eventually(at_pause, timeout=30)

    async def two_messages() -> list[OutboxMessage]:
        async with db.session() as s:
            rows = (
                await s.exec(select(OutboxMessage))
            ).all()
        mine = [m for m in rows if f"pat-{tag}@example.com" in m.rcpt_to]
        return mine if len(mine) == 2 else []

    msgs = await eventually(two_messages, timeout=40)
    assert sorted(m.subject for m in msgs) == ["Hello 1 there", "Hello 2 there"]

    async def completed() -> dict[str, object] | None:
        r = await api.get(f"/v1/journeys/{key}/runs/{contact_id}")
        body = r.json()
        return body if body["status"] == "completed" else None

    run = await eventually(completed)
    assert run is not None
    assert run["visits"] == {"first": 1, "pause": 1, "second": 1, "done": 1}
    assert [h["step"] for h in run["history"] if h["action"] == "entered"] == ["first", "pause", "second", "done"]  # type: ignore[index,union-attr,attr-defined]

    # Operators find the run in Temporal by its search attributes.
    async def listed() -> int:
        return (await temporal.count_workflows(f"JourneyKey = '{key}' AND ContactId = '{contact_id}'")).count

    assert await eventually(listed) == 1


async def test_v1_needs_a_valid_key(app_client: httpx.AsyncClient) -> None:
    saved = app_client.headers.pop("Authorization", None)
    try:
        r = await app_client.get("/v1/journeys/anything")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        r = await app_client.get("/v1/journeys/anything", headers={"Authorization": "Bearer jk_nope"})
        assert r.status_code == 401
    finally:
        if saved:
            app_client.headers["Authorization"] = saved
