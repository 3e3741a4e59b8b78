"""Tracking hits buffered in the process and written in batches, off the request path.

A pixel or click request verifies its token, takes the evidence and puts one row here;
a background task writes what has gathered as ONE query per batch (`interval`, 20 ms,
after the first waiting hit, or at once when `batch_rows` are waiting): an INSERT of the
rows and `pg_notify('tracking_hits', n)` in one transaction, so a judge in any process
wakes when the rows are visible. A round-trip costs the process more CPU than preparing
dozens of rows, so batching is what keeps the cost per hit low.

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
import logging
import os
import struct
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import orjson
import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from core.db import Database, normalize_url

log = logging.getLogger("journeys.tracking.buffer")

NOTIFY_CHANNEL = "tracking_hits"  # payload: the number of rows in the batch
CONNECT_TIMEOUT = 5  # seconds; an unreachable database must not hold hits for minutes
# Bounds on what the writer's statements may wait for (Settings TRACKING_WRITER_DB_TIMEOUT_MS
# and TRACKING_DB_LOCK_TIMEOUT_MS override them): a stuck database fails the batch, which
# is kept and retried, instead of holding the writer for ever.
WRITER_STATEMENT_TIMEOUT_MS = 5_000
LOCK_TIMEOUT_MS = 1_000
# The client's own bound beyond statement_timeout: a server that stopped answering at
# all (frozen, network gone) never sends the cancellation.
CLIENT_MARGIN = 1.0  # seconds

# Erasure and hit writes exclude each other through this advisory lock: a batch takes it
# shared in its transaction before the INSERT (whose snapshot then sees any erasure that
# committed first, and skips hits on tombstoned links); an erasure takes it exclusively
# (services.erasure), so batches in flight commit before it clears their evidence.
HITS_LOCK = 0x6A6F75726E657973  # "journeys"
_LOCK_SHARED_SQL = f"SELECT pg_advisory_xact_lock_shared({HITS_LOCK})"

# One batch, one INSERT: the rows travel as one JSON array of arrays (orjson: ~0.2 us a
# row where the stdlib's json took ~5, and per-field adaptation more), PostgreSQL parses
# it once as jsonb (plain json would be re-parsed by every `->>`, which cost it ~9 us a
# row), `at` is unix seconds. Ids are new on a first attempt, so the INSERT is plain; a
# batch retried after an unknown outcome (a lost reply) adds ON CONFLICT DO NOTHING, so a
# batch that did commit is not stored twice; retried rows are never batched with fresh
# ones (`HitBuffer._take`), whose id collisions must fail the INSERT. The NOTIFY (`notify_sql`) goes in the same
# transaction, so it is delivered at commit, when the rows are visible; its payload is
# the number of rows sent (a plain statement: counting the inserted rows through a CTE
# cost PostgreSQL ~1 us a row).
_COLUMNS = "id, send_id, link_id, kind, link, at, ip, user_agent, method, headers, signalled"
_INSERT_SQL = """
INSERT INTO tracking_event ({columns})
SELECT e->>0, e->>1, e->>2, e->>3, e->>4, to_timestamp((e->5)::float8), e->>6, e->>7,
       e->>8, e->9, false
FROM jsonb_array_elements({payload}::jsonb) AS e
WHERE NOT EXISTS (
    SELECT 1 FROM tracked_link l WHERE l.id = e->>2 AND l.erased_at IS NOT NULL
)
{conflict}
"""


def notify_sql(rows: int) -> str:
    return f"SELECT pg_notify('{NOTIFY_CHANNEL}', '{int(rows)}')"


def insert_sql(payload: str, *, retry: bool) -> str:
    """_INSERT_SQL for `payload` (a query parameter's placeholder or a quoted literal)."""
    return _INSERT_SQL.format(
        columns=_COLUMNS,
        payload=payload,
        conflict="ON CONFLICT (id) DO NOTHING" if retry else "",
    )


def _simple_query_parts(retry: bool) -> tuple[bytes, bytes]:
    """The writer's query around the payload's literal: lock; INSERT; (then the NOTIFY)."""
    head, tail = insert_sql("\x00", retry=retry).split("\x00")
    return f"{_LOCK_SHARED_SQL};{head}".encode(), f"{tail};".encode()


_SIMPLE = {retry: _simple_query_parts(retry) for retry in (False, True)}


# A hit as the buffer keeps it: a list in _COLUMNS order (signalled aside), serialised as
# it is. A list rather than an object because a row is made on every request and the
# writer serialises thousands a second.
HitRow = list[Any]
ID, SEND_ID, LINK_ID, KIND, LINK, AT, IP, USER_AGENT, METHOD, HEADERS = range(10)


def hit_row(
    send_id: str,
    link_id: str,
    kind: str,
    link: str | None,
    at: float,
    ip: str | None,
    user_agent: str | None,
    method: str,
    headers: dict[str, str],
) -> HitRow:
    """One `tracking_event` row as a request saw it (no verdict: the judge's queue); `at`
    in unix seconds. The id is given when its batch is first written (`batch_payload`):
    nothing on the request path needs it, and a retried batch keeps its ids."""
    return [None, send_id, link_id, kind, link, at, ip, user_agent, method, headers]


# Event ids: "te_" + 12 hex digits of unix milliseconds + 8 of a per-process counter that
# starts at random. The same shape as core.models.new_id("te"), but time-ordered, so the
# primary key grows at its right edge instead of touching a random leaf page per row
# (measured: ~3 us of PostgreSQL CPU a row). Unique within a process (2**32 ids per
# millisecond); two processes collide only by drawing overlapping counter ranges in the
# same millisecond, and then the batch's INSERT fails on the key, nothing is stored, and
# it is written again under fresh ids (`_write`), never dropped.
_next_counter = int.from_bytes(os.urandom(4), "big")


def _reseed() -> None:
    global _next_counter
    _next_counter = int.from_bytes(os.urandom(4), "big")


# A server that imports the app before forking its workers (a preloading gunicorn, say)
# would otherwise start every child on the parent's counter, and children writing in the
# same millisecond would draw the same ids. (The prefix is the clock: nothing to reseed.)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


_COUNTERS = 2**32


def new_event_ids(n: int) -> list[str]:
    global _next_counter
    prefix = f"te_{time.time_ns() // 1_000_000:012x}"
    first, end = _next_counter, _next_counter + n
    _next_counter = end % _COUNTERS
    # The batch's counters (wrapping at 2**32) as one hex string, cut into ids: a
    # quarter of the cost of formatting each id on its own.
    counters = chain(range(first, min(end, _COUNTERS)), range(max(0, end - _COUNTERS)))
    digits = struct.pack(f">{n}I", *counters).hex()
    return [prefix + digits[i : i + 8] for i in range(0, 8 * n, 8)]


def batch_payload(batch: Sequence[HitRow]) -> tuple[bytes, bool]:
    """(the JSON array of `batch` in UTF-8, whether any row was attempted before: retry)."""
    fresh = [row for row in batch if row[ID] is None]
    if fresh:
        for row, event_id in zip(fresh, new_event_ids(len(fresh)), strict=True):
            row[ID] = event_id
    return orjson.dumps(batch), len(fresh) < len(batch)


def forget_ids(batch: Sequence[HitRow]) -> None:
    """The batch was refused and nothing of it stored: its rows take fresh ids next time."""
    for row in batch:
        row[ID] = None


def libpq_url(db: Database) -> str:
    """The plain libpq URL of the app's database (the engine's URL names the driver)."""
    url = make_url(normalize_url(db.url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def bounded_options(conninfo: str, statement_timeout_ms: int, lock_timeout_ms: int) -> str:
    """libpq `options` setting both timeouts at connection start (no extra round-trip),
    after whatever options the URL already carries."""
    given = conninfo_to_dict(conninfo).get("options") or ""
    ours = (
        f"-c statement_timeout={int(statement_timeout_ms)} -c lock_timeout={int(lock_timeout_ms)}"
    )
    return f"{given} {ours}".strip()


async def write_inline(
    db: Database,
    row: HitRow,
    *,
    statement_timeout_ms: int = WRITER_STATEMENT_TIMEOUT_MS,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
) -> None:
    """One row in its own transaction over the app's pool (the full-buffer fallback),
    its statements bounded by the timeouts."""
    for attempt in (1, 2):
        payload, retry = batch_payload([row])
        try:
            async with db.engine.begin() as conn:
                await conn.exec_driver_sql(
                    "SELECT set_config('synchronous_commit', 'off', true),"
                    " set_config('statement_timeout', %s, true),"
                    " set_config('lock_timeout', %s, true)",
                    (str(int(statement_timeout_ms)), str(int(lock_timeout_ms))),
                )
                await conn.exec_driver_sql(_LOCK_SHARED_SQL)
                await conn.exec_driver_sql(insert_sql("%s", retry=retry), (payload.decode(),))
                await conn.exec_driver_sql(notify_sql(1))
            return
        except IntegrityError as exc:
            # Its id was drawn by another process in the same millisecond: a new one.
            if attempt == 2 or not isinstance(exc.orig, psycopg.errors.UniqueViolation):
                raise
            forget_ids([row])
            _reseed()


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
        statement_timeout_ms: int = WRITER_STATEMENT_TIMEOUT_MS,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    ) -> None:
        self.db = db
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
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
        rows, task = self._rows, self._task  # (on every request: no property calls)
        waiting = len(rows)
        if waiting >= self.capacity or task is None or task.done():
            return False
        rows.append(row)
        self._accepted += 1
        if not self._wake.is_set():
            self._wake.set()
        if waiting + 1 >= self.batch_rows and not self._urgent.is_set():
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
                async with asyncio.timeout(left):
                    await self._progress.wait()
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
                try:  # asyncio.timeout: 3.11's wait_for can swallow a cancellation
                    async with asyncio.timeout(self.interval):
                        await self._urgent.wait()
                except TimeoutError:
                    pass
            batch = self._take()
            n = len(batch)
            try:
                await self._write(batch)
                backoff = 0.05
            except asyncio.CancelledError:
                self._rows.extendleft(reversed(batch))
                raise
            except (psycopg.DataError, orjson.JSONEncodeError) as exc:
                # One row the database refuses must not hold every later hit back.
                log.error(
                    "tracking batch refused (%s); writing rows one by one", type(exc).__name__
                )
                forget_ids(batch)
                await self._write_one_by_one(batch)
            except psycopg.errors.UniqueViolation:
                # Another process drew the same ids in the same millisecond (see
                # new_event_ids): nothing was stored; the rows go again under fresh ids.
                log.warning("tracking batch ids taken; writing it again under new ones")
                forget_ids(batch)
                _reseed()
                self._rows.extendleft(reversed(batch))
                continue
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

    def _take(self) -> list[HitRow]:
        """The next batch: rows written before (kept their ids after an unknown outcome)
        OR fresh rows, never both. A retried batch is written with ON CONFLICT DO
        NOTHING, which would skip a fresh row whose id another process drew instead of
        failing on the key, and the failure is what gets such a row a new id.
        Rows with ids only ever return to the front of the queue (extendleft), so when
        the first row is fresh every row is, and the common case checks one row."""
        rows, limit = self._rows, self.batch_rows
        if not rows or rows[0][ID] is None:
            return [rows.popleft() for _ in range(min(len(rows), limit))]
        batch: list[HitRow] = []
        while rows and rows[0][ID] is not None and len(batch) < limit:
            batch.append(rows.popleft())
        return batch

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conninfo = libpq_url(self.db)
            options = bounded_options(conninfo, self.statement_timeout_ms, self.lock_timeout_ms)
            # Evidence, not a ledger: do not wait for the WAL flush (see the module doc).
            # The connection is this writer's alone, so session settings are enough.
            self._conn = await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                options=f"{options} -c synchronous_commit=off",
            )
            self._conn.prepare_threshold = None  # every batch is a new text: never prepare
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
        payload, retry = batch_payload(batch)
        # The lock, the INSERT and the NOTIFY as one simple query: PostgreSQL runs its statements as
        # one implicit transaction (rolled back whole on an error), each statement with a
        # fresh snapshot, so the INSERT sees what committed before the lock was granted.
        # One round-trip and no parameter binding cost the process a third of the
        # prepared BEGIN / lock / INSERT / COMMIT exchange. libpq quotes the JSON (UTF-8,
        # the connection's encoding).
        head, tail = _SIMPLE[retry]
        query = (
            head
            + pq.Escaping(conn.pgconn).escape_literal(payload)
            + tail
            + notify_sql(len(batch)).encode()
        )
        bound = self.statement_timeout_ms / 1000 + CLIENT_MARGIN
        await asyncio.wait_for(conn.execute(query, prepare=False), timeout=bound)
        self.written += len(batch)
        self.batches += 1
        if self.on_commit is not None:
            self.on_commit(len(batch))

    async def _write_one_by_one(self, batch: Sequence[HitRow]) -> None:
        for row in batch:
            for attempt in (1, 2):
                try:
                    await self._write([row])
                except psycopg.errors.UniqueViolation:
                    forget_ids([row])
                    _reseed()
                    if attempt == 1:
                        continue
                    self.failed += 1
                except Exception as exc:
                    self.failed += 1
                    log.error("tracking hit not recorded: %s", type(exc).__name__)
                break
