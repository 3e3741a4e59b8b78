"""Helpers shared by the contacts/segments tests (not fixtures: plain functions)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import text
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from services.context import ServiceContext


def tag() -> str:
    return uuid.uuid4().hex[:10]


@asynccontextmanager
async def service_ctx(
    db: Database, settings: Settings, temporal: Client | None = None
) -> AsyncIterator[ServiceContext]:
    async with db.session() as s:
        yield ServiceContext(s, settings, temporal)


async def make_contact(api: httpx.AsyncClient, external_id: str, **fields: Any) -> str:
    r = await api.post("/v1/contacts", json={"external_id": external_id, **fields})
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


async def members(api: httpx.AsyncClient, key: str) -> set[str]:
    out: set[str] = set()
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        r = await api.get(f"/v1/segments/{key}/members", params=params)
        assert r.status_code == 200, r.text
        out |= {m["contact_id"] for m in r.json()["members"]}
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out


async def segment_events(db: Database, key: str) -> list[tuple[str, str]]:
    """(event name, contact id) of the segment_entry / segment_exit events of segment key,
    oldest first."""
    async with db.session() as s:
        rows = await s.exec(  # type: ignore[call-overload]
            text(
                "SELECT name, contact_id FROM event WHERE name IN ('segment_entry', "
                "'segment_exit') AND properties ->> 'segment' = :k ORDER BY received_at, id"
            ).bindparams(k=key)
        )
        return [(n, c) for n, c in rows.all()]
