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
  the queued messages; as soon as one commits (or hits arrive) the queue is read again,
  so a new hit waits at most for a transaction in flight, never for a whole round;
- humans are signalled inside the judging transaction, concurrently (bounded), before
  the report rollup and the commit: no second transaction on the click's path;
- the loop wakes on `notify()` (hits recorded in this process) and on PostgreSQL
  `NOTIFY tracking_hits` (hits recorded by any API process), with a poll as fallback;
- report counts are rolled up once per transaction, and behavioural-segment refreshes
  run beside the loop, batched, never on the click's path.

CPU (the burst is CPU-bound on small machines): a judging transaction is two round trips
of prepared, driver-level statements on the judge's own psycopg connections (no ORM, no
pool checkout ping): [lock; pending rows; message facts] in one pipeline, then, after the
signals, [verdict updates; report rollup; COMMIT] in another. While a transaction is in
flight, another starts only once `min_share` messages are queued for it (fewer wait for
the next commit, and their wake-ups do not read the queue again until `min_share` came);
with nothing in flight a lone hit is judged at once.

A judge runs inside the API process (TRACKING_JUDGE_IN_API=true, the default) or alone
(`journeys judge`); any number of both share the queue through the locks above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from sqlalchemy.orm import configure_mappers
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.service import RPCError

from classifier import Classifier, TrackingEvidence, Verdict
from classifier.classifier import DEFAULT_HORIZON
from core.config import Settings
from core.db import Database
from core.models import Send, utcnow
from services.context import ServiceContext
from services.network_list import ActiveList, NetworkListCache
from services.report_rollup import TRACKING_ROLLUP_OF_EVENTS
from services.segment_membership import affected, on_contacts_changed, rule_segments
from services.temporal_errors import misconfigured, refusal_code, run_not_found, transient
from services.tracking_buffer import NOTIFY_CHANNEL, libpq_url
from workflows.types import EngagementSignal

log = logging.getLogger("journeys.tracking.judge")

ENGAGEMENT_SIGNAL = "engagement"
ENGAGEMENT_KINDS = frozenset({"engagement"})  # what behavioural segments read of verdicts
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

# A browser's user agent, judged once at start (warm_up).
_WARM_UA = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOCKED_SETTING = "journeys.judge_locked"  # transaction-local: the messages a judge locked

# The judging transaction's statements (psycopg parameters; prepared on each of the
# judge's connections with their first use).
#
# Per-message mutex held until commit, skipping messages another transaction holds. The
# messages locked are kept in a transaction-local setting, so that the next statements,
# sent in the same round trip, read them: each statement has its own snapshot, taken
# after the locks were (what another judge committed before releasing one is seen).
_LOCK_SQL = (
    f"SELECT set_config('{LOCKED_SETTING}', coalesce(array_agg(id)::text, '{{}}'), true) "
    "FROM unnest(CAST(%(ids)s AS text[])) AS id "
    "WHERE pg_try_advisory_xact_lock(hashtextextended('tracking_event:' || id, 0))"
)
_LOCKED = f"CAST(current_setting('{LOCKED_SETTING}') AS text[])"
_EVENT_COLUMNS = (
    "te.id, te.send_id, te.kind, te.link, te.at, te.ip, te.method, te.user_agent, te.headers"
)
_PENDING_SQL = (
    f"SELECT {_EVENT_COLUMNS} FROM tracking_event te "
    f"WHERE te.verdict IS NULL AND te.send_id = ANY({_LOCKED}) "
    "ORDER BY te.send_id, te.at, te.id FOR UPDATE SKIP LOCKED"
)
# Each locked message's send row and run, click-link count and judged-event count.
_FACTS_SQL = (
    "SELECT m.id, s.id, s.sent_at, s.created_at, s.step, r.id, r.workflow_id, r.status, "
    "(SELECT count(*) FROM tracked_link l WHERE l.send_id = m.id AND l.kind = 'click'), "
    "(SELECT count(*) FROM tracking_event t WHERE t.send_id = m.id AND t.verdict IS NOT NULL) "
    f"FROM unnest({_LOCKED}) AS m(id) "
    "LEFT JOIN send s ON s.id = m.id LEFT JOIN run r ON r.id = s.run_id"
)
# Judged events of messages whose classifier is rebuilt, within the classifier's horizon
# of each message's newest judged event (older ones it would have forgotten anyway).
_REPLAY_SQL = (
    f"SELECT {_EVENT_COLUMNS} FROM tracking_event te JOIN ("
    "SELECT send_id, max(at) AS newest FROM tracking_event "
    "WHERE send_id = ANY(CAST(%(ids)s AS text[])) AND verdict IS NOT NULL GROUP BY send_id"
    ") n ON n.send_id = te.send_id "
    "WHERE te.verdict IS NOT NULL AND te.at >= n.newest - CAST(%(window)s AS interval) "
    "ORDER BY te.send_id, te.at, te.id"
)
_REVISED_SQL = "SELECT id, send_id, verdict FROM tracking_event WHERE id = %(id)s FOR UPDATE"
# Every row a transaction judged, revised or signalled, in one statement. A null in a
# first-verdict or timestamp column keeps what the row has (a revised earlier event).
_WRITE_SQL = """
UPDATE tracking_event t SET
  verdict = coalesce(v.verdict, t.verdict), reason = coalesce(v.reason, t.reason),
  confidence = coalesce(v.confidence, t.confidence),
  first_verdict = coalesce(v.first_verdict, t.first_verdict),
  first_reason = CASE WHEN v.first_verdict IS NULL THEN t.first_reason ELSE v.first_reason END,
  judged_at = coalesce(v.judged_at, t.judged_at), revised_at = coalesce(v.revised_at, t.revised_at),
  signal_result = coalesce(v.signal_result, t.signal_result),
  signalled = t.signalled OR coalesce(v.signalled, false),
  signalled_at = coalesce(v.signalled_at, t.signalled_at)
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS v(
  id text, verdict text, reason text, confidence float8, first_verdict text, first_reason text,
  judged_at timestamptz, revised_at timestamptz, signal_result text, signalled boolean,
  signalled_at timestamptz)
WHERE t.id = v.id"""
# The sweep's queue: human rows left unsignalled, with what a signal needs.
_UNSIGNALLED_SQL = (
    "SELECT te.id, te.send_id, te.kind, te.link, te.at, s.id, s.step, r.id, r.workflow_id, "
    "r.status FROM tracking_event te LEFT JOIN send s ON s.id = te.send_id "
    "LEFT JOIN run r ON r.id = s.run_id "
    "WHERE te.verdict = 'human' AND te.signal_result IS NULL "
    "ORDER BY te.at LIMIT %(n)s FOR UPDATE OF te SKIP LOCKED"
)
_CANDIDATES_SQL = (
    "SELECT send_id FROM tracking_event WHERE verdict IS NULL "
    "AND NOT (send_id = ANY(CAST(%(held)s AS text[]))) "
    "GROUP BY send_id ORDER BY min(at) LIMIT %(n)s"
)


class _EventLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def link(self) -> str | None: ...
    @property
    def at(self) -> datetime: ...


class _StoredEvent(_EventLike, Protocol):
    """What the classifier reads of a stored event: the judge's _Event rows and the ORM's
    TrackingEvent alike."""

    @property
    def send_id(self) -> str: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def method(self) -> str | None: ...
    @property
    def user_agent(self) -> str | None: ...
    @property
    def headers(self) -> dict[str, Any] | None: ...


class _SendLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def step(self) -> str: ...


class _RunLike(Protocol):
    @property
    def workflow_id(self) -> str: ...
    @property
    def status(self) -> str: ...


@dataclass(slots=True)
class _Event:
    """A tracking_event row as the judge reads and writes it (no ORM object: the judge
    writes what it changed with one UPDATE per transaction)."""

    id: str
    send_id: str
    kind: str
    link: str | None
    at: datetime
    ip: str | None = None
    method: str | None = None
    user_agent: str | None = None
    headers: dict[str, Any] | None = None
    verdict: str | None = None
    reason: str | None = None
    confidence: float | None = None
    first_verdict: str | None = None
    first_reason: str | None = None
    judged_at: datetime | None = None
    revised_at: datetime | None = None
    signal_result: str | None = None
    signalled: bool = False
    signalled_at: datetime | None = None

    def written(self) -> dict[str, Any]:
        """The columns this transaction sets (None: left as stored)."""
        return {
            "id": self.id,
            "verdict": self.verdict,
            "reason": self.reason,
            "confidence": self.confidence,
            "first_verdict": self.first_verdict,
            "first_reason": self.first_reason,
            "judged_at": self.judged_at,
            "revised_at": self.revised_at,
            "signal_result": self.signal_result,
            "signalled": self.signalled,
            "signalled_at": self.signalled_at,
        }


@dataclass(frozen=True, slots=True)
class _SendRow:
    id: str
    step: str


@dataclass(frozen=True, slots=True)
class _RunRow:
    workflow_id: str
    status: str


def _event_of(row: Sequence[Any]) -> _Event:
    return _Event(*row[:9])


def _json_rows(rows: Sequence[_Event]) -> str:
    return orjson.dumps([r.written() for r in rows]).decode()


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


def _slices(queued: int, free: int, busy: int, min_share: int) -> int:
    """How many transactions to start for `queued` messages with `free` slots while
    `busy` are in flight: one per `min_share` messages, and with none in flight at least
    one (a lone click is judged at once). Fewer, larger transactions cost less per click;
    hits that arrive meanwhile wait for the first transaction to commit."""
    if not queued or free <= 0:
        return 0
    n = queued // min_share
    if not busy:
        n = max(1, n)
    return min(free, n)


def _warm_classifier(active: ActiveList) -> None:
    """Judge a made-up browser click once (loads and compiles the user-agent parser)."""
    at = utcnow()
    row = _Event("te_warm_up", "s_warm_up", "click", "warm", at, "192.0.2.1", "GET", _WARM_UA)
    judge_one(Classifier(active.index), row, _SendFacts(at - timedelta(hours=1), True, 1))


def judge_one(classifier: Classifier, row: _StoredEvent, facts: _SendFacts) -> list[Verdict]:
    """The classifier's verdicts for a stored event; a fault in judging one event gives
    that event `unknown` instead of blocking its message's queue for ever."""
    try:
        return classifier.judge(evidence_of(row, facts))
    except Exception as exc:
        log.error("classifier failed on one event: %s", type(exc).__name__)
        return [Verdict(row.id, "unknown", JUDGE_ERROR, 0.0)]


def evidence_of(row: _StoredEvent, facts: _SendFacts) -> TrackingEvidence:
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
        min_share: int = 4,
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
        # While a transaction is in flight, another starts only for this many queued
        # messages (fewer wait for the next free slot: one transaction per click would
        # pay its fixed statements per click). With none in flight, one message is enough.
        self.min_share = max(1, min_share)
        self._idle: list[psycopg.AsyncConnection[Any]] = []  # judging connections
        self._reader: psycopg.AsyncConnection[Any] | None = None  # the loop's queue reads
        self._reader_lock = asyncio.Lock()
        self._swept = 0.0  # when the sweep last ran (monotonic)
        self.transactions = 0  # judging transactions run (tests, benches)
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
        self.wakeups = 0  # notify() calls and NOTIFYs: hits (or batches of hits) recorded

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
        await self._close_connections()

    def notify(self) -> None:
        self.wakeups += 1
        self._wake.set()

    async def warm_up(self) -> None:
        """Load the network list and the classifier's user-agent parser, and open a
        connection per judging slot now, so the first click after a start does not pay
        for them (the parser's first use compiles its patterns: ~0.3 s of CPU)."""
        active = self._index_changed()
        await asyncio.to_thread(_warm_classifier, active)
        configure_mappers()  # the segment refreshes' ORM (its first use builds the mappers)

        async def ping() -> None:
            async with self._connection() as conn:
                await conn.execute("SELECT 1")
                await conn.commit()

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
                # The sweep runs once a poll interval, not after every round of a burst.
                sweep = time.monotonic() - self._swept >= self.poll_interval
                worked = await self.work_once(sweep=sweep)
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
                        self.notify()
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

    async def work_once(self, *, sweep: bool = True) -> int:
        """Judge (and signal) what is queued until nothing is, then sweep up human events
        left unsignalled (Temporal was unreachable, or the process stopped in between).
        Returns the rows handled."""
        judged = await self.judge_pending()
        self._schedule_segments()
        return judged + (await self._sweep() if sweep else 0)

    async def _sweep(self) -> int:
        self._swept = time.monotonic()
        return await self.signal_pending()

    # --- judging ----------------------------------------------------------
    def _index_changed(self) -> ActiveList:
        active = self._networks.get()
        if active is not self._active:
            self._active = active
            self._cache.clear()  # classifiers hold the old list
        return active

    async def judge_pending(self) -> int:
        """Judge what is queued until nothing is, in up to `judge_tasks` transactions at
        once. Whenever one commits (or hits arrive) and a slot is free, the queue is read
        again and its messages are shared out between the free slots, one transaction per
        `min_share` messages (at least one when none is in flight), so a new hit waits at
        most for a transaction in flight, never for a whole round. Messages in flight here
        are left out; other processes' are skipped by their advisory locks. Returns events
        judged."""
        active = self._index_changed()
        inflight: dict[asyncio.Future[tuple[int, int]], list[str]] = {}
        total = 0
        failure: BaseException | None = None
        sweep: asyncio.Task[int] | None = None
        woken: asyncio.Task[bool] | None = None
        elsewhere: dict[str, float] = {}  # message -> when to try it again
        # The last read of the queue left fewer than `min_share` messages unstarted: while
        # a transaction is in flight, hits that arrive wait for it too, so their wake-ups
        # read the queue again only once `min_share` have come (a commit always does).
        short = False
        woken_at = self.wakeups
        try:
            while True:
                rearm = woken is None or woken.done()
                if rearm:
                    self._wake.clear()  # before reading the queue: a later hit wakes us
                free = self.judge_tasks - len(inflight)
                wait = short and inflight and self.wakeups - woken_at < self.min_share
                if free and failure is None and not wait:
                    now = time.monotonic()
                    held = [sid for ids in inflight.values() for sid in ids]
                    held += [sid for sid, until in elsewhere.items() if until > now]
                    woken_at = self.wakeups
                    candidates = await self._candidates(held)
                    slices = _slices(len(candidates), free, len(inflight), self.min_share)
                    parts = _share(candidates, slices, self.batch_messages)
                    for part in parts:
                        inflight[asyncio.ensure_future(self._judge_slice(active, part))] = part
                    short = len(candidates) - sum(map(len, parts)) < self.min_share
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
                    short = False  # a slot is free: read the queue again
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
                if time.monotonic() - self._swept > self.poll_interval and (
                    sweep is None or sweep.done()
                ):
                    # A long burst must not hold back what the sweep would signal.
                    sweep = asyncio.create_task(self._sweep())
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
        async with self._reading() as conn:
            cur = await conn.execute(
                _CANDIDATES_SQL, {"held": list(held), "n": self.batch_messages * self.judge_tasks}
            )
            return [r[0] for r in await cur.fetchall()]

    # --- the judge's connections -------------------------------------------
    async def _connect(self, *, autocommit: bool) -> psycopg.AsyncConnection[Any]:
        conninfo = libpq_url(self.db)
        given = conninfo_to_dict(conninfo).get("options") or ""
        return await psycopg.AsyncConnection.connect(
            conninfo,
            autocommit=autocommit,
            prepare_threshold=0,  # the same few statements, every transaction
            # Planned once per connection: the rollup's statements cost PostgreSQL more to
            # plan (~2.5 ms each) than to run, and a connection runs each only a few times
            # in a burst, too few for the plan cache to switch to a generic plan by itself.
            # (A plan is made again when ANALYZE changes the tables' statistics.)
            options=f"{given} -c plan_cache_mode=force_generic_plan".strip(),
            application_name=f"{LISTENER_NAME}-{os.getpid()}-tx",
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection of the judge's own (no pool checkout ping; its prepared statements
        stay). Kept for the next transaction while the loop runs and the transaction ended
        cleanly; closed otherwise (closing rolls back whatever is open)."""
        conn = self._idle.pop() if self._idle else await self._connect(autocommit=False)
        keep = False
        try:
            yield conn
            keep = conn.info.transaction_status == TransactionStatus.IDLE
        except psycopg.OperationalError:
            await self._server_gone()
            raise
        finally:
            if keep and self.running and len(self._idle) <= self.judge_tasks:
                self._idle.append(conn)
            else:
                await conn.close()

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The loop's autocommit connection for reading the queue (one statement, no
        transaction around it)."""
        async with self._reader_lock:
            conn = self._reader
            self._reader = None
            if conn is None or conn.closed:
                conn = await self._connect(autocommit=True)
            try:
                yield conn
            except BaseException as exc:
                await conn.close()
                if isinstance(exc, psycopg.OperationalError):
                    await self._server_gone()
                raise
            if self.running:
                self._reader = conn
            else:
                await conn.close()

    async def _server_gone(self) -> None:
        """A connection failed (the server restarted, say): the kept ones are likely gone
        too, and the next round should not fail on each of them in turn."""
        idle, self._idle = self._idle, []
        if self._reader is not None:  # (None while in use)
            idle.append(self._reader)
            self._reader = None
        for conn in idle:
            await conn.close()

    async def _close_connections(self) -> None:
        conns, self._idle = self._idle, []
        if self._reader is not None:
            conns.append(self._reader)
            self._reader = None
        for conn in conns:
            await conn.close()

    # --- one judging transaction ---------------------------------------------
    async def _judge_slice(self, active: ActiveList, candidates: list[str]) -> tuple[int, int]:
        started = time.perf_counter()
        judged, signalled = await self._judge_batch(active, candidates)
        self.transactions += 1
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

        Two round trips (plus one to rebuild a classifier this process does not hold, and
        one per revised event outside the batch): the locks, the queued rows (FOR UPDATE
        SKIP LOCKED) and the messages' facts in one pipeline; then, after the signals,
        the row updates, the report rollup and the COMMIT in another.

        Signalling before the commit saves a transaction on the click's path. If the
        commit then fails, the events are judged and signalled again: the workflow drops
        an engagement whose tracking_event_id it has already seen."""
        async with self._connection() as conn:
            async with conn.pipeline():
                await conn.execute(_LOCK_SQL, {"ids": candidates})
                pending_cur = await conn.execute(_PENDING_SQL)
                facts_cur = await conn.execute(_FACTS_SQL)
            pending = [_event_of(r) for r in await pending_cur.fetchall()]
            if not pending:
                await conn.commit()  # (read only; a rollback would drop the prepared statements)
                return 0, 0
            sends, runs, facts, counts = self._message_facts(await facts_cur.fetchall())
            by_send: dict[str, list[_Event]] = {}
            for row in pending:
                by_send.setdefault(row.send_id, []).append(row)
            states = await self._states_for(conn, list(by_send), facts, counts, active)
            now = utcnow()
            batch = {r.id: r for r in pending}
            changed: dict[str, _Event] = {}  # every row whose verdict this transaction set
            for send_id, rows in by_send.items():
                state = states[send_id]
                for row in rows:
                    verdicts = judge_one(state.classifier, row, facts[send_id])
                    own, revisions = verdicts[0], verdicts[1:]
                    row.verdict, row.reason = own.verdict, own.reason
                    row.confidence = round(own.confidence, 4)
                    row.first_verdict, row.first_reason = own.verdict, own.reason
                    row.judged_at = now
                    state.judged += 1
                    self._verdict_changed(changed, row, None)
                    await self._apply_revisions(conn, changed, revisions, batch, now)
            # Final verdicts: a later event in this batch may have revised an earlier one.
            humans = [r for r in pending if r.verdict == "human" and r.signal_result is None]
            signalled = await self._signal_rows(humans, sends, runs) if humans else 0
            async with conn.pipeline():
                await self._write(conn, list(changed.values()))
                await conn.commit()
        return len(pending), signalled

    def _message_facts(
        self, rows: Sequence[Sequence[Any]]
    ) -> tuple[dict[str, _SendRow], dict[str, _RunRow], dict[str, _SendFacts], dict[str, int]]:
        """Each locked message's send row, run, click-link count and judged-event count."""
        sends: dict[str, _SendRow] = {}
        runs: dict[str, _RunRow] = {}
        facts: dict[str, _SendFacts] = {}
        counts: dict[str, int] = {}
        for sid, send_id, sent_at, created_at, step, run_id, wid, status, links, judged in rows:
            counts[sid] = int(judged)
            if send_id is None:
                # No ledger row (should not happen: links are written with their send).
                # The epoch makes timing evidence neutral rather than "too fast".
                facts[sid] = _SendFacts(_EPOCH, False, 0)
                continue
            sends[sid] = _SendRow(send_id, step)
            if run_id is not None:
                runs[sid] = _RunRow(wid, status)
            facts[sid] = _SendFacts(sent_at or created_at, sent_at is not None, int(links))
        return sends, runs, facts, counts

    async def _states_for(
        self,
        conn: psycopg.AsyncConnection[Any],
        send_ids: Sequence[str],
        facts: dict[str, _SendFacts],
        counts: dict[str, int],
        active: ActiveList,
    ) -> dict[str, _MessageState]:
        """Each message's classifier: the cached one if it holds every stored verdict of
        the message, else one rebuilt from the stored events (one query for all)."""
        states: dict[str, _MessageState] = {}
        replay: list[str] = []
        for send_id in send_ids:
            fact, judged = facts[send_id], counts.get(send_id, 0)
            state = self._cache.get(send_id)
            if (
                state is not None
                and state.judged == judged
                and state.links == fact.links
                and state.sent_at == fact.sent_at
            ):
                self._cache.move_to_end(send_id)
            else:
                state = _MessageState(Classifier(active.index), judged, fact.links, fact.sent_at)
                if judged:
                    replay.append(send_id)
                if fact.exact:
                    self._cache[send_id] = state
                    self._cache.move_to_end(send_id)
                    while len(self._cache) > self.max_cached:
                        self._cache.popitem(last=False)
            states[send_id] = state
        if replay:
            await self._replay(conn, replay, facts, states)
        return states

    async def _replay(
        self,
        conn: psycopg.AsyncConnection[Any],
        send_ids: list[str],
        facts: dict[str, _SendFacts],
        states: dict[str, _MessageState],
    ) -> None:
        """Rebuild the messages' classifier memory from their judged events, oldest first.

        Only the classifier's horizon matters: older events are forgotten by it anyway.
        """
        cur = await conn.execute(
            _REPLAY_SQL,
            {"ids": send_ids, "window": DEFAULT_HORIZON + timedelta(seconds=1)},
        )
        for r in await cur.fetchall():
            row = _event_of(r)
            judge_one(states[row.send_id].classifier, row, facts[row.send_id])

    async def _apply_revisions(
        self,
        conn: psycopg.AsyncConnection[Any],
        changed: dict[str, _Event],
        revisions: Sequence[Verdict],
        batch: dict[str, _Event],
        now: datetime,
    ) -> None:
        """Earlier events this one re-judges. A human event already signalled stays signalled
        (a signal cannot be taken back); the revision is recorded on the row all the same."""
        for rev in revisions:
            row = batch.get(rev.id) or changed.get(rev.id)
            if row is None:
                cur = await conn.execute(_REVISED_SQL, {"id": rev.id})
                found = await cur.fetchone()
                if found is None:
                    continue
                # Only what a revision writes is set; the rest stays as stored.
                row = _Event(found[0], found[1], "", None, now, verdict=found[2])
            if row.verdict == rev.verdict:
                continue
            previous = row.verdict
            row.verdict, row.reason = rev.verdict, rev.reason
            row.confidence = round(rev.confidence, 4)
            row.revised_at = now
            self._verdict_changed(changed, row, previous)

    def _verdict_changed(
        self, changed: dict[str, _Event], row: _Event, previous: str | None
    ) -> None:
        """Every stored verdict passes here: a first verdict (previous None) or a revision
        (previous = the verdict it replaces). Rolled up into the reports before commit;
        behavioural segments ("opened in the last 90 days") read human verdicts."""
        changed[row.id] = row
        if "human" in (row.verdict, previous):
            self._engaged_sends.add(row.send_id)

    async def _write(self, conn: psycopg.AsyncConnection[Any], rows: list[_Event]) -> None:
        """Queue (in the caller's pipeline) the rows' new verdicts and signal outcomes and
        the report rollup of their events. Report counts move in the judging transaction,
        so they never disagree with the stored verdicts (a revision moves a count from
        human to automated): the rollup recounts each event from its stored row."""
        if not rows:
            return
        await conn.execute(_WRITE_SQL, {"rows": _json_rows(rows)})
        ids = {"event_ids": [r.id for r in rows]}
        for sql in TRACKING_ROLLUP_OF_EVENTS:
            await conn.execute(sql, ids)

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
            ctx = ServiceContext(s, self.settings, self.temporal)
            if not affected(await rule_segments(ctx), ENGAGEMENT_KINDS):
                # No segment reads engagement (one query, not the contacts' too).
                await s.commit()
                return
            contact_ids = sorted(
                set((await s.exec(select(Send.contact_id).where(col(Send.id).in_(send_ids)))).all())
            )
            await s.commit()
            await on_contacts_changed(ctx, contact_ids, kinds=ENGAGEMENT_KINDS)
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
        async with self._connection() as conn:
            cur = await conn.execute(_UNSIGNALLED_SQL, {"n": self.signal_batch})
            found = await cur.fetchall()
            rows: list[tuple[_Event, _SendRow | None, _RunRow | None]] = []
            for eid, send_id, kind, link, at, sid, step, run_id, wid, status in found:
                rows.append(
                    (
                        _Event(eid, send_id, kind, link, at),
                        _SendRow(sid, step) if sid is not None else None,
                        _RunRow(wid, status) if run_id is not None else None,
                    )
                )
            if rows:
                await self._signal_all(rows)
                written = [event for event, _, _ in rows if event.signal_result is not None]
                if written:
                    await conn.execute(_WRITE_SQL, {"rows": _json_rows(written)})
            await conn.commit()
            return len(rows)

    async def _signal_rows(
        self,
        events: Sequence[_Event],
        sends: dict[str, _SendRow],
        runs: dict[str, _RunRow],
    ) -> int:
        """Signal, inside the judging transaction, the runs of events judged human there."""
        if self.temporal is None:
            return 0  # the sweep signals them once a client is there
        return await self._signal_all(
            [(event, sends.get(event.send_id), runs.get(event.send_id)) for event in events]
        )

    async def _signal_all(
        self, rows: Sequence[tuple[_Event, _SendRow | None, _RunRow | None]]
    ) -> int:
        """Concurrent signals (bounded); each outcome is set on its row, which the caller
        writes. Returns how many reached a run."""
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
        return sum(1 for r in results if r == SIGNAL_SENT)

    async def _signal_bounded(
        self, event: _EventLike, send: _SendLike | None, run: _RunLike | None
    ) -> str | None:
        async with self._signal_slots:
            return await self._signal(event, send, run)

    async def _signal(
        self, event: _EventLike, send: _SendLike | None, run: _RunLike | None
    ) -> str | None:
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
