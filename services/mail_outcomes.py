"""What happens after a message: bounces, complaints and unsubscribes suppress the address,
become internal events that reach the contact's runs, and (for unsubscribes) end runs.

All three share one shape: in a single transaction add the suppression and store the
event (idempotent by key, so a repeated report or a second click changes nothing), then
dispatch the event outside the transaction.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select
from temporalio.service import RPCError

from core.models import Event, JourneyVersion, Run
from services.context import ServiceContext
from services.events import dispatch, store_event
from services.suppressions import suppress
from services.temporal_errors import run_not_found

log = logging.getLogger("journeys.mail")


@dataclass
class Outcome:
    event: Event
    new_event: bool
    suppressed: bool


async def record_outcome(
    ctx: ServiceContext,
    *,
    contact_id: str,
    event: str,
    properties: dict[str, Any],
    idempotency_key: str,
    suppress_hash: str | None = None,
    suppress_category: str = "*",
    suppress_reason: str = "",
    suppress_source: str = "",
) -> Outcome:
    """Suppress (optional) and store the event in one commit; dispatch a new event.

    Whatever the caller changed in `ctx.session` before is committed with them.
    """
    suppressed = False
    if suppress_hash is not None:
        suppressed = await suppress(
            ctx, suppress_hash, suppress_category, suppress_reason, suppress_source
        )
    ev, new = await store_event(  # commits the whole transaction
        ctx, contact_id, event, properties, idempotency_key=idempotency_key
    )
    if new:
        try:
            await dispatch(ctx, ev)
        except Exception as exc:
            # The event is stored; failing the caller now would undo nothing and lose
            # the answer (an SMTP result, a one-click reply). Type only: no data in logs.
            log.warning("dispatch of %s event %s failed: %s", event, ev.id, type(exc).__name__)
    return Outcome(ev, new, suppressed)


async def exit_runs(
    ctx: ServiceContext,
    contact_id: str,
    reason: str,
    *,
    category: str | None = None,
    include_run: str | None = None,
) -> int:
    """Signal `exit` to the contact's running runs; returns how many were signalled.

    With `category`, only runs of journeys of that category (and `include_run`, the run
    that sent the message) are ended; without it, every running run.
    """
    runs = (
        await ctx.session.exec(
            select(Run).where(Run.contact_id == contact_id, Run.status == "running")
        )
    ).all()
    if category is not None:
        versions = {(r.journey_key, r.version) for r in runs}
        categories: dict[tuple[str, int], Any] = {}
        if versions:
            rows = (
                await ctx.session.exec(
                    select(JourneyVersion).where(
                        col(JourneyVersion.journey_key).in_({k for k, _ in versions})
                    )
                )
            ).all()
            categories = {(v.journey_key, v.version): v.definition.get("category") for v in rows}
        runs = [
            r
            for r in runs
            if r.id == include_run or categories.get((r.journey_key, r.version)) == category
        ]
    if not runs or ctx.temporal is None:
        return 0
    signalled = 0
    for workflow_id in dict.fromkeys(r.workflow_id for r in runs):
        try:
            await ctx.temporal.get_workflow_handle(workflow_id).signal("exit", reason)
            signalled += 1
        except RPCError as exc:
            if not run_not_found(exc):
                # Not an ended run: Temporal unreachable or refusing (the suppression
                # stands and sends check it; the run itself goes on). Opaque ids only.
                log.warning("could not signal exit to %s (%s)", workflow_id, exc.status.name)
            # else: already finished, nothing left to stop
    return signalled
