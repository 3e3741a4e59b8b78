"""Open pixel and click redirect (SPEC sections 4 and 5), outside /v1 and without a key.

Each request does one primary-key lookup and one insert, then answers; the background
judge (services.tracking_judge) classifies and signals later. A token names a stored
link and nothing else, so the redirect target always comes from the database: no part
of the URL or query string can change it. Bad tokens get a 404, never a redirect.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core.config import Settings
from core.db import Database
from core.models import utcnow
from core.tokens import TokenSigner
from services.tracking import (
    CLICK_KINDS,
    OPEN_KINDS,
    Hit,
    find_link,
    record_hit,
    redirect_target,
)
from services.tracking_judge import Doorbell, Ringer, TrackingJudge
from services.tracking_links import token_signer
from services.tracking_request import (
    MAX_USER_AGENT,
    TrustedProxyError,
    client_ip,
    evidence_headers,
    forwarded_chain,
    parse_trusted_proxies,
)

log = logging.getLogger("journeys.tracking")

router = APIRouter(tags=["tracking"])

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
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0, private",
    "Pragma": "no-cache",
    "Expires": "0",
    # The tracking URL never travels on as a Referer, and none of this is indexed.
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
}

_NOT_FOUND_PAGE = (
    "<!doctype html><meta name=robots content=noindex><title>Link not found</title>"
    "<p>This link is not valid.</p>"
)


def _page(status: int, request: Request, html: str = _NOT_FOUND_PAGE) -> Response:
    body = "" if request.method == "HEAD" else html
    return HTMLResponse(body, status_code=status, headers=NO_STORE)


def _signer(app: FastAPI) -> TokenSigner:
    signer: TokenSigner | None = getattr(app.state, "token_signer", None)
    if signer is None:
        signer = token_signer(app.state.settings)
        app.state.token_signer = signer
    return signer


def ensure_judge(app: FastAPI) -> Ringer:
    """What a recorded hit rings: the app's judge, started if it is not running
    (lifespan, or the first hit), or with TRACKING_JUDGE_IN_API=false a doorbell that
    NOTIFYs the `journeys judge` processes."""
    settings: Settings = app.state.settings
    if not settings.tracking_judge_in_api:
        bell: Doorbell | None = getattr(app.state, "tracking_doorbell", None)
        if bell is None:
            bell = Doorbell(app.state.db)
            app.state.tracking_doorbell = bell
        return bell
    judge: TrackingJudge | None = getattr(app.state, "tracking_judge", None)
    if judge is None:
        judge = TrackingJudge(app.state.db, settings, app.state.temporal)
        app.state.tracking_judge = judge
    judge.temporal = app.state.temporal
    judge.start()
    return judge


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Started by api.main's lifespan: check TRUSTED_PROXIES, run the judge (unless it
    runs in its own processes), stop it on exit."""
    settings: Settings = app.state.settings
    try:
        parse_trusted_proxies(settings.trusted_proxies)
    except TrustedProxyError as exc:
        raise RuntimeError(str(exc)) from None
    judge = ensure_judge(app)
    try:
        yield
    finally:
        await judge.stop()


def _hit(request: Request) -> Hit:
    settings: Settings = request.app.state.settings
    try:
        proxies = parse_trusted_proxies(settings.trusted_proxies)
    except TrustedProxyError:
        proxies = ()  # believe no forwarded address rather than a misread one
    xff = forwarded_chain(request.headers.getlist("x-forwarded-for"))
    peer = request.client.host if request.client else None
    return Hit(
        at=utcnow(),
        ip=client_ip(peer, xff, proxies),
        method=request.method.upper(),
        user_agent=request.headers.get("user-agent", "")[:MAX_USER_AGENT],
        headers=evidence_headers(request.headers, len(xff), "referer" in request.headers),
    )


# `:path` so that every URL under /t/o/ and /t/c/ reaches the handler (and its 404):
# otherwise a token with a slash would get the framework's trailing-slash redirect.
@router.get("/t/o/{token:path}", summary="Open pixel (HEAD too)")
@router.head("/t/o/{token:path}", include_in_schema=False)
async def open_pixel(token: str, request: Request) -> Response:
    verified = _signer(request.app).verify(token, "open", int(time.time()))
    if verified is None:
        return _page(404, request)
    db: Database = request.app.state.db
    recorded = False
    try:
        async with db.session() as s:
            link = await find_link(s, verified.link_id, OPEN_KINDS)
            if link is None:
                return _page(404, request)
            if not verified.expired:
                await record_hit(s, link, _hit(request))
                recorded = True
    except Exception as exc:
        # The token is authentic, so the image is harmless: never break the email's
        # rendering because the database is briefly unreachable.
        log.error("open not recorded: %s", type(exc).__name__)
    if recorded:
        ensure_judge(request.app).notify()
    body = b"" if request.method == "HEAD" else PIXEL_GIF
    headers = dict(NO_STORE, **{"Content-Length": str(len(PIXEL_GIF))})
    return Response(body, media_type="image/gif", headers=headers)


@router.get("/t/c/{token:path}", summary="Click redirect (HEAD too)")
@router.head("/t/c/{token:path}", include_in_schema=False)
async def click_redirect(token: str, request: Request) -> Response:
    verified = _signer(request.app).verify(token, "click", int(time.time()))
    if verified is None:
        return _page(404, request)
    db: Database = request.app.state.db
    async with db.session() as s:
        link = await find_link(s, verified.link_id, CLICK_KINDS)
        if link is None:
            return _page(404, request)
        target = None if link.kind == "trap" else redirect_target(link)
        if link.kind != "trap" and target is None:
            return _page(404, request)
        if not verified.expired:
            await record_hit(s, link, _hit(request))
            ensure_judge(request.app).notify()
    if target is None:
        # The hidden trap link: nobody can see or reach it, so whatever follows it is a
        # machine. It is recorded (that is the evidence) and gets a harmless page.
        return _page(404, request)
    return RedirectResponse(target, status_code=302, headers=NO_STORE)
