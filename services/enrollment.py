"""Enrolling contacts in journeys: one workflow per (journey, contact).

Bulk enrolment checks contacts and reentry rules a page at a time (two queries per page),
starts workflows with many calls in flight, and writes the page's run rows in one insert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.models import Contact, Journey, JourneyVersion, Run, utcnow
from services import reentry
from services.context import ServiceContext
from services.entry_hooks import contacts_changed, run_changes
from services.errors import Conflict
from services.journeys import get_journey, latest_version
from workflows import search_attributes as sa
from workflows.journey import WORKFLOW_NAME, workflow_id
from workflows.types import EventSignal, JourneyInput

# Workflow starts in flight at once; measured on the dev server (see README, "Journey entry").
CONCURRENCY = 64
PAGE = 1000
CLOSE_WAIT_SECONDS = 10.0

UNKNOWN_CONTACT = "unknown_contact"
DUPLICATE = "duplicate"


@dataclass
class EnrollmentResult:
    enrolled: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1) -> None:
        if n <= 0:
            return
        self.skipped += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n

    def add(self, other: EnrollmentResult) -> None:
        self.enrolled += other.enrolled
        for reason, n in other.reasons.items():
            self.skip(reason, n)

    def as_dict(self) -> dict[str, Any]:
        return {
            "enrolled": self.enrolled,
            "skipped": self.skipped,
            "skipped_by_reason": self.reasons,
        }


@dataclass(frozen=True)
class StartOutcome:
    """run_id of the run this call started, else why none was started."""

    run_id: str | None
    reason: str | None = None
    signalled: bool = False  # signal-with-start reached a run that was already running


def search_attributes(
    journey_key: str, version: int, contact_id: str, step: str | None = None
) -> TypedSearchAttributes:
    """step: the journey's start step. Given at start, the run need not upsert it when it
    enters that step (one visibility write less per run)."""
    pairs: list[SearchAttributePair[Any]] = [
        SearchAttributePair(sa.JOURNEY_KEY, journey_key),
        SearchAttributePair(sa.JOURNEY_VERSION, version),
        SearchAttributePair(sa.CONTACT_ID, contact_id),
        SearchAttributePair(sa.JOURNEY_STATUS, "running"),
    ]
    if step:
        pairs.append(SearchAttributePair(sa.JOURNEY_STEP, step))
    return TypedSearchAttributes(pairs)


def journey_input(
    v: JourneyVersion,
    contact_id: str,
    *,
    chain: list[str] | None = None,
    trigger_event_id: str | None = None,
    continue_as_new_after: int | None = None,
) -> JourneyInput:
    return JourneyInput(
        journey_key=v.journey_key,
        version=v.version,
        contact_id=contact_id,
        definition=v.definition,
        chain=chain or [],
        trigger_event_id=trigger_event_id,
        continue_as_new_after=continue_as_new_after,
    )


async def _already_started_reason(client: Client, wid: str) -> str:
    """WorkflowAlreadyStarted means running, or (reentry never) a closed run Temporal keeps."""
    try:
        desc = await client.get_workflow_handle(wid).describe()
    except Exception:
        return reentry.ALREADY_RUNNING
    if desc.status == WorkflowExecutionStatus.RUNNING:
        return reentry.ALREADY_RUNNING
    return reentry.REENTRY_NEVER


async def start(
    client: Client,
    task_queue: str,
    v: JourneyVersion,
    contact_id: str,
    *,
    chain: list[str] | None = None,
    trigger_event: EventSignal | None = None,
    trigger_event_id: str | None = None,
    expect_closed: bool = False,
    continue_as_new_after: int | None = None,
) -> StartOutcome:
    """Starts a run of version v. With trigger_event this is signal-with-start: a run that is
    already running gets the event as signal `event` instead.

    expect_closed: the run table says the previous run ended. Its workflow records the end
    just before it closes, so for a moment Temporal may still see it running: wait for it
    to close and start the new run then, rather than reporting it as running."""
    if trigger_event is not None:
        trigger_event_id = trigger_event.event_id
    inp = journey_input(
        v,
        contact_id,
        chain=chain,
        trigger_event_id=trigger_event_id,
        continue_as_new_after=continue_as_new_after,
    )
    out = await _start_once(client, task_queue, v, contact_id, inp, trigger_event)
    if expect_closed and out.run_id is None and out.reason == reentry.ALREADY_RUNNING:
        if await _closed(client, workflow_id(v.journey_key, contact_id)):
            out = await _start_once(client, task_queue, v, contact_id, inp, trigger_event)
    return out


async def _closed(client: Client, wid: str) -> bool:
    """Waits (briefly) for the workflow to close."""
    try:
        await asyncio.wait_for(client.get_workflow_handle(wid).result(), CLOSE_WAIT_SECONDS)
    except TimeoutError:
        return False
    except Exception:  # failed, terminated, cancelled: closed all the same
        pass
    return True


async def _start_once(
    client: Client,
    task_queue: str,
    v: JourneyVersion,
    contact_id: str,
    inp: JourneyInput,
    trigger_event: EventSignal | None,
) -> StartOutcome:
    wid = workflow_id(v.journey_key, contact_id)
    common: dict[str, Any] = dict(
        id=wid,
        task_queue=task_queue,
        id_reuse_policy=reentry.reuse_policy(v.definition.get("reentry")),
        search_attributes=search_attributes(
            v.journey_key, v.version, contact_id, v.definition.get("start")
        ),
    )
    try:
        if trigger_event is None:
            handle = await client.start_workflow(
                WORKFLOW_NAME, inp, id_conflict_policy=WorkflowIDConflictPolicy.FAIL, **common
            )
            return StartOutcome(handle.first_execution_run_id or handle.result_run_id)
        handle = await client.start_workflow(
            WORKFLOW_NAME,
            inp,
            start_signal="event",
            start_signal_args=[trigger_event],
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            **common,
        )
    except WorkflowAlreadyStartedError:
        return StartOutcome(None, await _already_started_reason(client, wid))
    resp = getattr(handle, "_start_workflow_response", None)
    if resp is not None and not getattr(resp, "started", True):
        return StartOutcome(None, reentry.ALREADY_RUNNING, signalled=True)
    return StartOutcome(handle.first_execution_run_id or handle.result_run_id)


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
    """Starts the run; returns its run id, or None when one is running (or, for reentry
    `never`, has run). Kept for callers that only need the run id (start_journey)."""
    out = await start(
        client,
        task_queue,
        v,
        contact_id,
        chain=chain,
        trigger_event_id=trigger_event_id,
        continue_as_new_after=continue_as_new_after,
    )
    return out.run_id


def run_row(v: JourneyVersion, contact_id: str, run_id: str) -> dict[str, Any]:
    return dict(
        id=run_id,
        journey_key=v.journey_key,
        version=v.version,
        contact_id=contact_id,
        workflow_id=workflow_id(v.journey_key, contact_id),
        status="running",
        step=None,
        visits={},
        started_at=utcnow(),
    )


async def insert_runs(
    ctx: ServiceContext,
    rows: list[dict[str, Any]],
    commit: bool = True,
    *,
    set_trigger: bool = False,
) -> None:
    """The run rows of runs just started; the workflow's own record_steps may have won.
    set_trigger: a row it wrote first still gets the rows' trigger_event_id."""
    if rows:
        stmt = insert(Run).values(rows)
        await ctx.session.exec(  # type: ignore[call-overload]
            stmt.on_conflict_do_update(
                index_elements=["id"], set_={"trigger_event_id": stmt.excluded.trigger_event_id}
            )
            if set_trigger
            else stmt.on_conflict_do_nothing(index_elements=["id"])
        )
    if commit:
        await ctx.session.commit()


async def active_version(ctx: ServiceContext, key: str) -> JourneyVersion:
    j: Journey = await get_journey(ctx, key)
    if j.status != "active":
        raise Conflict(
            f"journey is {j.status}; only active journeys take new entries",
            {"key": key, "status": j.status},
        )
    return await latest_version(ctx, key)


async def enroll(
    ctx: ServiceContext,
    key: str,
    contact_ids: Sequence[str],
    progress: Callable[[int], None] | None = None,
    *,
    chain: list[str] | None = None,
) -> EnrollmentResult:
    """Enrol contacts in the newest published version of an active journey, applying the
    reentry rules. Unknown or erased contacts and repeats in the list are skipped. chain:
    the journeys the contacts came through (start_journey's cross-journey loop guard)."""
    v = await active_version(ctx, key)
    client = ctx.require_temporal()
    result = EnrollmentResult()
    unique = list(dict.fromkeys(contact_ids))
    result.skip(DUPLICATE, len(contact_ids) - len(unique))
    sem = asyncio.Semaphore(CONCURRENCY)
    for offset in range(0, len(unique), PAGE):
        page = unique[offset : offset + PAGE]
        result.add(await _enroll_page(ctx, client, v, page, sem, chain, progress))
    return result


async def _enroll_page(
    ctx: ServiceContext,
    client: Client,
    v: JourneyVersion,
    page: list[str],
    sem: asyncio.Semaphore,
    chain: list[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> EnrollmentResult:
    result = EnrollmentResult()
    known = set(
        (
            await ctx.session.exec(
                select(Contact.id).where(
                    col(Contact.id).in_(page), col(Contact.deleted_at).is_(None)
                )
            )
        ).all()
    )
    result.skip(UNKNOWN_CONTACT, len(page) - len(known))
    last = await reentry.last_runs_of_contacts(ctx.session, v.journey_key, known)
    now = utcnow()
    rule = v.definition.get("reentry")
    todo: list[str] = []
    for cid in page:
        if cid not in known:
            continue
        reason = reentry.refusal(rule, last.get(cid), now)
        if reason:
            result.skip(reason)
        else:
            todo.append(cid)
    task_queue = ctx.settings.temporal_task_queue
    if progress:
        progress(len(page) - len(todo))  # decided without Temporal

    async def one(cid: str) -> tuple[str, StartOutcome]:
        async with sem:
            ended = cid in last  # refusal() let it through, so that run has ended
            out = await start(client, task_queue, v, cid, chain=chain, expect_closed=ended)
        if progress:
            progress(1)
        return cid, out

    rows: list[dict[str, Any]] = []
    for cid, out in await asyncio.gather(*(one(cid) for cid in todo)):
        if out.run_id is None:
            result.skip(out.reason or reentry.ALREADY_RUNNING)
        else:
            result.enrolled += 1
            rows.append(run_row(v, cid, out.run_id))
    await insert_runs(ctx, rows)
    await contacts_changed(ctx, run_changes(v.journey_key, (r["contact_id"] for r in rows)))
    return result
