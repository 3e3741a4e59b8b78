"""The request side of tracking: the links tokens name, and recording a hit.

The pixel and the redirect find their link in `LinkCache` (no database round-trip
once a link has been seen) and hand the hit to services.tracking_buffer, which writes
in batches; judging and signalling happen later, off the request path
(services.tracking_judge). `record_hit` writes one hit directly (tests and tools).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlmodel.ext.asyncio.session import AsyncSession

from classifier import TRAP_LINK
from core.db import Database
from core.models import TrackedLink, TrackingEvent, new_id
from services.tracking_buffer import (
    CLIENT_MARGIN,
    CONNECT_TIMEOUT,
    LOCK_TIMEOUT_MS,
    bounded_options,
    libpq_url,
)

# Which stored link kinds a route serves; a valid token of another kind is a 404.
OPEN_KINDS = frozenset({"open"})
CLICK_KINDS = frozenset({"click", "trap"})

SAFE_SCHEMES = ("https://", "http://")


@dataclass(frozen=True)
class Hit:
    """What one request showed (already bounded and filtered by services.tracking_request)."""

    at: datetime
    ip: str
    method: str
    user_agent: str
    headers: dict[str, str]


def safe_target(url: str | None) -> str | None:
    """`url` if it is a web address fit for a Location header (never javascript:, data:,
    ...), else None."""
    if not url or not url.lower().startswith(SAFE_SCHEMES):
        return None
    if any(ch in url for ch in "\r\n"):
        return None
    return url


async def record_hit(session: AsyncSession, link: TrackedLink, hit: Hit) -> str:
    """Insert the evidence with no verdict (the judge's queue); returns the event id."""
    event_id = new_id("te")
    kind = "open" if link.kind == "open" else "click"
    name = TRAP_LINK if link.kind == "trap" else link.name
    # Evidence, not a ledger: not waiting for the WAL flush triples the pixel/click rate,
    # and a database crash can lose at most the last few hundred milliseconds of hits.
    await session.exec(text("SET LOCAL synchronous_commit = off"))  # type: ignore[call-overload]
    await session.exec(  # type: ignore[call-overload]
        insert(TrackingEvent).values(
            id=event_id,
            send_id=link.send_id,
            link_id=link.id,
            kind=kind,
            link=name,
            at=hit.at,
            ip=hit.ip or None,
            user_agent=hit.user_agent or None,
            method=hit.method,
            headers=hit.headers,
            signalled=False,
        )
    )
    await session.commit()
    return event_id


# --- the link cache of the request path ------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What the request path needs of a stored link (the destination stays server-side)."""

    id: str
    send_id: str
    kind: str  # open | click | trap | unsub
    name: str | None
    url: str | None
    erased: bool = False  # the contact was erased: nothing is recorded, nothing redirects
    # What a hit on it records (worked out once per lookup, not once per request).
    hit_kind: str = field(init=False)  # open | click
    hit_link: str | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hit_kind", "open" if self.kind == "open" else "click")
        object.__setattr__(self, "hit_link", TRAP_LINK if self.kind == "trap" else self.name)


_LINKS_SQL = "SELECT id, send_id, kind, name, url, erased_at IS NOT NULL FROM tracked_link WHERE id = ANY(%s)"
LOOKUP_TIMEOUT_MS = 2_000  # statement_timeout of a lookup (TRACKING_REQUEST_DB_TIMEOUT_MS)


_CACHES: weakref.WeakSet[LinkCache] = weakref.WeakSet()


def forget_all_links() -> None:
    """Empty every link cache of this process (after an erasure: rare, and a refill costs
    a few batched lookups). Other processes see the change when their entries expire."""
    for cache in list(_CACHES):
        cache.clear()


class LinkCache:
    """token link id -> LinkInfo for `ttl` seconds; misses are looked up in batches.

    The TTL is short so that a link deleted or changed in the database (revocation,
    erasure) stops redirecting within seconds everywhere; `forget`/`clear` make it
    immediate in this process. Unknown links are not cached: only an authentic token
    (the HMAC already checked) ever costs a lookup. Bounded: the oldest entries go first.

    Misses share one connection: the ids that miss while a lookup is in flight wait
    for the next one, a single `id = ANY(...)` query, so a burst of never-seen links
    costs a few round-trips rather than one pooled checkout each. A link still in use
    in the last `refresh_ahead` seconds of its entry is looked up again in the
    background (batched like misses), so a busy link never makes a request wait for a
    lookup, and no entry is ever served past its TTL. Renewals wait `refresh_gather`
    seconds for company (misses never wait): links cached together come due together,
    and one query for all of them costs the process far less than one per few ids.

    Lookups are bounded: `statement_timeout` / `lock_timeout` on the connection, and the
    client gives up `CLIENT_MARGIN` later (a server that stopped answering altogether);
    the waiting requests then get the error (the caller's fallback answer).
    """

    def __init__(
        self,
        db: Database,
        *,
        ttl: float = 10.0,
        max_entries: int = 100_000,
        max_batch: int = 500,
        refresh_ahead: float = 2.0,
        refresh_gather: float = 0.25,
        statement_timeout_ms: int = LOOKUP_TIMEOUT_MS,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_batch = max_batch
        self.refresh_ahead = refresh_ahead
        # Never so long that a renewal could miss its entry's last seconds.
        self.refresh_gather = min(refresh_gather, refresh_ahead / 4)
        self.statement_timeout_ms = statement_timeout_ms
        self.lock_timeout_ms = lock_timeout_ms
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, LinkInfo]] = OrderedDict()
        self._waiting: dict[str, asyncio.Future[LinkInfo | None]] = {}
        self._refresh: dict[str, None] = {}  # ids to look up again, in order
        self._refresh_paused_until = 0.0  # after a failed lookup: misses only, for a while
        self._loader: asyncio.Task[None] | None = None
        self._gathering: asyncio.TimerHandle | None = None  # renewals waiting for company
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.hits = 0
        self.misses = 0
        self.lookups = 0  # queries sent
        self.refreshed = 0  # entries renewed ahead of their expiry
        self.generation = 0  # bumped by clear(): a lookup in flight then is not cached
        _CACHES.add(self)

    @property
    def wait_bound(self) -> float:
        """Seconds a lookup may take before its waiters are given up on."""
        return self.statement_timeout_ms / 1000 + CLIENT_MARGIN

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, link_id: str) -> LinkInfo | None:
        """The cached link if still fresh, without touching the database (but perhaps
        scheduling a background refresh of it)."""
        entry = self._entries.get(link_id)
        if entry is None:
            return None
        left = entry[0] - self.clock()
        if left <= 0:
            del self._entries[link_id]
            return None
        if left < self.refresh_ahead and link_id not in self._refresh:
            self._schedule_refresh(link_id)
        return entry[1]

    def _schedule_refresh(self, link_id: str) -> None:
        if self.clock() < self._refresh_paused_until:
            return
        self._refresh[link_id] = None
        if self._gathering is None and (self._loader is None or self._loader.done()):
            self._gathering = asyncio.get_running_loop().call_later(
                self.refresh_gather, self._start_loader
            )

    def _start_loader(self) -> None:
        if self._gathering is not None:
            self._gathering.cancel()  # a miss starts it early: renewals go along now
            self._gathering = None
        if self._loader is None or self._loader.done():
            self._loader = asyncio.get_running_loop().create_task(
                self._load(), name="tracking-link-lookup"
            )

    async def get(self, link_id: str) -> LinkInfo | None:
        link = self.peek(link_id)
        if link is not None:
            self.hits += 1
            return link
        self.misses += 1
        future = self._waiting.get(link_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[link_id] = future
            self._start_loader()
        # shield: one caller giving up must not cancel the others' shared lookup. No
        # timer of its own: the loader settles every future within its query's bound.
        return await asyncio.shield(future)

    async def _load(self) -> None:
        first = True
        while self._waiting or self._refresh:
            if not self._waiting and not first:
                # Only renewals came due meanwhile: they wait for company too.
                self._gathering = asyncio.get_running_loop().call_later(
                    self.refresh_gather, self._start_loader
                )
                return
            first = False
            ids = list(itertools.islice(self._waiting, self.max_batch))
            futures = [self._waiting.pop(i) for i in ids]
            renew: list[str] = []
            while self._refresh and len(ids) + len(renew) < self.max_batch:
                link_id = next(iter(self._refresh))
                del self._refresh[link_id]
                if link_id not in self._waiting:
                    renew.append(link_id)
            generation = self.generation
            try:
                found = await asyncio.wait_for(self._query(ids + renew), timeout=self.wait_bound)
            except Exception as exc:
                await self.close()  # a fresh connection next time
                for f in futures:
                    if not f.done():
                        f.set_exception(exc)
                        f.exception()  # retrieved: nobody may be waiting any more
                # Entries being renewed just run out; renewing waits a moment so that a
                # database that is down does not get a lookup for every busy link's hit.
                self._refresh_paused_until = self.clock() + 1.0
                continue
            expires = self.clock() + self.ttl
            current = generation == self.generation
            for link_id, f in zip(ids, futures, strict=True):
                link = found.get(link_id)
                if link is not None and current:
                    self._entries[link_id] = (expires, link)
                if not f.done():
                    f.set_result(link)
            for link_id in renew:
                link = found.get(link_id)
                if link is None:
                    self._entries.pop(link_id, None)  # deleted meanwhile: gone now
                elif current:
                    self._entries[link_id] = (expires, link)
                    self._entries.move_to_end(link_id)
                    self.refreshed += 1
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    async def _query(self, ids: list[str]) -> dict[str, LinkInfo]:
        if self._conn is None or self._conn.closed:
            conninfo = libpq_url(self.db)
            self._conn = await psycopg.AsyncConnection.connect(
                conninfo,
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                options=bounded_options(conninfo, self.statement_timeout_ms, self.lock_timeout_ms),
            )
        self.lookups += 1
        cur = await self._conn.execute(_LINKS_SQL, (ids,), prepare=True)
        return {r[0]: LinkInfo(*r) for r in await cur.fetchall()}

    def forget(self, link_id: str) -> None:
        self._entries.pop(link_id, None)
        self._refresh.pop(link_id, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._refresh.clear()

    async def close(self) -> None:
        if self._gathering is not None:
            self._gathering.cancel()
            self._gathering = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception:  # closing a broken connection: nothing more to do
                pass
