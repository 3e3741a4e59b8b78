"""The background judge: classify recorded opens and clicks, store verdicts, signal humans.

The queue is the database itself: `tracking_event` rows with `verdict IS NULL` wait to be
judged, human rows with `signal_result IS NULL` wait to be signalled. A crash loses
nothing (the rows stay queued) and several API processes share the work:

- a message's events must be judged in order by one classifier, so a judge takes a
  per-message transaction-scoped advisory lock (skipping messages another process holds)
  and then the message's pending rows with SELECT ... FOR UPDATE SKIP LOCKED;
- the judging transaction signals the runs of the events it judged human (their rows
  are locked by it) and stores the outcomes with the verdicts. Should that commit fail
  after a signal went out, the event is judged and signalled again and the workflow
  drops the repeat (it keeps the tracking_event_ids it has seen);
- a sweep takes human rows still unsignalled (Temporal was unreachable) with FOR UPDATE
  SKIP LOCKED, signals and records the outcome, so each event is signalled by one
  transaction.

Per-message classifier state is cached in memory and rebuilt from the stored events
(replayed in time order) when this process has not seen the message or another
process has judged some of its events since.

Latency (a person's click should move their journey within a second, even in a burst):
- up to `judge_tasks` judging transactions are in flight, each over its own share of
  the queued messages; as soon as one commits (or a hit arrives) the queue is read
  again, so a new hit waits for the first free slot, never for a whole round;
- humans are signalled inside the judging transaction, concurrently (bounded), before
  the report rollup and the commit: no second transaction on the click's path;
- the loop wakes on `notify()` (hits recorded in this process) and on PostgreSQL
  `NOTIFY tracking_hits` (hits recorded by any API process), with a poll as fallback;
- report counts are rolled up once per transaction, and behavioural-segment refreshes
  run beside the loop, batched, never on the click's path.

A judge runs inside the API process (TRACKING_JUDGE_IN_API=true, the default) or alone
(`journeys judge`); any number of both share the queue through the locks above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import func, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError

from classifier import Classifier, TrackingEvidence, Verdict
from classifier.classifier import DEFAULT_HORIZON
from core.config import Settings
from core.db import Database
from core.models import Run, Send, TrackedLink, TrackingEvent, utcnow
from services.context import ServiceContext
from services.network_list import ActiveList, NetworkListCache
from services.report_rollup import ids as rollup_ids
from services.report_rollup import rollup_tracking
from services.segment_membership import on_contacts_changed
from services.temporal_errors import misconfigured, refusal_code, run_not_found, transient
from services.tracking_buffer import NOTIFY_CHANNEL, libpq_url
from workflows.types import EngagementSignal

log = logging.getLogger("journeys.tracking.judge")

ENGAGEMENT_SIGNAL = "engagement"
# PostgreSQL channel an API process notifies after committing hits.
HITS_CHANNEL = NOTIFY_CHANNEL  # what the hit writer notifies
HELD_ELSEWHERE_PAUSE = 0.25  # seconds before retrying messages another judge holds
LISTENER_NAME = "journeys-judge"  # + "-<pid>": the listener in pg_stat_activity

# Signal outcomes stored in tracking_event.signal_result.
SIGNAL_SENT = "sent"
SIGNAL_RUN_ENDED = "run_ended"  # the run that sent the message is no longer running
SIGNAL_NO_RUN = "no_run"  # the message was not sent by a run (or its run row is gone)
# Temporal refused the signal for good (not transient, not misconfigured, not a closed
# run; a misconfigured namespace or credentials are retried instead): "refused:<code>".
SIGNAL_REFUSED = "refused"
SIGNAL_RPC_TIMEOUT = timedelta(seconds=5)

# Reason stored when the classifier itself failed on an event (a bug, never evidence).
JUDGE_ERROR = "judge_error"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CHANGED = "tracking_judge_changed"  # session.info key: verdicts stored in this transaction

# Per-message mutex held until commit. The LIMIT stops at `n` locks taken, leaving the
# other candidates to a second process.
_LOCK_SQL = text(
    "SELECT id FROM unnest(CAST(:ids AS text[])) AS id "
    "WHERE pg_try_advisory_xact_lock(hashtextextended('tracking_event:' || id, 0)) LIMIT :n"
)


@dataclass
class _MessageState:
    """What this process knows of one message: its classifier and how many verdicts it holds."""

    classifier: Classifier
    judged: int
    links: int
    sent_at: datetime | None


@dataclass(frozen=True)
class _SendFacts:
    sent_at: datetime
    exact: bool  # False while sent_at is still unknown (created_at stands in)
    links: int


def _share(items: Sequence[str], n: int, most: int) -> list[list[str]]:
    """Up to `n` slices of at most `most` items, dealt round-robin so that every slice
    starts with one of the oldest."""
    if n <= 0:
        return []
    return [list(items[i::n][:most]) for i in range(n)]


def judge_one(classifier: Classifier, row: TrackingEvent, facts: _SendFacts) -> list[Verdict]:
    """The classifier's verdicts for a stored event; a fault in judging one event gives
    that event `unknown` instead of blocking its message's queue for ever."""
    try:
        return classifier.judge(evidence_of(row, facts))
    except Exception as exc:
        log.error("classifier failed on one event: %s", type(exc).__name__)
        return [Verdict(row.id, "unknown", JUDGE_ERROR, 0.0)]


def evidence_of(row: TrackingEvent, facts: _SendFacts) -> TrackingEvidence:
    """The classifier's view of a stored event and what is known of its message."""
    headers = {str(k): str(v) for k, v in (row.headers or {}).items()}
    headers.setdefault("accept", "")
    return TrackingEvidence(
        id=row.id,
        kind="open" if row.kind == "open" else "click",
        message_id=row.send_id,
        link=row.link,
        links_in_message=facts.links,
        sent_at=facts.sent_at,
        at=row.at,
        ip=row.ip or "",
        method=(row.method or "GET").upper(),
        user_agent=row.user_agent or "",
        headers=headers,
    )


class TrackingJudge:
    """Judges and signals in a loop; `notify()` (or NOTIFY tracking_hits) wakes it."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        temporal: Client | None,
        *,
        batch_messages: int = 50,
        signal_batch: int = 100,
        poll_interval: float = 1.0,
        max_cached_messages: int = 20_000,
        judge_tasks: int = 4,
        signal_concurrency: int = 16,
        listen: bool = True,
        segment_delay: float = 0.25,
    ) -> None:
        self.db = db
        self.settings = settings
        self.temporal = temporal
        self.batch_messages = batch_messages
        self.signal_batch = signal_batch
        self.poll_interval = poll_interval
        self.max_cached = max_cached_messages
        self.judge_tasks = max(1, judge_tasks)
        self.listen = listen
        self.segment_delay = segment_delay
        self._signal_slots = asyncio.Semaphore(max(1, signal_concurrency))
        self._networks = NetworkListCache(settings.home)
        self._active: ActiveList | None = None
        self._cache: OrderedDict[str, _MessageState] = OrderedDict()
        self._wake = asyncio.Event()
        self._engaged_sends: set[str] = set()
        self._segments_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self.listening = False  # LISTEN tracking_hits is in effect
        self.notifications = 0  # NOTIFYs heard over LISTEN

    # --- lifecycle --------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="tracking-judge")
        if self.listen and (self._listen_task is None or self._listen_task.done()):
            self._listen_task = asyncio.create_task(self._listen(), name="tracking-judge-listen")

    async def stop(self) -> None:
        for attr in ("_listen_task", "_task"):
            task = getattr(self, attr)
            setattr(self, attr, None)
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._segments_task is not None:
            await asyncio.gather(self._segments_task, return_exceptions=True)

    def notify(self) -> None:
        self._wake.set()

    async def warm_up(self) -> None:
        """Load the network list and open a connection per judging slot now, so the first
        click after a start does not pay for them."""
        self._index_changed()

        async def ping() -> None:
            async with self.db.session() as s:
                await s.exec(text("SELECT 1"))  # type: ignore[call-overload]

        await asyncio.gather(*(ping() for _ in range(self.judge_tasks)))
        await self._candidates([])

    async def _run(self) -> None:
        try:
            await self.warm_up()
        except Exception as exc:  # the rounds retry whatever this could not do
            log.error("judge warm-up failed: %s", type(exc).__name__)
        backoff = self.poll_interval
        while True:
            self._wake.clear()
            try:
                worked = await self.work_once()
                backoff = self.poll_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep judging; the rows stay queued
                # Type only: messages could quote event data.
                log.error("tracking judge round failed: %s", type(exc).__name__)
                worked = 0
                backoff = min(backoff * 2, 30.0)
            if worked:
                continue  # there may be more queued
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancellation that lands as the wake-up does, and this loop then never stops
            # (seen: an API lifespan shutdown waiting for ever on the judge).
            try:
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _listen(self) -> None:
        """LISTEN on a connection of its own (a pooled one would be handed to others);
        reconnects with a backoff, and the poll covers the gaps."""
        conninfo = libpq_url(self.db)
        delay = 0.5
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, application_name=f"{LISTENER_NAME}-{os.getpid()}"
                )
                async with conn:
                    await conn.execute(f"LISTEN {HITS_CHANNEL}")
                    self.listening = True
                    delay = 0.5
                    self.notify()  # hits committed before LISTEN took effect
                    async for _ in conn.notifies():
                        self.notifications += 1
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "LISTEN %s lost (%s); polling meanwhile", HITS_CHANNEL, type(exc).__name__
                )
            finally:
                self.listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def work_once(self) -> int:
        """Judge (and signal) what is queued until nothing is, then sweep up human events
        left unsignalled (Temporal was unreachable, or the process stopped in between).
        Returns the rows handled."""
        judged = await self.judge_pending()
        self._schedule_segments()
        return judged + await self.signal_pending()

    # --- judging ----------------------------------------------------------
    def _index_changed(self) -> ActiveList:
        active = self._networks.get()
        if active is not self._active:
            self._active = active
            self._cache.clear()  # classifiers hold the old list
        return active

    async def judge_pending(self) -> int:
        """Judge what is queued until nothing is, in up to `judge_tasks` transactions at
        once. Whenever one commits (or a hit arrives) and a slot is free, the queue is read
        again and its messages are shared out between the free slots, so a new hit waits
        for the first free slot, never for a whole round. Messages in flight here are left
        out; other processes' are skipped by their advisory locks. Returns events judged."""
        active = self._index_changed()
        inflight: dict[asyncio.Future[tuple[int, int]], list[str]] = {}
        total = 0
        failure: BaseException | None = None
        swept = time.monotonic()
        sweep: asyncio.Task[int] | None = None
        woken: asyncio.Task[bool] | None = None
        elsewhere: dict[str, float] = {}  # message -> when to try it again
        try:
            while True:
                rearm = woken is None or woken.done()
                if rearm:
                    self._wake.clear()  # before reading the queue: a later hit wakes us
                free = self.judge_tasks - len(inflight)
                if free and failure is None:
                    now = time.monotonic()
                    held = [sid for ids in inflight.values() for sid in ids]
                    held += [sid for sid, until in elsewhere.items() if until > now]
                    candidates = await self._candidates(held)
                    for part in _share(candidates, min(free, len(candidates)), self.batch_messages):
                        inflight[asyncio.ensure_future(self._judge_slice(active, part))] = part
                if not inflight:
                    break
                if rearm:
                    woken = asyncio.create_task(self._wake.wait())
                assert woken is not None
                waiting: list[asyncio.Future[Any]] = [*inflight, woken]
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for fut, part in list(inflight.items()):
                    if fut not in done:
                        continue
                    del inflight[fut]
                    try:
                        judged = fut.result()[0]
                        total += judged
                        if not judged:
                            # Held by another process (or judged meanwhile): do not ask
                            # for them again at once, or this loop would spin until the
                            # holder commits. The holder judges what comes in meanwhile.
                            until = time.monotonic() + HELD_ELSEWHERE_PAUSE
                            elsewhere.update(dict.fromkeys(part, until))
                    except Exception as exc:
                        # Their classifiers may hold verdicts that were never committed.
                        for send_id in part:
                            self._cache.pop(send_id, None)
                        failure = failure or exc
                self._schedule_segments()
                if time.monotonic() - swept > self.poll_interval and (
                    sweep is None or sweep.done()
                ):
                    # A long burst must not hold back what the sweep would signal.
                    sweep = asyncio.create_task(self.signal_pending())
                    swept = time.monotonic()
        finally:
            if woken is not None:
                woken.cancel()
            rest: list[asyncio.Future[Any]] = [*inflight, *([sweep] if sweep else [])]
            if rest:
                await asyncio.gather(*rest, return_exceptions=True)
        if failure is not None:
            raise failure
        return total

    async def _candidates(self, held: Sequence[str]) -> list[str]:
        """Messages with queued events, oldest first, leaving out those in flight here."""
        query = (
            select(TrackingEvent.send_id)
            .where(col(TrackingEvent.verdict).is_(None))
            .group_by(col(TrackingEvent.send_id))
            .order_by(func.min(TrackingEvent.at))
            .limit(self.batch_messages * self.judge_tasks)
        )
        if held:
            query = query.where(col(TrackingEvent.send_id).not_in(held))
        async with self.db.session() as s:
            return list((await s.exec(query)).all())

    async def _judge_slice(self, active: ActiveList, candidates: list[str]) -> tuple[int, int]:
        started = time.perf_counter()
        judged, signalled = await self._judge_batch(active, candidates)
        if judged:
            log.debug(
                "judged %d events (%d signalled) in %.0f ms",
                judged,
                signalled,
                (time.perf_counter() - started) * 1000,
            )
        return judged, signalled

    async def _judge_batch(self, active: ActiveList, candidates: list[str]) -> tuple[int, int]:
        """One transaction: lock the candidate messages no other process holds, judge
        their queued events in order, signal the runs of the humans, store verdicts,
        signal outcomes and report counts together. Returns (judged, signalled).

        Signalling before the commit saves a transaction on the click's path. If the
        commit then fails, the events are judged and signalled again: the workflow drops
        an engagement whose tracking_event_id it has already seen."""
        async with self.db.session() as s:
            locked = [
                r[0]
                for r in (
                    await s.exec(_LOCK_SQL, params={"ids": candidates, "n": len(candidates)})  # type: ignore[call-overload]
                ).all()
            ]
            if not locked:
                await s.rollback()
                return 0, 0
            pending = (
                await s.exec(
                    select(TrackingEvent)
                    .where(col(TrackingEvent.verdict).is_(None))
                    .where(col(TrackingEvent.send_id).in_(locked))
                    .order_by(
                        col(TrackingEvent.send_id), col(TrackingEvent.at), col(TrackingEvent.id)
                    )
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not pending:
                await s.rollback()
                return 0, 0
            sends, runs, facts, counts = await self._message_facts(s, locked)
            now = utcnow()
            by_send: dict[str, list[TrackingEvent]] = {}
            for row in pending:
                by_send.setdefault(row.send_id, []).append(row)
            for send_id, rows in by_send.items():
                state = await self._state_for(
                    s, send_id, facts[send_id], counts.get(send_id, 0), active
                )
                batch = {r.id: r for r in rows}
                for row in rows:
                    verdicts = judge_one(state.classifier, row, facts[send_id])
                    own, revisions = verdicts[0], verdicts[1:]
                    row.verdict, row.reason = own.verdict, own.reason
                    row.confidence = round(own.confidence, 4)
                    row.first_verdict, row.first_reason = own.verdict, own.reason
                    row.judged_at = now
                    state.judged += 1
                    s.add(row)
                    await self._verdict_changed(s, row, None)
                    await self._apply_revisions(s, revisions, batch, now)
            # Final verdicts: a later event in this batch may have revised an earlier one.
            humans = [r for r in pending if r.verdict == "human" and r.signal_result is None]
            signalled = await self._signal_rows(s, humans, sends, runs) if humans else 0
            await self._report_verdicts(s)
            await s.commit()
        return len(pending), signalled

    async def _message_facts(
        self, s: AsyncSession, send_ids: Sequence[str]
    ) -> tuple[dict[str, Send], dict[str, Run], dict[str, _SendFacts], dict[str, int]]:
        """In one query: each message's send row and run, its click-link count and how
        many of its events are judged already (one round trip on the click's path)."""
        links = (
            select(func.count())
            .where(col(TrackedLink.send_id) == col(Send.id))
            .where(TrackedLink.kind == "click")
            .scalar_subquery()
        )
        judged = (
            select(func.count())
            .where(col(TrackingEvent.send_id) == col(Send.id))
            .where(col(TrackingEvent.verdict).is_not(None))
            .scalar_subquery()
        )
        rows = (
            await s.exec(
                select(Send, Run, links, judged)
                .join(Run, col(Run.id) == col(Send.run_id), isouter=True)
                .where(col(Send.id).in_(send_ids))
            )
        ).all()
        sends: dict[str, Send] = {}
        runs: dict[str, Run] = {}
        facts: dict[str, _SendFacts] = {}
        counts: dict[str, int] = {}
        for send, run, n_links, n_judged in rows:
            sends[send.id] = send
            if run is not None:
                runs[run.id] = run
            when = send.sent_at or send.created_at
            facts[send.id] = _SendFacts(when, send.sent_at is not None, int(n_links))
            counts[send.id] = int(n_judged)
        missing = [sid for sid in send_ids if sid not in sends]
        if missing:
            # No ledger row (should not happen: links are written with their send).
            # The epoch makes timing evidence neutral rather than "too fast".
            counts |= await self._judged_counts(s, missing)
            for sid in missing:
                facts[sid] = _SendFacts(_EPOCH, False, 0)
        return sends, runs, facts, counts

    async def _judged_counts(self, s: AsyncSession, send_ids: Sequence[str]) -> dict[str, int]:
        rows = (
            await s.exec(
                select(TrackingEvent.send_id, func.count())
                .where(col(TrackingEvent.send_id).in_(send_ids))
                .where(col(TrackingEvent.verdict).is_not(None))
                .group_by(col(TrackingEvent.send_id))
            )
        ).all()
        return {sid: int(n) for sid, n in rows}

    async def _state_for(
        self, s: AsyncSession, send_id: str, facts: _SendFacts, judged: int, active: ActiveList
    ) -> _MessageState:
        state = self._cache.get(send_id)
        if (
            state is not None
            and state.judged == judged
            and state.links == facts.links
            and state.sent_at == facts.sent_at
        ):
            self._cache.move_to_end(send_id)
            return state
        state = _MessageState(Classifier(active.index), 0, facts.links, facts.sent_at)
        if judged:
            await self._replay(s, send_id, facts, state)
        state.judged = judged
        if facts.exact:
            self._cache[send_id] = state
            self._cache.move_to_end(send_id)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return state

    async def _replay(
        self, s: AsyncSession, send_id: str, facts: _SendFacts, state: _MessageState
    ) -> None:
        """Rebuild the message's classifier memory from its judged events, oldest first.

        Only the classifier's horizon matters: older events are forgotten by it anyway.
        """
        newest = (
            await s.exec(
                select(func.max(TrackingEvent.at))
                .where(TrackingEvent.send_id == send_id)
                .where(col(TrackingEvent.verdict).is_not(None))
            )
        ).one()
        if newest is None:
            return
        since = newest - DEFAULT_HORIZON - timedelta(seconds=1)
        rows = (
            await s.exec(
                select(TrackingEvent)
                .where(TrackingEvent.send_id == send_id)
                .where(col(TrackingEvent.verdict).is_not(None))
                .where(col(TrackingEvent.at) >= since)
                .order_by(col(TrackingEvent.at), col(TrackingEvent.id))
            )
        ).all()
        for row in rows:
            judge_one(state.classifier, row, facts)

    async def _apply_revisions(
        self,
        s: AsyncSession,
        revisions: Sequence[Verdict],
        batch: dict[str, TrackingEvent],
        now: datetime,
    ) -> None:
        """Earlier events this one re-judges. A human event already signalled stays signalled
        (a signal cannot be taken back); the revision is recorded on the row all the same."""
        for rev in revisions:
            row = batch.get(rev.id)
            if row is None:
                row = (
                    await s.exec(
                        select(TrackingEvent).where(TrackingEvent.id == rev.id).with_for_update()
                    )
                ).first()
            if row is None or row.verdict == rev.verdict:
                continue
            previous = row.verdict
            row.verdict, row.reason = rev.verdict, rev.reason
            row.confidence = round(rev.confidence, 4)
            row.revised_at = now
            s.add(row)
            await self._verdict_changed(s, row, previous)

    async def _verdict_changed(
        self, s: AsyncSession, row: TrackingEvent, previous: str | None
    ) -> None:
        """Every stored verdict passes here: a first verdict (previous None) or a revision
        (previous = the verdict it replaces). Handed to the reports rollup before commit."""
        s.info.setdefault(_CHANGED, []).append((row, previous))

    async def _report_verdicts(self, s: AsyncSession) -> None:
        """Report counts move in the judging transaction, so they never disagree with the
        stored verdicts (a revision moves a count from human to automated). One rollup
        for the whole transaction: it recounts each event from its stored row."""
        changed: list[tuple[TrackingEvent, str | None]] = s.info.pop(_CHANGED, [])
        if not changed:
            return
        await s.flush()  # the rollup reads the rows with SQL of its own
        await rollup_tracking(s, rollup_ids(dict.fromkeys(row.id for row, _ in changed)))
        # Behavioural segments ("opened in the last 90 days") read human verdicts.
        self._engaged_sends.update(
            row.send_id for row, previous in changed if "human" in (row.verdict, previous)
        )

    # --- behavioural segments ---------------------------------------------
    def _schedule_segments(self) -> None:
        if self._engaged_sends and (self._segments_task is None or self._segments_task.done()):
            self._segments_task = asyncio.create_task(self._segments_loop())

    async def _segments_loop(self) -> None:
        while self._engaged_sends:
            # A short pause gathers a burst's contacts into one refresh, and leaves the
            # event loop and the database to the clicks meanwhile.
            await asyncio.sleep(self.segment_delay)
            try:
                await self._update_segments()
            except Exception as exc:  # the verdicts are stored; the sweep catches up later
                log.error("segment refresh after verdicts failed: %s", type(exc).__name__)
                return

    async def _update_segments(self) -> None:
        """After the verdicts commit: re-evaluate the engaged contacts' segments, all in
        one refresh (one query per affected segment, not one round per contact)."""
        send_ids, self._engaged_sends = self._engaged_sends, set()
        if not send_ids:
            return
        started = time.perf_counter()
        async with self.db.session() as s:
            contact_ids = sorted(
                set((await s.exec(select(Send.contact_id).where(col(Send.id).in_(send_ids)))).all())
            )
            await s.commit()
            ctx = ServiceContext(s, self.settings, self.temporal)
            await on_contacts_changed(ctx, contact_ids, kinds={"engagement"})
        log.debug(
            "segments refreshed for %d contacts in %.0f ms",
            len(contact_ids),
            (time.perf_counter() - started) * 1000,
        )

    # --- signalling -------------------------------------------------------
    async def signal_pending(self) -> int:
        """The sweep: take up to `signal_batch` human rows left unsignalled (Temporal was
        unreachable when they were judged) with FOR UPDATE SKIP LOCKED, signal their runs
        concurrently, store the outcomes. Returns the rows handled."""
        if self.temporal is None:
            return 0  # stays queued until a Temporal client is available
        query = (
            select(TrackingEvent, Send, Run)
            .join(Send, col(Send.id) == col(TrackingEvent.send_id), isouter=True)
            .join(Run, col(Run.id) == col(Send.run_id), isouter=True)
            .where(TrackingEvent.verdict == "human")
            .where(col(TrackingEvent.signal_result).is_(None))
        )
        async with self.db.session() as s:
            rows: list[Any] = list(
                (
                    await s.exec(
                        query.order_by(col(TrackingEvent.at))
                        .limit(self.signal_batch)
                        .with_for_update(of=TrackingEvent, skip_locked=True)  # type: ignore[arg-type]
                    )
                ).all()
            )
            if not rows:
                return 0
            await self._signal_all(s, rows)
            await s.commit()
            return len(rows)

    async def _signal_rows(
        self,
        s: AsyncSession,
        events: Sequence[TrackingEvent],
        sends: dict[str, Send],
        runs: dict[str, Run],
    ) -> int:
        """Signal, inside the judging transaction, the runs of events judged human there."""
        if self.temporal is None:
            return 0  # the sweep signals them once a client is there
        rows = []
        for event in events:
            send = sends.get(event.send_id)
            rows.append((event, send, runs.get(send.run_id) if send is not None else None))
        return await self._signal_all(s, rows)

    async def _signal_all(
        self, s: AsyncSession, rows: Sequence[tuple[TrackingEvent, Send | None, Run | None]]
    ) -> int:
        """Concurrent signals (bounded); each outcome is stored on its row (in `s`).
        Returns how many reached a run."""
        results = await asyncio.gather(
            *(self._signal_bounded(event, send, run) for event, send, run in rows)
        )
        now = utcnow()
        for (event, _, _), result in zip(rows, results, strict=True):
            if result is None:
                continue  # Temporal unreachable: leave queued
            event.signal_result = result
            if result == SIGNAL_SENT:
                event.signalled = True
                event.signalled_at = now
            s.add(event)
        return sum(1 for r in results if r == SIGNAL_SENT)

    async def _signal_bounded(
        self, event: TrackingEvent, send: Send | None, run: Run | None
    ) -> str | None:
        async with self._signal_slots:
            return await self._signal(event, send, run)

    async def _signal(self, event: TrackingEvent, send: Send | None, run: Run | None) -> str | None:
        assert self.temporal is not None
        if send is None or run is None:
            return SIGNAL_NO_RUN
        if run.status != "running":
            return SIGNAL_RUN_ENDED
        payload = EngagementSignal(
            tracking_event_id=event.id,
            send_id=send.id,
            step=send.step,
            kind=event.kind,
            link=event.link,
            at=event.at,
        )
        try:
            await self.temporal.get_workflow_handle(run.workflow_id).signal(
                ENGAGEMENT_SIGNAL, payload, rpc_timeout=SIGNAL_RPC_TIMEOUT
            )
        except RPCError as exc:
            if run_not_found(exc):  # (a namespace not found is no ended run)
                return SIGNAL_RUN_ENDED
            if transient(exc):
                log.warning("engagement signal not delivered (%s); will retry", exc.status.name)
                return None
            if misconfigured(exc):  # an operator fixes it: stays queued, loudly
                log.error(
                    "engagement signal %s refused by Temporal (%s): check TEMPORAL_NAMESPACE "
                    "and the credentials; will retry",
                    event.id,
                    refusal_code(exc),
                )
                return None
            # A data problem: retrying for ever would not cure it.
            log.error(
                "engagement signal %s refused by Temporal (%s); not retried",
                event.id,
                refusal_code(exc),
            )
            return f"{SIGNAL_REFUSED}:{refusal_code(exc)}"
        return SIGNAL_SENT


async def serve(settings: Settings, *, stop: asyncio.Event | None = None, **tuning: Any) -> None:
    """`journeys judge`: one judge on its own until `stop` is set (or cancelled)."""
    from core.temporal import connect

    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (journeys dev sets it for you)")
    db = Database(settings.database_url)
    judge = TrackingJudge(db, settings, await connect(settings), **tuning)
    judge.start()
    log.info(
        "tracking judge running (LISTEN %s, poll every %.1fs)", HITS_CHANNEL, judge.poll_interval
    )
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await judge.stop()
        await db.dispose()
