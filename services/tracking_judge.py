"""The background judge: classify recorded opens and clicks, store verdicts, signal humans.

The queue is the database itself: `tracking_event` rows with `verdict IS NULL` wait to be
judged, human rows with `signal_result IS NULL` wait to be signalled. A crash loses
nothing (the rows stay queued) and several API processes share the work:

- a message's events must be judged in order by one classifier, so a judge takes a
  per-message transaction-scoped advisory lock (skipping messages another process holds)
  and then the message's pending rows with SELECT ... FOR UPDATE SKIP LOCKED;
- the signaller takes human rows with FOR UPDATE SKIP LOCKED, signals the run that sent
  the message, and records the outcome, so each event is signalled once.

Per-message classifier state is cached in memory and rebuilt from the stored events
(replayed in time order) when this process has not seen the message or another
process has judged some of its events since.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from classifier import Classifier, TrackingEvidence, Verdict
from classifier.classifier import DEFAULT_HORIZON
from core.config import Settings
from core.db import Database
from core.models import Run, Send, TrackedLink, TrackingEvent, utcnow
from services.context import ServiceContext
from services.network_list import ActiveList, NetworkListCache
from services.report_rollup import on_tracking_verdict
from services.segment_membership import on_contact_changed
from workflows.types import EngagementSignal

log = logging.getLogger("journeys.tracking.judge")

ENGAGEMENT_SIGNAL = "engagement"

# Signal outcomes stored in tracking_event.signal_result.
SIGNAL_SENT = "sent"
SIGNAL_RUN_ENDED = "run_ended"  # the run that sent the message is no longer running
SIGNAL_NO_RUN = "no_run"  # the message was not sent by a run (or its run row is gone)
SIGNAL_RPC_TIMEOUT = timedelta(seconds=5)

# Reason stored when the classifier itself failed on an event (a bug, never evidence).
JUDGE_ERROR = "judge_error"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    """Judges and signals in a loop; `notify()` wakes it as soon as a hit is recorded."""

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
    ) -> None:
        self.db = db
        self.settings = settings
        self.temporal = temporal
        self.batch_messages = batch_messages
        self.signal_batch = signal_batch
        self.poll_interval = poll_interval
        self.max_cached = max_cached_messages
        self._networks = NetworkListCache(settings.home)
        self._active: ActiveList | None = None
        self._cache: OrderedDict[str, _MessageState] = OrderedDict()
        self._wake = asyncio.Event()
        self._changed: list[tuple[TrackingEvent, str | None]] = []
        self._engaged_sends: set[str] = set()
        self._segments_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="tracking-judge")

    async def stop(self) -> None:
        if self._segments_task is not None:
            await asyncio.gather(self._segments_task, return_exceptions=True)
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def notify(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
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
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
            except TimeoutError:
                pass

    async def work_once(self) -> int:
        """Judge what is queued, signalling new human events after every batch (so a
        backlog never holds a person's click back). Returns the rows handled."""
        handled = 0
        while True:
            judged = await self.judge_pending()
            handled += judged + await self.signal_pending()
            self._schedule_segments()  # off the loop: a click never waits on segments
            if judged == 0:
                return handled

    # --- judging ----------------------------------------------------------
    def _index_changed(self) -> ActiveList:
        active = self._networks.get()
        if active is not self._active:
            self._active = active
            self._cache.clear()  # classifiers hold the old list
        return active

    async def judge_pending(self) -> int:
        """Judge the queued events of up to `batch_messages` messages in one transaction."""
        active = self._index_changed()
        try:
            return await self._judge_batch(active)
        except BaseException:
            # Classifiers may hold verdicts that were never committed: start afresh.
            self._cache.clear()
            self._changed = []
            raise

    async def _judge_batch(self, active: ActiveList) -> int:
        async with self.db.session() as s:
            candidates = (
                await s.exec(
                    select(TrackingEvent.send_id)
                    .where(col(TrackingEvent.verdict).is_(None))
                    .group_by(col(TrackingEvent.send_id))
                    .order_by(func.min(TrackingEvent.at))
                    # A few more than we take: some may be held by another process.
                    .limit(self.batch_messages * 2)
                )
            ).all()
            if not candidates:
                return 0
            locked = [
                r[0]
                for r in (
                    await s.exec(
                        _LOCK_SQL, params={"ids": list(candidates), "n": self.batch_messages}
                    )  # type: ignore[call-overload]
                ).all()
            ]
            if not locked:
                await s.rollback()
                return 0
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
                return 0
            facts = await self._send_facts(s, locked)
            counts = await self._judged_counts(s, locked)
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
            await self._report_verdicts(s)
            await s.commit()
        return len(pending)

    async def _send_facts(self, s: AsyncSession, send_ids: Sequence[str]) -> dict[str, _SendFacts]:
        sends = {
            r.id: r for r in (await s.exec(select(Send).where(col(Send.id).in_(send_ids)))).all()
        }
        link_counts: dict[str, int] = {
            sid: int(n)
            for sid, n in (
                await s.exec(
                    select(TrackedLink.send_id, func.count())
                    .where(col(TrackedLink.send_id).in_(send_ids))
                    .where(TrackedLink.kind == "click")
                    .group_by(col(TrackedLink.send_id))
                )
            ).all()
        }
        out: dict[str, _SendFacts] = {}
        for sid in send_ids:
            send = sends.get(sid)
            links = link_counts.get(sid, 0)
            if send is not None and send.sent_at is not None:
                out[sid] = _SendFacts(send.sent_at, True, links)
            elif send is not None:
                out[sid] = _SendFacts(send.created_at, False, links)
            else:
                # No ledger row (should not happen: links are written with their send).
                # The epoch makes timing evidence neutral rather than "too fast".
                out[sid] = _SendFacts(_EPOCH, False, links)
        return out

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
        self._changed.append((row, previous))

    async def _report_verdicts(self, s: AsyncSession) -> None:
        """Report counts move in the judging transaction, so they never disagree with the
        stored verdicts (a revision moves a count from human to automated)."""
        changed, self._changed = self._changed, []
        if not changed:
            return
        await s.flush()  # the rollup reads the rows with SQL of its own
        for row, previous in changed:
            await on_tracking_verdict(s, row, previous)
        # Behavioural segments ("opened in the last 90 days") read human verdicts.
        self._engaged_sends.update(
            row.send_id for row, previous in changed if "human" in (row.verdict, previous)
        )

    def _schedule_segments(self) -> None:
        if self._engaged_sends and (self._segments_task is None or self._segments_task.done()):
            self._segments_task = asyncio.create_task(self._segments_loop())

    async def _segments_loop(self) -> None:
        while self._engaged_sends:
            try:
                await self._update_segments()
            except Exception as exc:  # the verdicts are stored; the sweep catches up later
                log.error("segment refresh after verdicts failed: %s", type(exc).__name__)
                return

    async def _update_segments(self) -> None:
        """After the verdicts commit: re-evaluate the engaged contacts' segments."""
        send_ids, self._engaged_sends = self._engaged_sends, set()
        if not send_ids:
            return
        async with self.db.session() as s:
            contact_ids = set(
                (await s.exec(select(Send.contact_id).where(col(Send.id).in_(send_ids)))).all()
            )
            ctx = ServiceContext(s, self.settings, self.temporal)
            for contact_id in contact_ids:
                await on_contact_changed(ctx, contact_id, kinds={"engagement"})

    # --- signalling -------------------------------------------------------
    async def signal_pending(self) -> int:
        if self.temporal is None:
            return 0  # stays queued until a Temporal client is available
        async with self.db.session() as s:
            rows: list[Any] = list(
                (
                    await s.exec(
                        select(TrackingEvent, Send, Run)
                        .join(Send, col(Send.id) == col(TrackingEvent.send_id), isouter=True)
                        .join(Run, col(Run.id) == col(Send.run_id), isouter=True)
                        .where(TrackingEvent.verdict == "human")
                        .where(col(TrackingEvent.signal_result).is_(None))
                        .order_by(col(TrackingEvent.at))
                        .limit(self.signal_batch)
                        .with_for_update(of=TrackingEvent, skip_locked=True)  # type: ignore[arg-type]
                    )
                ).all()
            )
            if not rows:
                return 0
            for event, send, run in rows:
                result = await self._signal(event, send, run)
                if result is None:
                    continue  # Temporal unreachable: leave queued
                event.signal_result = result
                if result == SIGNAL_SENT:
                    event.signalled = True
                    event.signalled_at = utcnow()
                s.add(event)
            await s.commit()
            return len(rows)

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
            if exc.status == RPCStatusCode.NOT_FOUND:
                return SIGNAL_RUN_ENDED
            log.warning("engagement signal not delivered (%s); will retry", exc.status.name)
            return None
        return SIGNAL_SENT
