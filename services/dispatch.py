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
stays undispatched with what did succeed kept in dispatch_result. A later try does only
what is still missing: journeys an earlier try started, signalled or skipped are left
alone (even when their run closed in between: a delivered event earns no re-entry), and a
journey this event started on a try whose outcome was never recorded (the process died)
is found by the run's trigger event (run.trigger_event_id, written by this module and by
the run's own first record; for rows from before that column, the run's input in
Temporal) and not started again; a closed run that was running when the event arrived is read back
from its history (did a lost try signal it?) before the event may start a new one. The
sweep tries it again with backoff. A call Temporal refuses because the deployment is set
up wrong (namespace not found, PERMISSION_DENIED, UNAUTHENTICATED) is tried again the same
way (pending, with its reason code) and logged loudly on each try; one it refuses for good
(a data problem: services.temporal_errors) is recorded per journey as `failed` with a
reason code, logged, and not tried again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import text, update
from sqlmodel import col, select
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from core.models import Event, JourneyVersion, Run, utcnow
from services import reentry
from services.context import ServiceContext
from services.enrollment import insert_runs, run_row, start
from services.entry_hooks import contacts_changed
from services.temporal_errors import misconfigured, refusal_code, run_not_found, transient
from services.triggers import Entry, trigger_index
from workflows.journey import workflow_id
from workflows.types import EventSignal, JourneyInput

log = logging.getLogger("journeys.dispatch")
_T = TypeVar("_T")

# Contacts whose events are delivered at once (each contact's own events go in order).
CONCURRENCY = 64
# Undelivered events are tried again after 5 s, 10 s, 20 s, ... at most every 10 minutes.
RETRY_FIRST = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=10)
# An event this old when dispatched is a later try of its delivery (see _deliver).
REDELIVERY_AGE = timedelta(seconds=5)
# Run rows are stamped by whichever process writes them first (API or worker): a run this
# event started may carry a start time a little before the event's receipt on another clock.
CLOCK_SLACK = timedelta(minutes=1)
# A run began after the event arrived, Temporal no longer knows what started it (past the
# namespace's retention) and its row does not say: it may be this event's, so not again.
STARTED_SINCE = "started_since"


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


@dataclass
class Reach:
    """What one event did, over all its tries: journeys started, runs signalled, entries
    refused by the rules, calls Temporal refused for good (keys and reason codes only)."""

    started: list[str] = field(default_factory=list)
    signalled: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # journeys Temporal did not take yet
    refused: dict[str, str] = field(default_factory=dict)  # journey -> reason code; final
    # Of `failed`: journey -> reason code when Temporal refused the call for a configuration
    # an operator must fix (retried all the same).
    misconfigured: dict[str, str] = field(default_factory=dict)

    def settled(self) -> set[str]:
        """Journeys this event is done with: a later try leaves them alone."""
        return {*self.started, *self.signalled, *self.skipped, *self.refused}

    @property
    def outcome(self) -> str:
        if self.failed:
            return "pending"
        return "failed" if self.refused else "delivered"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dispatch": self.outcome,
            "started": len(self.started),
            "signalled": len(self.signalled),
            "journeys": (
                [{"journey": k, "action": "started"} for k in sorted(self.started)]
                + [{"journey": k, "action": "signalled"} for k in sorted(self.signalled)]
                + [
                    {"journey": k, "action": "skipped", "reason": r}
                    for k, r in sorted(self.skipped.items())
                ]
                + [
                    {"journey": k, "action": "failed", "reason": r}
                    for k, r in sorted(self.refused.items())
                ]
                + [
                    {"journey": k, "action": "pending"}
                    | ({"reason": self.misconfigured[k]} if k in self.misconfigured else {})
                    for k in sorted(set(self.failed))
                ]
            ),
        }
        return out

    @classmethod
    def resumed(cls, prior_result: dict[str, Any] | None) -> Reach:
        """What earlier, partly failed tries already did (everything but `pending`)."""
        reach = cls()
        for j in (prior_result or {}).get("journeys", []):
            key, action = str(j.get("journey")), j.get("action")
            if action == "started":
                reach.started.append(key)
            elif action == "signalled":
                reach.signalled.append(key)
            elif action == "skipped":
                reach.skipped[key] = str(j.get("reason") or "")
            elif action == "failed":
                reach.refused[key] = str(j.get("reason") or "")
        return reach


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
    triggers: dict[str, str] = field(default_factory=dict)  # run id -> event id, learnt


@dataclass(frozen=True)
class _Since:
    """A run of a journey a retried event triggers, begun after (about) its arrival."""

    run_id: str
    workflow_id: str
    started_at: datetime
    trigger_event_id: str | None


_UNKNOWN = "?"  # what started the run can no longer be told
MAX_CHAIN = 50  # continue-as-new runs of one chain read at most (each ~2,000 events)
# A run that was running when the event arrived has closed since, and Temporal no longer
# has its history to tell whether a try whose outcome was lost reached it: no new entry.
CLOSED_SINCE = "closed_since"


class _Origins:
    """Which event started a run: the run row says so (this module and the run's own first
    record write it); a row from before the column existed is answered from the run's input
    in Temporal."""

    def __init__(
        self, client: Client, since: dict[tuple[str, str], list[_Since]], writes: _Writes
    ) -> None:
        self.client = client
        self.since = since
        self.writes = writes
        self.asked: dict[str, str | None] = {}

    async def started_by(self, ev: Event, key: str) -> str | None:
        """'started' when ev started a run of journey `key`, _UNKNOWN when a run that
        began since cannot be told apart from one it started, else None."""
        unknown = False
        for run in self.since.get((key, ev.contact_id), ()):
            if run.started_at < ev.received_at - CLOCK_SLACK:
                continue
            trigger = run.trigger_event_id or await self._ask(run)
            if trigger == ev.id:
                return "started"
            unknown = unknown or trigger == _UNKNOWN
        return _UNKNOWN if unknown else None

    async def heard(self, ev: Event, run: reentry.LastRun, wid: str) -> bool | None:
        """Did this run (running when ev arrived, closed since) get ev on a try whose
        outcome was lost? From its history (every run of its continue-as-new chain);
        None when Temporal no longer has it."""
        if run.started_at > ev.received_at + CLOCK_SLACK:
            return False  # began after the event arrived: no earlier try reached it
        if run.ended_at is not None and run.ended_at < ev.received_at - CLOCK_SLACK:
            return False  # had ended before the event arrived
        run_id: str | None = run.run_id
        unreadable = False
        try:
            for _ in range(MAX_CHAIN):
                if run_id is None:
                    return None if unreadable else False
                handle = self.client.get_workflow_handle(wid, run_id=run_id)
                run_id = None
                async for e in handle.fetch_history_events():
                    if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                        attrs = e.workflow_execution_signaled_event_attributes
                        if attrs.signal_name != "event":
                            continue
                        got = await self._decode(
                            attrs.input.payloads, EventSignal, handle.run_id or wid
                        )
                        if got is None:
                            unreadable = True
                        elif got.event_id == ev.id:
                            return True
                    elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                        cont = e.workflow_execution_continued_as_new_event_attributes
                        run_id = cont.new_execution_run_id or None
        except RPCError as err:
            if not run_not_found(err):
                raise
            return None  # past the namespace's retention
        return None  # a chain longer than we read: cannot tell

    async def _decode(self, payloads: Sequence[Payload], kind: type[_T], run_id: str) -> _T | None:
        """One payload as `kind`; None when it cannot be read (e.g. its codec key is
        gone): the caller then cannot tell, rather than failing the whole delivery."""
        try:
            got = await self.client.data_converter.decode(payloads, [kind])
        except Exception as exc:
            # Type and opaque ids only: the payload (and the error's text) may hold PHI.
            log.warning(
                "cannot decode a payload (%s) of run %s (%s); treated as unknown",
                kind.__name__,
                run_id,
                type(exc).__name__,
            )
            return None
        return got[0] if got and isinstance(got[0], kind) else None

    async def _ask(self, run: _Since) -> str | None:
        if run.run_id not in self.asked:
            self.asked[run.run_id] = found = await self._input_trigger(run)
            if found is not None and found != _UNKNOWN:
                self.writes.triggers[run.run_id] = found
        return self.asked[run.run_id]

    async def _input_trigger(self, run: _Since) -> str | None:
        handle = self.client.get_workflow_handle(run.workflow_id, run_id=run.run_id)
        try:
            async for first in handle.fetch_history_events(page_size=1):
                payloads = first.workflow_execution_started_event_attributes.input.payloads
                inp = await self._decode(payloads, JourneyInput, run.run_id)
                return inp.trigger_event_id if inp is not None else _UNKNOWN
        except RPCError as err:
            if not run_not_found(err):
                raise
        return _UNKNOWN  # past the namespace's retention


async def _runs_since(
    ctx: ServiceContext, wanted: dict[tuple[str, str], datetime]
) -> dict[tuple[str, str], list[_Since]]:
    """(journey key, contact id) -> its runs begun since the given time (one query)."""
    if not wanted:
        return {}
    pairs = sorted(wanted)
    rows = await ctx.session.execute(
        text(
            "SELECT r.journey_key, r.contact_id, r.id, r.workflow_id, r.started_at, "
            "r.trigger_event_id FROM run r JOIN unnest(CAST(:keys AS text[]), "
            "CAST(:ids AS text[]), CAST(:since AS timestamptz[])) AS w(journey_key, "
            "contact_id, since) ON r.journey_key = w.journey_key "
            "AND r.contact_id = w.contact_id AND r.started_at >= w.since "
            "ORDER BY r.started_at"
        ),
        {
            "keys": [k for k, _ in pairs],
            "ids": [c for _, c in pairs],
            "since": [wanted[p] - CLOCK_SLACK for p in pairs],
        },
    )
    out: dict[tuple[str, str], list[_Since]] = defaultdict(list)
    for r in rows:
        out[(r.journey_key, r.contact_id)].append(
            _Since(r.id, r.workflow_id, r.started_at, r.trigger_event_id)
        )
    return out


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
    all_events, events = (
        events,
        [ev for ev in events if ev.id in locked and not locked[ev.id].dispatched],
    )
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
    # Runs that may be a retried event's own start, lost with its outcome (see _Origins).
    since: dict[tuple[str, str], datetime] = {}
    for ev, es in zip(events, triggered, strict=True):
        if ev.id in again:
            for e in es:
                pair = (e.journey_key, ev.contact_id)
                since[pair] = min(since.get(pair, ev.received_at), ev.received_at)
    origins = _Origins(client, await _runs_since(ctx, since), writes)
    sem = asyncio.Semaphore(CONCURRENCY)
    task_queue = ctx.settings.temporal_task_queue

    async def deliver_contact(cid: str, order: list[int]) -> None:
        async with sem:
            open_runs = running.get(cid, {})
            for i in order:
                await _deliver(
                    client,
                    task_queue,
                    events[i],
                    triggered[i],
                    open_runs,
                    last,
                    reaches[i],
                    writes,
                    origins if events[i].id in again else None,
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
    origins: _Origins | None = None,
) -> None:
    """One event of one contact: starts and signals for different journeys go at once.
    Journeys an earlier try settled are left alone; a call Temporal does not take leaves
    the journey in reach.failed (tried again later), one it refuses in reach.refused.
    origins: given on a later try of the event, to find a start whose outcome was lost."""
    cid = ev.contact_id
    sig = _signal(ev)
    now = utcnow()
    by_key = {e.journey_key: e for e in entries}
    settled = reach.settled()

    async def try_start(v: JourneyVersion, prior: reentry.LastRun | None) -> None:
        key = v.journey_key
        reason = reentry.refusal(by_key[key].reentry, prior, now)
        if reason:
            reach.skipped[key] = reason
            return
        out = await start(
            client, task_queue, v, cid, trigger_event=sig, expect_closed=prior is not None
        )
        if out.run_id is not None:
            reach.started.append(key)
            row = {**run_row(v, cid, out.run_id), "trigger_event_id": ev.id}
            writes.runs.append(row)
            open_runs[key] = _Open(out.run_id, row["workflow_id"], now)
        elif out.signalled:
            reach.signalled.append(key)
        else:
            reach.skipped[key] = out.reason or reentry.ALREADY_RUNNING

    async def heard_before(key: str, prior: reentry.LastRun | None, wid: str) -> bool:
        """On a later try: whether the closed run `prior` got this event on a try whose
        outcome was lost (then the event earns no new entry)."""
        if origins is None or prior is None or prior.status == "running":
            return False
        if reentry.refusal(by_key[key].reentry, prior, now):
            return False  # no new entry either way (try_start says why)
        heard = await origins.heard(ev, prior, wid)
        if heard is None:
            reach.skipped[key] = CLOSED_SINCE
            return True
        if heard:
            reach.signalled.append(key)
        return heard

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
            if not await heard_before(key, prior, run.workflow_id):
                await try_start(entry.version, prior)

    async def one(key: str) -> None:
        if origins is not None and key in by_key:
            # A try whose outcome was lost may have started this journey already.
            mine = await origins.started_by(ev, key)
            if mine == "started":
                reach.started.append(key)
                return
            if mine == _UNKNOWN:
                reach.skipped[key] = STARTED_SINCE
                return
        run = open_runs.get(key)
        if run is not None:
            await signal_open(key, run)
            return
        prior = last.get((key, cid))
        if not await heard_before(key, prior, workflow_id(key, cid)):
            await try_start(by_key[key].version, prior)

    async def guarded(key: str) -> None:
        try:
            await one(key)
        except Exception as exc:
            if transient(exc):
                reach.failed.append(key)
            elif misconfigured(exc):  # retried: an operator fixes the configuration
                reach.failed.append(key)
                reach.misconfigured[key] = refusal_code(exc)
            elif isinstance(exc, RPCError):
                reach.refused[key] = refusal_code(exc)
            else:
                raise

    keys = [k for k in open_runs if k not in settled]
    keys += [k for k in by_key if k not in open_runs and k not in settled]
    await _together(guarded(key) for key in keys)


async def _signal_run(client: Client, run: _Open, sig: EventSignal) -> _Closed | None:
    """Signal the run; when Temporal says it has closed, say how and when."""
    handle = client.get_workflow_handle(run.workflow_id)
    try:
        await handle.signal("event", sig)
        return None
    except RPCError as err:
        if not run_not_found(err):  # (a namespace not found is no closed run)
            raise
    try:
        desc = await handle.describe()
    except RPCError as err:
        if not run_not_found(err):
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
        log.warning(
            "%d of %d events not delivered (Temporal unreachable or misconfigured); retried later",
            pending,
            len(events),
        )
    for ev, reach in zip(events, reaches, strict=True):
        if reach.misconfigured:  # loudly, once per try of each event; ids and codes only
            log.error(
                "event %s: Temporal refused delivery to %s: check TEMPORAL_NAMESPACE and "
                "the credentials; retried with backoff until fixed",
                ev.id,
                ", ".join(f"{k} ({r})" for k, r in sorted(reach.misconfigured.items())),
            )
        if reach.refused:  # ids and status codes only
            log.error(
                "event %s: Temporal refused delivery to %s; not retried",
                ev.id,
                ", ".join(f"{k} ({r})" for k, r in sorted(reach.refused.items())),
            )
    await _insert_runs(ctx, writes)
    await s.commit()
    # Segments on {"journey": KEY} see the contacts that just entered.
    await contacts_changed(
        ctx,
        [(r["contact_id"], f"journey:{r['journey_key']}") for r in writes.runs],
    )


async def _insert_runs(ctx: ServiceContext, writes: _Writes) -> None:
    """Run rows of the runs started, with their trigger event (the workflow's own first
    record may have written the row already: the trigger is added to it), and triggers
    learnt from Temporal for rows that lacked them."""
    await insert_runs(ctx, writes.runs, commit=False, set_trigger=True)
    if writes.triggers:
        await ctx.session.execute(
            text(
                "UPDATE run SET trigger_event_id = :event WHERE id = :id "
                "AND trigger_event_id IS NULL"
            ),
            [{"id": rid, "event": ev_id} for rid, ev_id in writes.triggers.items()],
        )
