"""Enrolling contacts in journeys: one workflow per (journey, contact)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.models import Contact, Journey, JourneyVersion, Run
from services.context import ServiceContext
from services.errors import Conflict
from services.journeys import get_journey, latest_version
from workflows import search_attributes as sa
from workflows.journey import WORKFLOW_NAME, workflow_id
from workflows.types import JourneyInput

CONCURRENCY = 64


@dataclass
class EnrollmentResult:
    enrolled: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"enrolled": self.enrolled, "skipped": self.skipped, "skipped_by_reason": self.reasons}


def search_attributes(journey_key: str, version: int, contact_id: str) -> TypedSearchAttributes:
    return TypedSearchAttributes(
        [
            SearchAttributePair(sa.JOURNEY_KEY, journey_key),
            SearchAttributePair(sa.JOURNEY_VERSION, version),
            SearchAttributePair(sa.CONTACT_ID, contact_id),
            SearchAttributePair(sa.JOURNEY_STATUS, "running"),
        ]
    )


async def start_run(
    client: Client,
    task_queue: str,
    v: JourneyVersion,
    contact_id: str,
    *,
    chain: list[str] | None = None,
    trigger_event_id: str | None = None,
    continue_as_new_after: int | None = None,
) -> str | None:
    """Starts the run; returns its run id, or None when one is already running."""
    try:
        handle = await client.start_workflow(
            WORKFLOW_NAME,
            JourneyInput(
                journey_key=v.journey_key,
                version=v.version,
                contact_id=contact_id,
                definition=v.definition,
                chain=chain or [],
                trigger_event_id=trigger_event_id,
                continue_as_new_after=continue_as_new_after,
            ),
            id=workflow_id(v.journey_key, contact_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=search_attributes(v.journey_key, v.version, contact_id),
        )
    except WorkflowAlreadyStartedError:
        return None
    return handle.result_run_id


async def enroll(
    ctx: ServiceContext,
    key: str,
    contact_ids: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> EnrollmentResult:
    j: Journey = await get_journey(ctx, key)
    if j.status != "active":
        raise Conflict(f"journey is {j.status}; only active journeys take new entries", {"key": key})
    v = await latest_version(ctx, key)
    client = ctx.require_temporal()
    result = EnrollmentResult()
    unique = list(dict.fromkeys(contact_ids))
    result.skipped += len(contact_ids) - len(unique)
    if len(contact_ids) != len(unique):
        result.reasons["duplicate"] = len(contact_ids) - len(unique)
    sem = asyncio.Semaphore(CONCURRENCY)
    for start in range(0, len(unique), 1000):
        batch = unique[start : start + 1000]
        known = set(
            (
                await ctx.session.exec(
                    select(Contact.id).where(
                        col(Contact.id).in_(batch), col(Contact.deleted_at).is_(None)
                    )
                )
            ).all()
        )
        rows: list[dict[str, Any]] = []

        async def one(cid: str) -> None:
            if cid not in known:
                result.skip("unknown_contact")
                return
            async with sem:
                run_id = await start_run(
                    client, ctx.settings.temporal_task_queue, v, cid,
                    continue_as_new_after=ctx.settings.continue_as_new_after_events,
                )
            if run_id is None:
                result.skip("already_running")
                return
            result.enrolled += 1
            rows.append(
                dict(
                    id=run_id,
                    journey_key=key,
                    version=v.version,
                    contact_id=cid,
                    workflow_id=workflow_id(key, cid),
                    status="running",
                    step=None,
                    visits={},
                )
            )

        await asyncio.gather(*(one(cid) for cid in batch))
        if rows:
            await ctx.session.exec(  # type: ignore[call-overload]
                insert(Run).values(rows).on_conflict_do_nothing(index_elements=["id"])
            )
            await ctx.session.commit()
        if progress:
            progress(len(batch))
    return result
