"""Tracking hits buffered in the process and written in batches, off the request path.

A pixel or click request verifies its token, takes the evidence and puts one row here;
a background task writes what has gathered with one COPY per batch (`interval`, 20 ms,
after the first waiting hit, or at once when `batch_rows` are waiting), then `NOTIFY
tracking_hits` in the same transaction, so a judge in any process wakes when the rows
are visible. Batches, not rows, cost the CPU (each round-trip costs more than formatting
dozens of rows), so the interval is what keeps a busy process's cost per hit low.

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
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.db import Database, normalize_url

log = logging.getLogger("journeys.tracking.buffer")

NOTIFY_CHANNEL = "tracking_hits"

_COLUMNS = (
    "id",
    "send_id",
    "link_id",
    "kind",
    "link",
    "at",
    "ip",
    "user_agent",
    "method",
    "headers",
    "signalled",
)
_COPY_SQL = f"COPY tracking_event ({', '.join(_COLUMNS)}) FROM STDIN"
_INSERT_SQL = text(
    f"INSERT INTO tracking_event ({', '.join(_COLUMNS)}) VALUES "
    "(:id, :send_id, :link_id, :kind, :link, :at, :ip, :user_agent, :method, "
    "CAST(:headers AS jsonb), false)"
)


@dataclass(slots=True)
class HitRow:
    """One `tracking_event` row as the request saw it (no verdict: the judge's queue).

    The row's id is given when it is written (`copy_line`): nothing on the request path
    needs it, and one random draw per batch is cheaper than one per request."""

    send_id: str
    link_id: str
    kind: str  # open | click
    link: str | None
    at: datetime
    ip: str | None
    user_agent: str | None
    method: str
    headers: dict[str, str]

    def copy_line(self, event_id: str) -> str:
        """The row in COPY's text format (tab-separated, escaped, \\N for null).

        Formatted here in one go: psycopg's per-field adaptation costs several times
        more, and this runs for every hit."""
        return (
            # ids, kind and method are ours (hex ids, fixed words): nothing to escape
            f"{event_id}\t{self.send_id}\t{self.link_id}\t{self.kind}\t"
            f"{_opt(self.link)}\t{self.at.isoformat()}\t{_opt(self.ip)}\t"
            f"{_opt(self.user_agent)}\t{self.method}\t{_esc(json.dumps(self.headers))}\tf\n"
        )


# COPY text format: backslash, tab, newline and carriage return are escaped.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _esc(value: str) -> str:
    # Four substring tests cost less than one translate; most values need none.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_COPY_ESCAPES)
    return value


def _opt(value: str | None) -> str:
    return "\\N" if value is None else _esc(value)


def new_event_ids(n: int) -> list[str]:
    """`n` ids like core.models.new_id("te") (te_ + 20 hex digits) from one random draw."""
    pool = os.urandom(10 * n).hex()
    return [f"te_{pool[i : i + 20]}" for i in range(0, 20 * n, 20)]


def _copy_lines(batch: Sequence[HitRow]) -> list[str]:
    return [row.copy_line(i) for row, i in zip(batch, new_event_ids(len(batch)), strict=True)]


def libpq_url(db: Database) -> str:
    """The plain libpq URL of the app's database (the engine's URL names the driver)."""
    url = make_url(normalize_url(db.url)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


async def write_inline(db: Database, row: HitRow) -> None:
    """One row in its own transaction over the app's pool (the full-buffer fallback)."""
    async with db.engine.begin() as conn:
        await conn.execute(text("SET LOCAL synchronous_commit = off"))
        await conn.execute(
            _INSERT_SQL,
            dict(
                id=new_event_ids(1)[0],
                send_id=row.send_id,
                link_id=row.link_id,
                kind=row.kind,
                link=row.link,
                at=row.at,
                ip=row.ip,
                user_agent=row.user_agent,
                method=row.method,
                headers=json.dumps(row.headers),
            ),
        )
        await conn.execute(text(f"NOTIFY {NOTIFY_CHANNEL}"))


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
                log.error("tracking batch refused (%s); writing rows one by one", type(exc).__name__)
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
            conn = await psycopg.AsyncConnection.connect(libpq_url(self.db), autocommit=True)
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
        # Three round-trips a batch (each costs more CPU than formatting 20 rows):
        # BEGIN, the COPY, then NOTIFY and COMMIT together; the notification is
        # delivered at commit, when the rows are visible to the judge it wakes.
        async with conn.cursor() as cur:
            await cur.execute("BEGIN")
            try:
                async with cur.copy(_COPY_SQL) as copy:
                    await copy.write("".join(_copy_lines(batch)))
                await cur.execute(f"NOTIFY {NOTIFY_CHANNEL}; COMMIT")
            except BaseException:
                if not conn.closed and not conn.broken:
                    try:
                        await cur.execute("ROLLBACK")
                    except Exception:  # the caller drops this connection anyway
                        await self._close()
                raise
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
