"""Setting up a contact walking a small journey for the security tests."""

from __future__ import annotations

from typing import Any

import httpx

from core.db import Database
from core.models import Consent

CATEGORY = "care_reminders"


async def grant_consent(db: Database, contact_id: str, category: str = CATEGORY) -> None:
    # Straight into the table: the consents route is another branch's, the table is shared.
    async with db.session() as s:
        s.add(Consent(contact_id=contact_id, category=category, granted=True, source="test"))
        await s.commit()


async def send_wait_send_journey(
    api: httpx.AsyncClient, key: str, wait: str, *, subject: str = "Hello", html: str | None = None
) -> None:
    """Journey `key`: send, wait `wait`, send, exit; published."""
    for n in (1, 2):
        r = await api.post(
            "/v1/templates",
            json={
                "key": f"{key}-{n}",
                "subject": f"{subject} {n}",
                "html": html or "<p>Hi</p>",
                "track": {"opens": True, "clicks": True},
            },
        )
        assert r.status_code == 201, r.text
    definition: dict[str, Any] = {
        "key": key,
        "name": "Security test",
        "category": CATEGORY,
        "trigger": {"type": "manual"},
        "start": "first",
        "steps": {
            "first": {"type": "send_email", "template": f"{key}-1", "next": "pause"},
            "pause": {"type": "wait", "duration": wait, "next": "second"},
            "second": {"type": "send_email", "template": f"{key}-2", "next": "done"},
            "done": {"type": "exit"},
        },
    }
    r = await api.post("/v1/journeys", json=definition)
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/journeys/{key}/publish")
    assert r.status_code == 200, r.text


async def enroll(api: httpx.AsyncClient, key: str, contact_id: str) -> None:
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [contact_id]})
    assert r.status_code == 200 and r.json()["enrolled"] == 1, r.text
