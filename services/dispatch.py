"""Delivering stored events to journeys and runs (SPEC sections 3 and 4).

For each event: (1) every active journey whose newest version is triggered by it starts a
run for the contact with signal-with-start, so a run that is already running just gets the
signal, unless the reentry rules refuse a new run; (2) every other running run of the
contact gets signal `event` (the interpreter decides whether it waits for it, exits on it
or ignores it). Paused and archived journeys take no new entries, but their running runs
still get events.

Database reads are batched for all events first; Temporal calls for one contact run in the
events' order (a contact's runs see events in the order they were sent) while different
contacts proceed concurrently; new run rows and results are written in one transaction.

Delivery is durable: the event rows are locked (FOR UPDATE) for the whole dispatch, so the
request path and the redelivery sweep (services.event_redelivery) never deliver one event
at the same time, and an event some of whose Temporal calls failed (Temporal unreachable)
stays undispatched with what did succeed kept in dispatch_result: its journeys already
started are not started again, and signals are dropped by runs that have seen the event
id. The sweep tries it again with backoff.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text, update
from sqlmodel import col, select
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.models import Event, JourneyVersion, Run, utcnow
from services import reentry
from services.context import ServiceContext
from services.enrollment import insert_runs, run_row, start
from services.entry_hooks import contacts_changed
from services.triggers import Entry, trigger_index
from workflows.types import EventSignal

log = logging.getLogger("journeys.dispatch")

# Contacts whose events are delivered at once (each contact's own events go in order).
CONCURRENCY = 64
# Undelivered events are tried again after 5 s, 10 s, 20 s, ... at most every 10 minutes.
RETRY_FIRST = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=10)
# An event this old when dispatched is a later try of its delivery (see _deliver).
REDELIVERY_AGE = timedelta(seconds=5)


def retry_delay(attempts: int) -> timedelta:
    """The wait before the next delivery of an event that failed `attempts` times."""
    return min(RETRY_FIRST * (2 ** min(max(attempts - 1, 0), 16)), RETRY_MAX)


async def _together(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the calls concurrently; when one fails, the others are cancelled before its
    error is raised, so nothing keeps starting or signalling after the caller gave up
    (and released its row locks)."""
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(call)
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None


def unreachable(exc: BaseException) -> bool:
    """Temporal did not take the call (down, restarting, network): worth trying later."""
    if isinstance(exc, RPCError | TimeoutError):
        return True
    # A lazily connected client that has never reached the server raises this.
    return isinstance(exc, RuntimeError) and "client connect" in str(exc)


@dataclass
class Reach:
    """What one event did: journeys started, runs signalled, entries refused (keys only)."""

    started: list[str] = field(default_factory=list)
    signalled: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # journeys Temporal did not take yet

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dispatch": "pending" if self.failed else "delivered",
            "started": len(self.started),
            "signalled": len(self.signalled),
            "journeys": (
                [{"journey": k, "action": "started"} for k in sorted(self.started)]
                + [{"journey": k, "action": "signalled"} for k in sorted(self.signalled)]
                + [
                    {"journey": k, "action": "skipped", "reason": r}
                    for k, r in sorted(self.skipped.items())
                ]
                + [{"journey": k, "action": "pending"} for k in sorted(set(self.failed))]
            ),
        }
        return out

    @classmethod
    def resumed(cls, prior_result: dict[str, Any] | None) -> Reach:
        """What an earlier, partly failed delivery already did: its starts."""
        prior = prior_result or {}
        started = [
            str(j["journey"]) for j in prior.get("journeys", []) if j.get("action") == "started"
        ]
        return cls(started=started)


@dataclass
class _Open:
    """A run the run table says is running."""

    run_id: str
    workflow_id: str
    started_at: datetime


@dataclass
class _Closed:
    """A run the table said was running but Temporal had closed (terminated by an operator,
    or its last record not yet written): the row is brought up to date."""

    run_id: str
    status: str
    exit_reason: str | None
    ended_at: datetime


@dataclass
class _Writes:
    runs: list[dict[str, Any]] = field(default_factory=list)
    closed: list[_Closed] = field(default_factory=list)


def _signal(ev: Event) -> EventSignal:
    return EventSignal(event_id=ev.id, name=ev.name, occurred_at=ev.occurred_at)


async def dispatch_events(ctx: ServiceContext, events: Sequence[Event]) -> list[dict[str, Any]]:
    """Deliver events (already stored) and record the outcome on each event row.

    An event another process delivered meanwhile is not delivered again (its recorded
    result is returned); a failed call leaves its event pending for the redelivery sweep."""
    if not events:
        return []
    client = ctx.require_temporal()
    began = utcnow()
    locked = await _lock(ctx, events)
    answers: dict[str, dict[str, Any]] = {
        ev_id: st.result or {} for ev_id, st in locked.items() if st.dispatched
    }
    all_events, events = events, [
        ev for ev in events if ev.id in locked and not locked[ev.id].dispatched
    ]
    if not events:
        await ctx.session.commit()  # release the locks
        return [answers.get(ev.id, {"dispatch": "pending"}) for ev in all_events]
    snap = await trigger_index(ctx.settings.database_url).current(ctx.session)
    triggered = [snap.entries_for(ev.name, ev.properties or {}) for ev in events]
    contacts = {ev.contact_id for ev in events}
    running: dict[str, dict[str, _Open]] = defaultdict(dict)
    rows = (
        await ctx.session.exec(
            select(Run).where(col(Run.contact_id).in_(contacts), Run.status == "running")
        )
    ).all()
    for r in sorted(rows, key=lambda r: r.started_at):
        running[r.contact_id][r.journey_key] = _Open(r.id, r.workflow_id, r.started_at)
    last = await reentry.last_runs_of_pairs(
        ctx.session,
        (
            (e.journey_key, ev.contact_id)
            for ev, es in zip(events, triggered, strict=True)
            for e in es
        ),
    )
    by_contact: dict[str, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        by_contact[ev.contact_id].append(i)

    reaches: list[Reach] = [Reach.resumed(locked[ev.id].result) for ev in events]
    # A later try (the sweep, a repeated idempotency key, or after a crash): see _deliver.
    again = {
        ev.id
        for ev in events
        if locked[ev.id].attempts > 0 or ev.received_at < began - REDELIVERY_AGE
    }
    writes = _Writes()
    sem = asyncio.Semaphore(CONCURRENCY)
    task_queue = ctx.settings.temporal_task_queue

    async def deliver_contact(cid: str, order: list[int]) -> None:
        async with sem:
            open_runs = running.get(cid, {})
            for i in order:
                await _deliver(
                    client, task_queue, events[i], triggered[i], open_runs, last, reaches[i],
                    writes, redelivery=events[i].id in again,
                )

    await _together(deliver_contact(cid, order) for cid, order in by_contact.items())

    await _record(ctx, events, reaches, writes, locked)
    answers.update((ev.id, r.as_dict()) for ev, r in zip(events, reaches, strict=True))
    return [answers.get(ev.id, {"dispatch": "pending"}) for ev in all_events]


@dataclass
class _Locked:
    """An event row as it stands once locked for this dispatch."""

    dispatched: bool
    attempts: int
    result: dict[str, Any] | None


async def _lock(ctx: ServiceContext, events: Sequence[Event]) -> dict[str, _Locked]:
    """Locks the events' rows until this dispatch commits (in id order: two dispatchers of
    overlapping batches never deadlock) and reads their delivery state afresh."""
    rows = await ctx.session.execute(
        text(
            "SELECT id, dispatched_at IS NOT NULL, dispatch_attempts, dispatch_result "
            "FROM event WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
        ),
        {"ids": list({ev.id for ev in events})},
    )
    return {r[0]: _Locked(bool(r[1]), int(r[2] or 0), r[3]) for r in rows.all()}


async def _deliver(
    client: Client,
    task_queue: str,
    ev: Event,
    entries: list[Entry],
    open_runs: dict[str, _Open],
    last: dict[tuple[str, str], reentry.LastRun],
    reach: Reach,
    writes: _Writes,
    *,
    redelivery: bool = False,
) -> None:
    """One event of one contact: starts and signals for different journeys go at once.
    A call Temporal does not take leaves the journey in reach.failed (tried again later)."""
    cid = ev.contact_id
    sig = _signal(ev)
    now = utcnow()
    by_key = {e.journey_key: e for e in entries}
    # Journeys an earlier, partly failed delivery of this event started: never again.
    started_before = set(reach.started)

    async def try_start(v: JourneyVersion, prior: reentry.LastRun | None) -> None:
        key = v.journey_key
        if key in started_before:
            return
        if redelivery and prior is not None and prior.started_at >= ev.received_at:
            # A run that began after this event arrived may be the one it started on an
            # earlier try whose outcome was never recorded (the process died): at most once.
            reach.skipped[key] = "started_since"
            return
        reason = reentry.refusal(by_key[key].reentry, prior, now)
        if reason:
            reach.skipped[key] = reason
            return
        out = await start(
            client, task_queue, v, cid, trigger_event=sig, expect_closed=prior is not None
        )
        if out.run_id is not None:
            reach.started.append(key)
            writes.runs.append(run_row(v, cid, out.run_id))
            open_runs[key] = _Open(out.run_id, run_row(v, cid, out.run_id)["workflow_id"], now)
        elif out.signalled:
            reach.signalled.append(key)
        else:
            reach.skipped[key] = out.reason or reentry.ALREADY_RUNNING

    async def signal_open(key: str, run: _Open) -> None:
        closed = await _signal_run(client, run, sig)
        if closed is None:
            reach.signalled.append(key)
            return
        writes.closed.append(closed)
        open_runs.pop(key, None)
        entry = by_key.get(key)
        if entry is not None:  # it was blocking a new entry that may now happen
            prior = reentry.LastRun(run.run_id, closed.status, run.started_at, closed.ended_at)
            await try_start(entry.version, prior)

    async def guarded(key: str, call: Awaitable[None]) -> None:
        try:
            await call
        except Exception as exc:
            if not unreachable(exc):
                raise
            reach.failed.append(key)

    calls = [guarded(key, signal_open(key, run)) for key, run in list(open_runs.items())]
    calls += [
        guarded(e.journey_key, try_start(e.version, last.get((e.journey_key, cid))))
        for e in entries
        if e.journey_key not in open_runs
    ]
    await _together(calls)


async def _signal_run(client: Client, run: _Open, sig: EventSignal) -> _Closed | None:
    """Signal the run; when Temporal says it has closed, say how and when."""
    handle = client.get_workflow_handle(run.workflow_id)
    try:
        await handle.signal("event", sig)
        return None
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        # Gone from Temporal altogether (past the namespace's retention).
        return _Closed(run.run_id, "exited", "not_found", utcnow())
    status = desc.status
    if status == WorkflowExecutionStatus.RUNNING:  # closed and restarted in between
        await handle.signal("event", sig)
        return None
    ended = desc.close_time or utcnow()
    if status == WorkflowExecutionStatus.COMPLETED:
        return _Closed(run.run_id, "completed", None, ended)
    name = status.name.lower() if status is not None else "closed"
    return _Closed(run.run_id, "exited", name, ended)


async def _record(
    ctx: ServiceContext,
    events: Sequence[Event],
    reaches: list[Reach],
    writes: _Writes,
    locked: dict[str, _Locked],
) -> None:
    s = ctx.session
    for c in writes.closed:
        # Only rows still marked running: the workflow's own last record wins.
        await s.exec(  # type: ignore[call-overload]
            update(Run)
            .where(col(Run.id) == c.run_id, col(Run.status) == "running")
            .values(
                status=c.status,
                exit_reason=c.exit_reason,
                ended_at=c.ended_at,
                waiting_for=None,
            )
        )
    now = utcnow()
    params: list[dict[str, Any]] = []
    for ev, reach in zip(events, reaches, strict=True):
        attempts = locked[ev.id].attempts + (1 if reach.failed else 0)
        params.append(
            {
                "id": ev.id,
                "at": None if reach.failed else now,
                "result": json.dumps(reach.as_dict()),
                "attempts": attempts,
                "due": now + retry_delay(attempts) if reach.failed else None,
            }
        )
    await s.execute(
        text(
            "UPDATE event SET dispatched_at = :at, dispatch_result = CAST(:result AS jsonb), "
            "dispatch_attempts = :attempts, dispatch_due_at = :due WHERE id = :id"
        ),
        params,
    )
    pending = sum(1 for r in reaches if r.failed)
    if pending:
        log.warning("%d of %d events not delivered (Temporal unreachable); retried later",
                    pending, len(events))
    await insert_runs(ctx, writes.runs, commit=False)
    await s.commit()
    # Segments on {"journey": KEY} see the contacts that just entered.
    await contacts_changed(
        ctx,
        [(r["contact_id"], f"journey:{r['journey_key']}") for r in writes.runs],
    )
