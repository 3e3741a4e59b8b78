"""Open pixel and click redirect (SPEC sections 4 and 5), outside /v1 and without a key.

The work is api.tracking_fastpath.TrackingEndpoints: a token check, the link from an
in-process cache and the hit handed to a buffer that writes in batches
(api.routers.tracking_pipeline starts both and puts a lean ASGI path for /t/* in front
of the framework). These routes declare the endpoints (OpenAPI) and serve them when
that path is not installed. The background judge (services.tracking_judge) classifies
and signals later. Bad tokens get a 404, never a redirect.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from api.tracking_fastpath import NO_STORE, PIXEL_GIF, Reply, TrackingEndpoints
from core.config import Settings
from core.db import Database
from core.tokens import TokenSigner
from services.tracking import LinkCache
from services.tracking_judge import TrackingJudge
from services.tracking_links import token_signer
from services.tracking_request import TrustedProxyError, parse_trusted_proxies

__all__ = [
    "NO_STORE",
    "PIXEL_GIF",
    "ensure_judge",
    "lifespan",
    "link_cache",
    "router",
    "wake_judge",
]

log = logging.getLogger("journeys.tracking")

router = APIRouter(tags=["tracking"])


def _signer(app: FastAPI) -> TokenSigner:
    signer: TokenSigner | None = getattr(app.state, "token_signer", None)
    if signer is None:
        signer = token_signer(app.state.settings)
        app.state.token_signer = signer
    return signer


def link_cache(settings: Settings, db: Database) -> LinkCache:
    """The request path's link cache, its lookups bounded as the settings say."""
    return LinkCache(
        db,
        statement_timeout_ms=settings.tracking_request_db_timeout_ms,
        lock_timeout_ms=settings.tracking_db_lock_timeout_ms,
    )


def ensure_judge(app: FastAPI) -> TrackingJudge | None:
    """The app's judge, started if it is not running (lifespan, or the first hit); None
    with TRACKING_JUDGE_IN_API=false (`journeys judge` processes do the judging)."""
    settings: Settings = app.state.settings
    if not settings.tracking_judge_in_api:
        return None
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
        if judge is not None:
            await judge.stop()


def wake_judge(app: FastAPI) -> None:
    """After a hit is written: a judge in this process looks at once (and is started if
    it should run here but does not yet). Judges elsewhere need nothing from us: every
    statement that writes hits also runs pg_notify, and they LISTEN."""
    judge = ensure_judge(app)
    if judge is not None:
        judge.notify()


def endpoints(app: FastAPI) -> TrackingEndpoints:
    """The pipeline's endpoints, or (lifespan not run) ones that write each hit inline."""
    found: TrackingEndpoints | None = getattr(app.state, "tracking_endpoints", None)
    if found is None:
        db = app.state.db
        found = TrackingEndpoints(
            app.state.settings,
            db,
            _signer(app),
            link_cache(app.state.settings, db),
            on_recorded=lambda: wake_judge(app),
        )
        app.state.tracking_endpoints = found
    return found


def _response(reply: Reply) -> Response:
    response = Response(reply.body, status_code=reply.status)
    response.raw_headers = list(reply.headers)
    return response


async def _serve(route: str, token: str, request: Request) -> Response:
    peer = request.client.host if request.client else None
    reply = await endpoints(request.app).respond(
        route, token, request.method.upper(), request.headers.raw, peer
    )
    return _response(reply)


# `:path` so that every URL under /t/o/ and /t/c/ reaches the handler (and its 404):
# otherwise a token with a slash would get the framework's trailing-slash redirect.
@router.get("/t/o/{token:path}", summary="Open pixel (HEAD too)")
@router.head("/t/o/{token:path}", include_in_schema=False)
async def open_pixel(token: str, request: Request) -> Response:
    return await _serve("o", token, request)


@router.get("/t/c/{token:path}", summary="Click redirect (HEAD too)")
@router.head("/t/c/{token:path}", include_in_schema=False)
async def click_redirect(token: str, request: Request) -> Response:
    return await _serve("c", token, request)
