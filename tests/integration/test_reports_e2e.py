"""A real run through the stack (Temporal worker, SMTP sink, PostgreSQL) lands in the report."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from core.db import Database
from tests.helpers import eventually
from tests.integration.report_scenario import Scenario
from tests.security_helpers import send_wait_send_journey

pytestmark = pytest.mark.xdist_group("reports")


async def test_real_runs_send_wait_send_then_engagement(
    api: httpx.AsyncClient, db: Database
) -> None:
    tag = uuid.uuid4().hex[:8]
    contacts = []
    for n in range(3):
        r = await api.post(
            "/v1/contacts",
            json={"external_id": f"rpt-e2e-{tag}-{n}", "email": f"rpt-{tag}-{n}@example.com"},
        )
        assert r.status_code == 201, r.text
        contacts.append(r.json()["id"])
        r = await api.put(
            f"/v1/contacts/{contacts[-1]}/consents/care_reminders",
            json={"granted": True, "source": "test"},
        )
        assert r.status_code == 200, r.text
    key = f"rpt-e2e-{tag}"
    await send_wait_send_journey(api, key, "PT1S")
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": contacts})
    assert r.json()["enrolled"] == 3

    async def all_completed() -> dict[str, Any]:
        rep = (await api.get(f"/v1/journeys/{key}/report")).json()
        return rep if rep["runs"]["ended"] == 3 else {}

    rep = await eventually(all_completed, timeout=30)
    assert rep["runs"]["started"] == 3
    assert {e["reason"]: e["count"] for e in rep["runs"]["exits"]}["completed"] == 3
    steps = {s["step"]: s for s in rep["steps"]}
    assert list(steps) == ["first", "pause", "second", "done"]
    for name in ("first", "pause", "second", "done"):
        assert steps[name]["entered"] == 3, name
    assert steps["first"]["went_to"] == [{"step": "pause", "count": 3}]
    assert steps["pause"]["went_to"] == [{"step": "second", "count": 3}]
    assert steps["done"]["exits"] == [{"reason": "completed", "count": 3}]
    for name in ("first", "second"):
        send = steps[name]["send"]
        assert (send["sent"], send["delivered"], send["bounced"]) == (3, 3, 0), name
        assert send["templates"] == [f"{key}-{1 if name == 'first' else 2}"]
    assert "send" not in steps["pause"]

    # The tracking service judges opens on the first message: an Apple MPP prefetch on
    # all three, a human open on one.
    sc = Scenario(db, key=key)
    sends = await sc.sends_of("first")
    assert len(sends) == 3
    for send_id in sends.values():
        await sc.track(send_id, "open", "automated", "apple_mpp")
    await sc.track(next(iter(sends.values())), "open", "human", "mail_client")
    for include, total, unique in (("false", 1, 1), ("true", 4, 3)):
        rep = (
            await api.get(f"/v1/journeys/{key}/report", params={"include_automated": include})
        ).json()
        first = next(s for s in rep["steps"] if s["step"] == "first")["send"]
        assert (first["opens"]["total"], first["opens"]["unique"]) == (total, unique), include
        assert first["opens"]["automated"] == {"total": 3, "unique": 3}
