"""The parked-runs benchmarks' fixture: N contacts and a journey that waits 30 days."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, insert
from sqlmodel import select
from temporalio.client import Client

from bench.stack import BenchStack
from core.models import Contact, Run
from services.context import ServiceContext
from services.enrollment import EnrollmentResult, enroll
from services.journeys import create_journey, publish_journey

JOURNEY = "parked"
WAIT_STEP = "pause"


def parked_steps(extra: int) -> dict[str, Any]:
    """Wait P30D, then `extra` steps (event waits and contact updates, as a real journey
    has after its first wait; they size the definition each run carries), then exit."""
    names = [f"s{i}" for i in range(extra)] + ["done"]
    steps: dict[str, Any] = {WAIT_STEP: {"type": "wait", "duration": "P30D", "next": names[0]}}
    for i in range(extra):
        nxt = names[i + 1]
        steps[names[i]] = (
            {"type": "wait_for_event", "event": "visit_booked", "where": {"clinic": "north"},
             "timeout": "P7D", "yes": nxt, "no": nxt}
            if i % 2 == 0
            else {"type": "update_contact", "set": {f"stage_{i}": "reminded"}, "next": nxt}
        )
    steps["done"] = {"type": "exit"}
    return steps


async def seed_parked(stack: BenchStack, client: Client, n: int, extra_steps: int = 0) -> list[str]:
    """N contacts (one insert) and the published journey `parked` (see parked_steps)."""
    ids = [f"c_park{i:07d}" for i in range(n)]
    async with stack.db.session() as s:
        await s.exec(insert(Contact), params=[  # type: ignore[call-overload]
            {"id": cid, "external_id": f"park-{i}", "email": f"p{i}@example.com",
             "timezone": "UTC", "attributes": {}} for i, cid in enumerate(ids)
        ])
        await s.commit()
        ctx = ServiceContext(s, stack.settings, client)
        await create_journey(ctx, {
            "key": JOURNEY, "name": "parked", "category": "care", "trigger": {"type": "manual"},
            "start": WAIT_STEP, "steps": parked_steps(extra_steps),
        })
        await publish_journey(ctx, JOURNEY)
    return ids


async def enrol_parked(
    stack: BenchStack, client: Client, ids: list[str], progress: Callable[[int], None] | None = None
) -> EnrollmentResult:
    """Enrol through the product's bulk path (pages of 1,000, 64 starts in flight)."""
    async with stack.db.session() as s:
        return await enroll(ServiceContext(s, stack.settings, client), JOURNEY, ids, progress)


async def parked_count(stack: BenchStack) -> int:
    """Runs whose row says they sit in the wait (written by record_steps when they park)."""
    async with stack.db.session() as s:
        q = select(func.count()).select_from(Run).where(Run.journey_key == JOURNEY, Run.step == WAIT_STEP)
        return int((await s.exec(q)).one())


async def running_in_temporal(client: Client) -> int:
    """Open JourneyRun workflows of the journey, from Temporal's visibility store."""
    found = await client.count_workflows(f'JourneyKey = "{JOURNEY}" AND ExecutionStatus = "Running"')
    return found.count
