"""Bulk enrolment: 10,000 contacts in one POST /v1/journeys/{key}/enrollments call."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.dialects.postgresql import insert
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Contact, Segment, SegmentMembership, new_id
from tests.integration.entry_support import definition, published, tag

N = 10_000


async def _contacts(db: Database, n: int) -> list[str]:
    ids = [new_id("c") for _ in range(n)]
    async with db.session() as s:
        for i in range(0, n, 2000):
            chunk = ids[i : i + 2000]
            await s.exec(  # type: ignore[call-overload]
                insert(Contact).values(
                    [{"id": c, "external_id": f"bulk-{c}", "timezone": "UTC", "attributes": {}}
                     for c in chunk]
                )
            )
        await s.commit()
    return ids


@pytest_asyncio.fixture
async def idle_api(
    settings: Settings, db: Database, temporal: Client, admin_key: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The API on a task queue no worker polls: the runs start but do not execute, so the
    call's own cost is measured and the session's worker is not flooded."""
    from api.main import create_app

    idle = settings.model_copy(update={"temporal_task_queue": f"idle-{uuid.uuid4().hex[:8]}"})
    app = create_app(idle, db=db, temporal=temporal)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=120,
    ) as c:
        yield c


@pytest.mark.slow
async def test_ten_thousand_contacts_in_one_call(
    idle_api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    ids = await _contacts(db, N)
    key = await published(idle_api, definition(f"bulk-{tag()}"))
    body = {"contact_ids": ids + ids[:10] + ["c_unknown"]}
    began = time.perf_counter()
    r = await idle_api.post(f"/v1/journeys/{key}/enrollments", json=body)
    took = time.perf_counter() - began
    assert r.status_code == 200, r.text
    assert r.json() == {
        "enrolled": N,
        "skipped": 11,
        "skipped_by_reason": {"duplicate": 10, "unknown_contact": 1},
    }
    print(f"\nenrolled {N} contacts in one call: {took:.1f} s ({N / took:.0f}/s)")
    count = await temporal.count_workflows(f"JourneyKey = '{key}'")
    assert count.count == N

    # A second call: all running, nothing started twice; the reentry check is a query.
    began = time.perf_counter()
    r = await idle_api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": ids})
    assert r.json()["skipped_by_reason"] == {"already_running": N}
    assert time.perf_counter() - began < took


async def test_enrol_a_segment(
    api: httpx.AsyncClient, db: Database
) -> None:
    ids = await _contacts(db, 50)
    seg = f"bulkseg-{tag()}"
    async with db.session() as s:
        s.add(Segment(key=seg, name="t"))
        await s.flush()
        for c in ids:
            s.add(SegmentMembership(segment_key=seg, contact_id=c))
        await s.commit()
    key = await published(api, definition(f"bs-{tag()}", hold=False))
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"segment": seg})
    assert r.json() == {"enrolled": 50, "skipped": 0, "skipped_by_reason": {}}
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"segment": "no-such"})
    assert r.status_code == 404
