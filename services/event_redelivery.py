"""Durable delivery of stored events: the sweep that delivers events Temporal did not take.

An event is stored first and delivered second (services.events, services.dispatch). When
delivery fails (Temporal unreachable or restarting) or never finishes (the process died),
the event row keeps `dispatched_at IS NULL`; this sweep picks such events up once they are
a few seconds old (or their backoff has run out), in the order received, and delivers
them with the same code as the request path. Rows are claimed FOR UPDATE SKIP LOCKED, so
several workers, the request path and a repeated idempotency key never deliver one event
at once; runs drop an event id they have seen and journeys an earlier try started are
not started again (services.dispatch), so every run gets the event once.

It runs on Temporal (workflows.event_redelivery, started every minute by the schedule
below, sweeping every few seconds within that minute), so it runs where the workers run
and only while Temporal is there to deliver to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlmodel import col, select
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from core.models import Event, utcnow
from core.temporal import put_schedule
from services.context import ServiceContext
from services.dispatch import dispatch_events, retry_delay

log = logging.getLogger("journeys.redelivery")

# The request path delivers first; the sweep leaves an event alone this long after it is
# received (unless a failed try set dispatch_due_at).
GRACE = timedelta(seconds=5)
# Undelivered for this long: given up (recorded, logged) rather than starting journeys
# with news days old.
MAX_AGE = timedelta(days=3)
BATCH = 500

SCHEDULE_ID = "events-redelivery"
WORKFLOW_ID = "events-redelivery"
EVERY = timedelta(minutes=1)


@dataclass
class SweepResult:
    delivered: int = 0
    pending: int = 0  # tried, Temporal still did not take them (backoff set)
    abandoned: int = 0
    failed: int = 0  # Temporal refused them for good (recorded per journey; not retried)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def abandon_stale(ctx: ServiceContext, now: datetime) -> int:
    """Marks undelivered events older than MAX_AGE as given up."""
    res = await ctx.session.execute(
        text(
            "UPDATE event SET dispatched_at = :now, "
            # What earlier tries did stays on the row; only the outcome changes.
            "dispatch_result = coalesce(dispatch_result, '{}'::jsonb) || CAST(:result AS jsonb) "
            "WHERE dispatched_at IS NULL AND received_at < :cutoff"
        ),
        {"now": now, "cutoff": now - MAX_AGE, "result": '{"dispatch": "abandoned"}'},
    )
    await ctx.session.commit()
    n = int(getattr(res, "rowcount", 0) or 0)
    if n:
        log.warning("%d events undelivered for over %s were given up", n, MAX_AGE)
    return n


async def redeliver_batch(ctx: ServiceContext, now: datetime, limit: int = BATCH) -> SweepResult:
    """Claims up to `limit` due events (skipping rows another dispatcher holds) and
    delivers them; the claim is held until the outcome is recorded."""
    s = ctx.session
    due = (
        await s.exec(
            select(Event)
            .where(
                col(Event.dispatched_at).is_(None),
                text(
                    "coalesce(event.dispatch_due_at, event.received_at + CAST(:grace AS interval))"
                    " <= :now"
                ).bindparams(grace=GRACE, now=now),
            )
            .order_by(col(Event.received_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    result = SweepResult()
    if not due:
        await s.commit()
        return result
    ids = [ev.id for ev in due]
    try:
        outcomes = await dispatch_events(ctx, list(due))
    except Exception:
        await s.rollback()  # (expires the loaded rows: _one_by_one reads each afresh)
        # Something other than Temporal's absence (that leaves events pending without an
        # error): one event at a time, so a bad one cannot hold the others back for ever.
        outcomes = [await _one_by_one(ctx, event_id) for event_id in ids]
    for out in outcomes:
        if out.get("dispatch") == "pending":
            result.pending += 1
        elif out.get("dispatch") == "failed":
            result.failed += 1
        else:
            result.delivered += 1
    return result


async def _one_by_one(ctx: ServiceContext, event_id: str) -> dict[str, Any]:
    """Delivers one event; on an error, puts it off with the usual backoff (row locks make
    this safe against another dispatcher: an event delivered meanwhile is left alone)."""
    s = ctx.session
    ev = (
        await s.exec(
            select(Event).where(col(Event.id) == event_id).execution_options(populate_existing=True)
        )
    ).first()
    if ev is None or ev.dispatched_at is not None:
        await s.commit()
        return (ev.dispatch_result if ev is not None else None) or {"dispatch": "delivered"}
    attempts = ev.dispatch_attempts
    try:
        return (await dispatch_events(ctx, [ev]))[0]
    except Exception as exc:
        await s.rollback()
        log.error("redelivery of event %s failed: %s", event_id, type(exc).__name__)
        await s.execute(
            text(
                "UPDATE event SET dispatch_attempts = :attempts, dispatch_due_at = :due "
                "WHERE id = :id AND dispatched_at IS NULL"
            ),
            {"id": event_id, "attempts": attempts + 1, "due": utcnow() + retry_delay(attempts + 1)},
        )
        await s.commit()
        return {"dispatch": "pending"}


async def redeliver_due(
    ctx: ServiceContext,
    now: datetime | None = None,
    *,
    progress: Callable[[int], Any] | None = None,
) -> SweepResult:
    """Delivers every due event, batch by batch, until none is due or Temporal stops
    taking them (then the backoff decides when to look again)."""
    now = now or utcnow()
    total = SweepResult(abandoned=await abandon_stale(ctx, now))
    while True:
        got = await redeliver_batch(ctx, now)
        total.delivered += got.delivered
        total.pending += got.pending
        total.failed += got.failed
        if progress is not None:
            progress(total.delivered)
        if got.delivered + got.pending + got.failed < BATCH or got.pending:
            break
    if total.delivered or total.pending or total.failed:
        log.info(
            "redelivery: %d delivered, %d still pending, %d refused by Temporal",
            total.delivered,
            total.pending,
            total.failed,
        )
    return total


def redelivery_schedule(
    task_queue: str, every: timedelta = EVERY, workflow_id: str = WORKFLOW_ID
) -> Schedule:
    from workflows.event_redelivery import REDELIVERY_WORKFLOW

    return Schedule(
        action=ScheduleActionStartWorkflow(
            REDELIVERY_WORKFLOW,
            id=workflow_id,
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=10),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # One sweeper at a time: a long one makes the next start skip, not pile up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_redelivery_schedule(
    client: Client,
    task_queue: str,
    every: timedelta = EVERY,
    schedule_id: str = SCHEDULE_ID,
    workflow_id: str = WORKFLOW_ID,
) -> None:
    """Creates the schedule, or brings an existing one to this task queue and interval
    (an operator's pause is kept)."""
    wanted = redelivery_schedule(task_queue, every, workflow_id)
    await put_schedule(client, schedule_id, wanted, keep_state=True)  # a pause stays
