"""The tracking hit pipeline for the app's lifetime: link cache, hit buffer, lean /t/* path.

A lifespan hook of its own (api.main runs every router module's `lifespan`, in name
order, so this one starts after api.routers.tracking's judge and stops before it): on
the way out every buffered hit is written, then the judge stops.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.routers.tracking import link_cache, wake_judge
from api.tracking_fastpath import TrackingEndpoints, TrackingFastPath
from core.config import Settings
from core.db import Database
from services.tracking_buffer import HitBuffer
from services.tracking_links import token_signer


def _wake_judge(app: FastAPI) -> None:
    """A judge in this process (if any) looks at the new rows at once; judges in other
    processes hear the batch's NOTIFY."""
    judge = getattr(app.state, "tracking_judge", None)
    if judge is not None:
        judge.notify()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    db: Database = app.state.db
    buffer = HitBuffer(
        db,
        on_commit=lambda _n: _wake_judge(app),
        statement_timeout_ms=settings.tracking_writer_db_timeout_ms,
        lock_timeout_ms=settings.tracking_db_lock_timeout_ms,
    )
    buffer.start()
    endpoints = TrackingEndpoints(
        settings,
        db,
        token_signer(settings),
        link_cache(settings, db),
        buffer=buffer,
        # An inline write (buffer full) notifies in its own statement, like a batch.
        on_recorded=lambda: wake_judge(app),
    )
    app.state.tracking_endpoints = endpoints
    app.state.tracking_buffer = buffer
    inner = app.middleware_stack or app.build_middleware_stack()
    fast = TrackingFastPath(inner, endpoints)
    app.middleware_stack = fast
    app.state.tracking_fastpath = fast  # api.serve.Front calls it directly
    # Everything built so far (the app, its routes, models, libraries: ~150k objects)
    # lives as long as the process; left to the collector, each full collection walks
    # it all (100+ ms on a busy machine), which shows up as stalls in hit latency once
    # cached links and buffered hits start to age. Frozen, collections skip it.
    gc.freeze()
    try:
        yield
    finally:
        fast.active = False
        if app.middleware_stack is fast:
            app.middleware_stack = inner
        app.state.tracking_endpoints = app.state.tracking_fastpath = None
        await buffer.stop()
        await endpoints.cache.close()
