"""Setting up a contact walking a small journey for the security tests."""

from __future__ import annotations

from typing import Any

import httpx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload

from core.db import Database
from core.models import Consent

CATEGORY = "care_reminders"


async def grant_consent(db: Database, contact_id: str, category: str = CATEGORY) -> None:
    # Straight into the table: the consents route is another branch's, the table is shared.
    async with db.session() as s:
        s.add(Consent(contact_id=contact_id, category=category, granted=True, source="test"))
        await s.commit()


async def send_wait_send_journey(
    api: httpx.AsyncClient,
    key: str,
    wait: str,
    *,
    subject: str = "Hello",
    html: str | None = None,
    category: str = CATEGORY,
) -> None:
    """Journey `key`: send (template `{key}-1`), wait `wait`, send (`{key}-2`), exit;
    published. Steps first, pause, second, done."""
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
        "name": "Send, wait, send",
        "category": category,
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


def _is_repeated(fd: FieldDescriptor) -> bool:
    flag = getattr(fd, "is_repeated", None)  # newer protobuf; `label` is deprecated
    if flag is not None:
        return bool(flag)
    return bool(getattr(fd, "label") == FieldDescriptor.LABEL_REPEATED)  # noqa: B009 (stubs lack it)


def payloads_in(message: Message) -> list[Payload]:
    """Every Payload anywhere inside a history proto."""
    found: list[Payload] = []

    def walk(m: Message) -> None:
        if isinstance(m, Payload):
            found.append(m)
            return
        for fd, value in m.ListFields():
            entry = fd.message_type
            if fd.type != FieldDescriptor.TYPE_MESSAGE or entry is None:
                continue
            if entry.GetOptions().map_entry:
                if entry.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                    for v in value.values():
                        walk(v)
            elif _is_repeated(fd):
                for v in value:
                    walk(v)
            else:
                walk(value)

    walk(message)
    return found
