"""The open pixel and click redirect as plain ASGI (SPEC sections 4 and 5).

`TrackingEndpoints.respond` is the whole request: check the token's MAC, find the link
(in-process cache, one primary-key lookup on a miss), hand the evidence to the hit
buffer and answer. No database round-trip in the common case, and nothing the judge
does is on this path. The FastAPI routes in api.routers.tracking call the same
function (so OpenAPI and every behaviour stay as declared); `TrackingFastPath` answers
/t/o/ and /t/c/ before the framework's middleware and routing, which cost more than
the work itself at thousands of hits a second.

A token names a stored link and nothing else, so the redirect target always comes from
the database (through the cache): no part of the URL can change it. Bad tokens get a
404 without touching the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from core.config import Settings
from core.db import Database
from core.tokens import TokenSigner
from services.tracking import CLICK_KINDS, OPEN_KINDS, LinkCache, LinkInfo, safe_target
from services.tracking_buffer import CLIENT_MARGIN, KIND, HitBuffer, HitRow, hit_row, write_inline
from services.tracking_request import (
    EvidenceReader,
    IPNetwork,
    TrustedProxyError,
    parse_trusted_proxies,
)

log = logging.getLogger("journeys.tracking")

Headers = list[tuple[bytes, bytes]]

# A transparent 1x1 GIF89a: header, 1x1 screen with a 2-colour table, a graphic control
# extension marking colour 0 transparent, one 1x1 image (LZW min code size 2), trailer.
PIXEL_GIF = (
    b"GIF89a"
    + b"\x01\x00\x01\x00"  # width 1, height 1
    + b"\x80\x00\x00"  # global colour table of 2 entries, background 0, aspect 0
    + b"\x00\x00\x00\xff\xff\xff"  # black, white
    + b"\x21\xf9\x04\x01\x00\x00\x00\x00"  # graphic control: transparent index 0
    + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00"  # image descriptor 1x1 at 0,0
    + b"\x02\x02\x44\x01\x00"  # LZW min size 2, one 2-byte block, end of blocks
    + b"\x3b"  # trailer
)

NO_STORE = {
    # Nothing caches an answer (each fetch must reach us to be counted). No Expires or
    # Pragma: with max-age present a recipient must ignore Expires, and Pragma has no
    # defined meaning in a response (RFC 9111 sections 5.3, 5.4); they only cost every
    # hit two more header lines to write and parse.
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    # The tracking URL never travels on as a Referer, and none of this is indexed.
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}

NOT_FOUND_PAGE = (
    "<!doctype html><meta name=robots content=noindex><title>Link not found</title>"
    "<p>This link is not valid.</p>"
)
UNAVAILABLE_PAGE = (
    "<!doctype html><meta name=robots content=noindex><title>Try again</title>"
    "<p>This link cannot be opened right now. Please try again in a moment.</p>"
)

_MAX_VERIFIED = 50_000

# The same few destinations are checked again and again (a link per template).
_safe_target = lru_cache(maxsize=20_000)(safe_target)

# Starlette's quoting of a redirect URL, so both paths send the same Location.
_LOCATION_SAFE = ":/%#?=@[]!$&'()*+,;"


def _raw(headers: dict[str, str]) -> Headers:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


_NO_STORE_RAW = _raw(NO_STORE)
_HTML = (b"content-type", b"text/html; charset=utf-8")


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Headers
    body: bytes
    # The two ASGI messages of this answer, made once: servers only read them, and a
    # cached answer is sent thousands of times a second.
    start: dict[str, Any] = field(init=False, repr=False, compare=False)
    end: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        start = {"type": "http.response.start", "status": self.status, "headers": self.headers}
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", {"type": "http.response.body", "body": self.body})


def _page_reply(
    status: int, html: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[Reply, Reply]:
    body = html.encode()
    get = Reply(
        status, [*_NO_STORE_RAW, *extra, (b"content-length", str(len(body)).encode()), _HTML], body
    )
    head = Reply(status, [*_NO_STORE_RAW, *extra, (b"content-length", b"0"), _HTML], b"")
    return get, head


_NOT_FOUND = _page_reply(404, NOT_FOUND_PAGE)
_UNAVAILABLE = _page_reply(503, UNAVAILABLE_PAGE, [(b"retry-after", b"5")])
_PIXEL_HEADERS = [
    *_NO_STORE_RAW,
    (b"content-length", str(len(PIXEL_GIF)).encode()),
    (b"content-type", b"image/gif"),
]
_PIXEL = (Reply(200, _PIXEL_HEADERS, PIXEL_GIF), Reply(200, _PIXEL_HEADERS, b""))


def _pick(pair: tuple[Reply, Reply], method: str) -> Reply:
    return pair[1] if method == "HEAD" else pair[0]


@lru_cache(maxsize=20_000)
def _redirect(target: str) -> Reply:
    location = quote(target, safe=_LOCATION_SAFE).encode("latin-1")
    return Reply(302, [*_NO_STORE_RAW, (b"content-length", b"0"), (b"location", location)], b"")


# Which stored link kinds each purpose's route serves.
_KINDS = {"open": OPEN_KINDS, "click": CLICK_KINDS}


class Pending:
    """What `respond_cached` learnt about a request it could not answer alone, so that
    `finish` neither verifies the token nor reads the evidence a second time: the link
    is not cached (`link` None), or it is and its hit (`row`, answer `reply`) found the
    buffer full."""

    __slots__ = ("purpose", "link_hex", "expired", "link", "reply", "row")

    def __init__(
        self,
        purpose: str,
        link_hex: str,
        expired: bool,
        link: LinkInfo | None,
        reply: Reply | None,
        row: HitRow | None,
    ) -> None:
        self.purpose = purpose
        self.link_hex = link_hex
        self.expired = expired
        self.link = link
        self.reply = reply
        self.row = row


class TrackingEndpoints:
    """What /t/o/{token} and /t/c/{token} do, whoever routes the request here.

    `respond_cached` answers without awaiting anything whenever it can (a bad token, or a
    cached link whose hit goes on the buffer): the common case of a busy endpoint, with
    no coroutine or task of its own. Otherwise it returns a `Pending` and `finish` looks
    the link up or writes the hit inline. `respond` is the two together."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        signer: TokenSigner,
        cache: LinkCache,
        buffer: HitBuffer | None = None,
        on_recorded: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.signer = signer
        self.cache = cache
        self.buffer = buffer
        self.on_recorded = on_recorded
        self.statement_timeout_ms = settings.tracking_request_db_timeout_ms
        self.lock_timeout_ms = settings.tracking_db_lock_timeout_ms
        try:
            self.proxies: tuple[IPNetwork, ...] = parse_trusted_proxies(settings.trusted_proxies)
        except TrustedProxyError:
            self.proxies = ()  # believe no forwarded address rather than a misread one
        self.evidence = EvidenceReader(self.proxies)
        self.inline_writes = 0
        # purpose -> token -> (link id in hex, expires_at) for authentic tokens: a pixel
        # or link is fetched again and again (reloads, proxies, scanners), and the MAC of
        # a given token under fixed keys never changes. Bounded; only authentic tokens
        # enter.
        self._verified: dict[str, dict[str, tuple[str, int]]] = {"open": {}, "click": {}}

    def _verify(self, token: str, purpose: str) -> tuple[str, bool] | None:
        """(link id in hex, expired) for an authentic token, else None."""
        known = self._verified[purpose].get(token)
        now = int(time.time())
        if known is not None:
            return known[0], now >= known[1]
        verified = self.signer.verify(token, purpose, now)
        if verified is None:
            return None
        link_hex = verified.link_id.hex()
        cache = self._verified[purpose]
        if len(cache) >= _MAX_VERIFIED:
            cache.clear()  # simple and bounded; it refills from hot tokens
        cache[token] = (link_hex, verified.expires_at)
        return link_hex, verified.expired

    @staticmethod
    def _decide(purpose: str, link: LinkInfo, method: str) -> tuple[Reply, bool]:
        """(the answer for this link, whether the hit is recorded if the token is fresh)."""
        if link.kind not in _KINDS[purpose]:
            return _pick(_NOT_FOUND, method), False
        if purpose == "open":
            # A link of an erased contact still answers the pixel, recording nothing.
            return _pick(_PIXEL, method), not link.erased
        if link.erased:
            return _pick(_NOT_FOUND, method), False
        if link.kind == "trap":
            # The hidden trap link: nobody can see or reach it, so whatever follows it is
            # a machine. It is recorded (that is the evidence) and gets a harmless page.
            return _pick(_NOT_FOUND, method), True
        target = _safe_target(link.url)
        if target is None:
            return _pick(_NOT_FOUND, method), False
        return _redirect(target), True

    def respond_cached(
        self,
        route: str,
        token: str,
        method: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        peer: str | None,
    ) -> Reply | Pending:
        """The answer if it needs no database (a bad token; a cached link, its hit taken
        by the buffer), else what was found so far: hand it to `finish`, which does not
        verify the token or read the evidence again. Same arguments as `respond`."""
        purpose = "open" if route == "o" else "click"
        verified = self._verify(token, purpose)
        if verified is None:
            return _pick(_NOT_FOUND, method)
        link = self.cache.peek(verified[0])
        if link is None:
            return Pending(purpose, verified[0], verified[1], None, None, None)
        reply, record = self._decide(purpose, link, method)
        if not record or verified[1]:
            return reply
        row = self._row(link, method, raw_headers, peer)
        buffer = self.buffer
        if buffer is not None and buffer.offer(row):
            return reply
        return Pending(purpose, verified[0], verified[1], link, reply, row)  # write it inline

    async def finish(
        self,
        pending: Pending,
        method: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        peer: str | None,
    ) -> Reply:
        """The rest of a request `respond_cached` could not answer: look the link up, or
        write the hit the full buffer refused."""
        if pending.link is None:
            try:
                link = await self.cache.get(pending.link_hex)
            except Exception as exc:
                if pending.purpose == "open":
                    # The token is authentic, so the image is harmless: never break the
                    # email's rendering because the database is briefly unreachable.
                    log.error("open not recorded: %s", type(exc).__name__)
                    return _pick(_PIXEL, method)
                # Without the stored destination there is nowhere safe to send the reader.
                log.error("click lookup failed: %s", type(exc).__name__)
                return _pick(_UNAVAILABLE, method)
            if link is None:
                return _pick(_NOT_FOUND, method)
            reply, record = self._decide(pending.purpose, link, method)
            if record and not pending.expired:
                await self._record(self._row(link, method, raw_headers, peer))
            return reply
        assert pending.reply is not None and pending.row is not None
        await self._write_inline(pending.row)  # the buffer refused it a moment ago
        return pending.reply

    async def respond(
        self,
        route: str,
        token: str,
        method: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        peer: str | None,
    ) -> Reply:
        """`route` is "o" (pixel) or "c" (click); `method` GET or HEAD (upper case)."""
        reply = self.respond_cached(route, token, method, raw_headers, peer)
        if isinstance(reply, Reply):
            return reply
        return await self.finish(reply, method, raw_headers, peer)

    def _row(
        self,
        link: LinkInfo,
        method: str,
        raw_headers: Iterable[tuple[bytes, bytes]],
        peer: str | None,
    ) -> HitRow:
        ip, user_agent, headers = self.evidence.read(raw_headers, peer)
        return hit_row(
            link.send_id,
            link.id,
            link.hit_kind,
            link.hit_link,
            time.time(),
            ip or None,
            user_agent or None,
            method,
            headers,
        )

    async def _record(self, row: HitRow) -> None:
        """Buffer the hit; inline when the buffer is full or absent. Never raises."""
        if self.buffer is not None and self.buffer.offer(row):
            return
        await self._write_inline(row)

    async def _write_inline(self, row: HitRow) -> None:
        """Write the hit before answering. Never raises."""
        try:
            # Bounded twice: statement and lock timeouts on the server, and this wait
            # for a server that stopped answering altogether.
            await asyncio.wait_for(
                write_inline(
                    self.db,
                    row,
                    statement_timeout_ms=self.statement_timeout_ms,
                    lock_timeout_ms=self.lock_timeout_ms,
                ),
                timeout=self.statement_timeout_ms / 1000 + CLIENT_MARGIN,
            )
        except Exception as exc:
            # Answer anyway (the reader must not pay for our database); say so loudly.
            log.error("%s not recorded: %s", row[KIND], type(exc).__name__)
            return
        self.inline_writes += 1
        if self.on_recorded is not None:
            self.on_recorded()


TRACKING_PREFIXES = ("/t/o/", "/t/c/")
# Without a token (a client normalised "/t/o/." away): a 404 here, not the framework's
# trailing-slash redirect.
TRACKING_BARE = ("/t/o", "/t/c")


def is_tracking_path(path: str) -> bool:
    return path.startswith(TRACKING_PREFIXES) or path in TRACKING_BARE


class TrackingFastPath:
    """ASGI in front of the framework: GET/HEAD under /t/o/ and /t/c/ go straight to
    `TrackingEndpoints`; everything else (other methods get FastAPI's 405) passes on.
    `active` is cleared when the app's lifespan ends (api.serve.Front keeps a reference)."""

    def __init__(self, inner: ASGIApp, endpoints: TrackingEndpoints) -> None:
        self.inner = inner
        self.endpoints = endpoints
        self.active = True

    def answer(self, scope: Scope) -> Reply | Pending | None:
        """`respond_cached` for a tracking GET/HEAD (a `Pending` goes to `finish`), None
        for any other request. Not a coroutine: the common case awaits nothing."""
        if scope["type"] != "http" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        method: str = scope["method"]
        if (method != "GET" and method != "HEAD") or not is_tracking_path(path):
            return None
        client: Sequence[Any] | None = scope.get("client")
        peer = client[0] if client else None
        return self.endpoints.respond_cached(path[3], path[5:], method, scope["headers"], peer)

    async def finish(self, pending: Pending, scope: Scope) -> Reply:
        client: Sequence[Any] | None = scope.get("client")
        peer = client[0] if client else None
        return await self.endpoints.finish(pending, scope["method"], scope["headers"], peer)

    async def handle(self, scope: Scope, send: Send) -> bool:
        """Answer the request if it is a tracking GET/HEAD (True), else leave it (False)."""
        reply = self.answer(scope)
        if reply is None:
            return False
        if not isinstance(reply, Reply):
            reply = await self.finish(reply, scope)
        await send(reply.start)
        await send(reply.end)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not await self.handle(scope, send):
            await self.inner(scope, receive, send)
