"""A bounded pool of open SMTP connections, shared by a worker process's sends.

Opening a connection costs a TCP handshake, the greeting, EHLO and, against a relay,
TLS and AUTH: far more than one message's MAIL/RCPT/DATA. Production senders keep
connections open and reuse them; so does this pool, within limits relays expect:

- at most `max_size` connections open (in use and idle together);
- a connection idle for `idle_timeout` seconds is closed (QUIT) rather than reused:
  relays drop idle clients, and one they dropped may not have told us yet;
- a connection carries at most `max_messages` transactions, then is closed.

The pool knows nothing about messages: activities/smtp.py decides whether a connection
may go back (`release(..., reusable=...)`) and what a failure on a reused one means.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiosmtplib

QUIT_TIMEOUT = 5.0  # a relay that does not answer QUIT promptly is simply cut off


class PoolBusy(Exception):
    """No connection came free within the acquire timeout."""


@dataclass(eq=False)
class PooledConnection:
    client: aiosmtplib.SMTP
    greeting: str
    last_used: float
    generation: int  # the pool's generation when opened (close() starts a new one)
    transactions: int = 0  # MAIL commands issued on it, accepted or not
    # Handed out from the idle list: the relay may have dropped it while it sat there.
    was_idle: bool = False


@dataclass(eq=False)
class PoolStats:
    opened: int = 0  # connections opened over the pool's life
    reused: int = 0  # acquisitions served by an idle connection


Opener = Callable[[], Awaitable[tuple[aiosmtplib.SMTP, str]]]


@dataclass(eq=False)
class SmtpPool:
    open_connection: Opener  # connects (and authenticates); returns the client and greeting
    max_size: int = 10
    idle_timeout: float = 30.0
    max_messages: int = 100
    acquire_timeout: float = 20.0
    clock: Callable[[], float] = time.monotonic
    stats: PoolStats = field(default_factory=PoolStats)

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.max_messages < 1 or self.idle_timeout <= 0:
            raise ValueError("SMTP pool size, message cap and idle timeout must be positive")
        self._idle: list[PooledConnection] = []  # least recently used first
        self._in_use = 0
        self._slots = asyncio.Semaphore(self.max_size)
        self._reaper: asyncio.Task[None] | None = None
        self._generation = 0

    @property
    def open_count(self) -> int:
        return self._in_use + len(self._idle)

    async def acquire(self) -> PooledConnection:
        """An idle connection still fit for use, else a new one (a slot first)."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.acquire_timeout)
        except TimeoutError:
            raise PoolBusy from None
        self._in_use += 1
        try:
            while self._idle:
                conn = self._idle.pop()  # the most recently used: the least likely stale
                if conn.client.is_connected and not self._expired(conn):
                    self.stats.reused += 1
                    conn.was_idle = True
                    return conn
                await self._quit(conn)
            return await self.open_new()
        except BaseException:
            self._give_back_slot()
            raise

    async def open_new(self) -> PooledConnection:
        """A new connection for a slot the caller holds (also replaces a stale one)."""
        client, greeting = await self.open_connection()
        self.stats.opened += 1
        return PooledConnection(client, greeting, self.clock(), self._generation)

    async def release(self, conn: PooledConnection, *, reusable: bool) -> None:
        """Give the slot back. `reusable=False`: the exchange broke off somewhere unknown
        (e.g. a cancelled send), so the connection is cut, not QUIT. Otherwise it is kept
        while connected and under the message cap, else QUIT."""
        keep = (
            reusable
            and conn.generation == self._generation
            and conn.client.is_connected
            and conn.transactions < self.max_messages
        )
        if keep:
            conn.last_used = self.clock()
            self._idle.append(conn)
            self._start_reaper()
            self._give_back_slot()
            return
        try:  # the slot is held until the connection is gone, so the bound holds at the relay
            if reusable:
                await self._quit(conn)
            else:
                conn.client.close()
        finally:
            self._give_back_slot()

    async def discard(self, conn: PooledConnection) -> None:
        """Close a connection the caller will not use again (it keeps its slot)."""
        await self._quit(conn)

    async def close(self) -> None:
        """QUIT every idle connection; ones in use are closed when they come back. (A
        later send opens a new one: at worker shutdown none comes, and a test process
        that shuts a worker down may still send through another transport.)"""
        self._generation += 1
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(c) for c in idle))

    def _expired(self, conn: PooledConnection) -> bool:
        return self.clock() - conn.last_used >= self.idle_timeout

    def _give_back_slot(self) -> None:
        self._in_use -= 1
        self._slots.release()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Close idle connections as they expire, so none lingers until a relay cuts it;
        stops when nothing is idle (the next release starts it again). It takes a slot
        for each goodbye, so a connection being closed still counts against the bound."""
        while self._idle:
            wait = self._idle[0].last_used + self.idle_timeout - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            async with self._slots:
                if self._idle and self._expired(self._idle[0]):
                    await self._quit(self._idle.pop(0))

    @staticmethod
    async def _quit(conn: PooledConnection) -> None:
        client = conn.client
        if not client.is_connected:
            client.close()
            return
        try:
            await client.quit(timeout=QUIT_TIMEOUT)
        except Exception:
            client.close()
        except BaseException:  # cancelled mid-goodbye: still leave nothing open
            client.close()
            raise
