"""Tracking hits buffered in the process and written in batches, off the request path.

A pixel or click request verifies its token, takes the evidence and puts one row here;
a background task writes what has gathered as ONE statement per batch (`interval`,
20 ms, after the first waiting hit, or at once when `batch_rows` are waiting): an
INSERT of the rows with `pg_notify('tracking_hits', n)` in the same statement, so a
judge in any process wakes when the rows are visible. A round-trip costs the process
more CPU than preparing dozens of rows, so batching is what keeps the cost per hit low.

Durability trade-off (documented in README and docs/benchmarks.md): a hit is answered
before it is written. Hits accepted in the last flush interval (~20 ms) of a process
that crashes are lost; a clean shutdown writes them all (`stop`). These rows are
evidence for the classifier, not a ledger, so that is the same bargain as committing
with `synchronous_commit = off`, which the batches also do.

When the buffer is full (the database is slow or down) `offer` says so and the caller
writes its row inline: a hit is never dropped silently and never costs the client a 5xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from core.db import Database, normalize_url

log = logging.getLogger("journeys.tracking.buffer")

NOTIFY_CHANNEL = "tracking_hits"  # payload: the number of rows in the batch
CONNECT_TIMEOUT = 5  # seconds; an unreachable database must not hold hits for minutes

# One statement writes a batch and notifies: the rows travel as one JSON array of
# arrays (json.dumps is C; per-field adaptation or COPY's three round-trips cost the
# request path's process several times more), PostgreSQL unpacks them, and
# pg_notify in the same statement is delivered at commit, when the rows are visible.
# Erasure and hit writes exclude each other through this advisory lock: a batch takes it
# shared in its transaction before the INSERT (whose snapshot then sees any erasure that
# committed first, and skips hits on tombstoned links); an erasure takes it exclusively
# (services.erasure), so batches in flight commit before it clears their evidence.
HITS_LOCK = 0x6A6F75726E657973  # "journeys"
_LOCK_SHARED_SQL = f"SELECT pg_advisory_xact_lock_shared({HITS_LOCK})"

_BATCH_SQL = f"""
WITH written AS (
    INSERT INTO tracking_event
        (id, send_id, link_id, kind, link, at, ip, user_agent, method, headers, signalled)
    SELECT e->>0, e->>1, e->>2, e->>3, e->>4, (e->>5)::timestamptz, e->>6, e->>7, e->>8,
           (e->9)::jsonb, false
    FROM json_array_elements(%s::json) AS e
    WHERE NOT EXISTS (
        SELECT 1 FROM tracked_link l WHERE l.id = e->>2 AND l.erased_at IS NOT NULL
    )
    ON CONFLICT (id) DO NOTHING  -- a batch retried after a lost reply
    RETURNING 1
)
SELECT pg_notify('{NOTIFY_CHANNEL}', count(*)::text) FROM written
"""


@dataclass(slots=True)
class HitRow:
    """One `tracking_event` row as the request saw it (no verdict: the judge's queue).

    The row's id is given when its batch is first written (`batch_payload`): nothing on
    the request path needs it, and one random draw per batch is cheaper than one per
    request. A retried batch keeps its ids, so a write whose reply was lost is not
    stored twice."""

    send_id: str
    link_id: str
    kind: str  # open | click
    link: str | None
    at: datetime
    ip: str | None
    user_agent: str | None
    method: str
    headers: dict[str, str]
    event_id: str | None = None

    def values(self) -> tuple[object, ...]:
        """The row in _BATCH_SQL's column order."""
        return (
            self.event_id,
            self.send_id,
            self.link_id,
            self.kind,
            self.link,
            self.at.isoformat(),
            self.ip,
            self.user_agent,
            self.method,
            self.headers,
        )


def new_event_ids(n: int) -> list[str]:
    """`n` ids like core.models.new_id("te") (te_ + 20 hex digits) from one random draw."""
    pool = os.urandom(10 * n).hex()
    return [f"te_{pool[i : i + 20]}" for i in range(0, 20 * n, 20)]


def batch_payload(batch: Sequence[HitRow]) -> str:
    fresh = [row for row in batch if row.event_id is None]
    for row, event_id in zip(fresh, new_event_ids(len(fresh)), strict=True):
        row.event_id = event_id
    return json.dumps([row.values() for row in batch])


def libpq_url(db: Database) -> str:
    """The plain libpq URL of the app's database (the engine's URL names the driver)."""
    url = make_url(normalize_url(db.url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def write_inline(db: Database, row: HitRow) -> None:
    """One row in its own transaction over the app's pool (the full-buffer fallback)."""
    async with db.engine.begin() as conn:
        await conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
        await conn.exec_driver_sql(_LOCK_SHARED_SQL)
        await conn.exec_driver_sql(_BATCH_SQL, (batch_payload([row]),))


_live: weakref.WeakSet[HitBuffer] = weakref.WeakSet()


async def flush_all(timeout: float = 10.0) -> bool:
    """Wait until every running buffer of this process has written what it accepted
    (tests and tools that read tracking_event right after a request use this)."""
    results = [await b.flush(timeout) for b in list(_live)]
    return all(results)


class HitBuffer:
    """A bounded in-process queue of hits with one writer task and its own connection."""

    def __init__(
        self,
        db: Database,
        *,
        capacity: int = 20_000,
        batch_rows: int = 2_000,
        interval: float = 0.02,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.db = db
        self.capacity = capacity
        self.batch_rows = batch_rows
        self.interval = interval
        self.on_commit = on_commit
        self._rows: deque[HitRow] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._urgent = asyncio.Event()  # write now: a flush waits, or a batch is full
        self._accepted = 0  # rows ever offered and taken
        self._done = 0  # rows ever written (or given up on, see _write_one_by_one)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.failed = 0
        self.batches = 0

    # --- lifecycle --------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="tracking-hit-writer")
            _live.add(self)

    async def stop(self, timeout: float = 10.0) -> None:
        """Write everything accepted so far, then end the writer and close its connection."""
        try:
            await self.flush(timeout)
        finally:
            task, self._task = self._task, None
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if self._rows:
                log.error("tracking hits not written at shutdown: %d", len(self._rows))
                self.failed += len(self._rows)
                self._rows.clear()
            await self._close()
            _live.discard(self)

    # --- the request side -------------------------------------------------
    def offer(self, row: HitRow) -> bool:
        """Queue a hit; False when the buffer is full (the caller writes it inline)."""
        if len(self._rows) >= self.capacity or not self.running:
            return False
        self._rows.append(row)
        self._accepted += 1
        if not self._wake.is_set():
            self._wake.set()
        if len(self._rows) >= self.batch_rows and not self._urgent.is_set():
            self._urgent.set()
        return True

    def __len__(self) -> int:
        return len(self._rows)

    async def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every hit accepted before the call is written (True) or `timeout`."""
        target = self._accepted
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._done < target and self.running:
            self._wake.set()
            self._urgent.set()
            self._progress.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._progress.wait(), timeout=left)
            except TimeoutError:
                return False
        return self._done >= target

    # --- the writer -------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.05
        while True:
            if not self._rows:
                self._wake.clear()
                await self._wake.wait()
            # Let `interval` of hits gather, unless a batch is waiting or a flush is asked.
            if not self._urgent.is_set() and len(self._rows) < self.batch_rows:
                try:
                    await asyncio.wait_for(self._urgent.wait(), timeout=self.interval)
                except TimeoutError:
                    pass
            n = min(len(self._rows), self.batch_rows)
            batch = [self._rows.popleft() for _ in range(n)]
            try:
                await self._write(batch)
                backoff = 0.05
            except asyncio.CancelledError:
                self._rows.extendleft(reversed(batch))
                raise
            except psycopg.DataError as exc:
                # One row the database refuses must not hold every later hit back.
                log.error(
                    "tracking batch refused (%s); writing rows one by one", type(exc).__name__
                )
                await self._write_one_by_one(batch)
            except Exception as exc:
                # The database is unreachable or restarting: keep the rows (the buffer is
                # bounded, and a full buffer makes requests write inline) and try again.
                log.error("tracking batch not written: %s", type(exc).__name__)
                self._rows.extendleft(reversed(batch))
                await self._close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            self._done += n
            self._progress.set()
            if not self._rows:
                self._urgent.clear()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                libpq_url(self.db), autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
            # Evidence, not a ledger: do not wait for the WAL flush (see the module doc).
            # The connection is this writer's alone, so the session setting is enough.
            await conn.execute("SET synchronous_commit = off")
            self._conn = conn
        return self._conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass

    async def _write(self, batch: Sequence[HitRow]) -> None:
        conn = await self._connection()
        payload = batch_payload(batch)
        async with conn.transaction():
            await conn.execute(_LOCK_SHARED_SQL, prepare=True)
            await conn.execute(_BATCH_SQL, (payload,), prepare=True)
        self.written += len(batch)
        self.batches += 1
        if self.on_commit is not None:
            self.on_commit(len(batch))

    async def _write_one_by_one(self, batch: Sequence[HitRow]) -> None:
        for row in batch:
            try:
                await self._write([row])
            except Exception as exc:
                self.failed += 1
                log.error("tracking hit not recorded: %s", type(exc).__name__)
