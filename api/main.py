"""The FastAPI application: thin routers over the services the CLI shares."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api import errors
from api.routers import contacts, health, journeys, outbox, runs, templates
from core.config import Settings, get_settings
from core.db import Database
from core.temporal import connect


def create_app(
    settings: Settings | None = None,
    *,
    db: Database | None = None,
    temporal: Client | None = None,
) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owns_db = db is None
        if app.state.db is None:
            if not settings.database_url:
                raise RuntimeError("DATABASE_URL is not set (journeys dev sets it for you)")
            app.state.db = Database(settings.database_url)
        if app.state.temporal is None:
            app.state.temporal = await connect(settings)
        yield
        if owns_db:
            await app.state.db.dispose()

    app = FastAPI(
        title="journeys",
        version="0.1.0",
        description="Healthcare-grade email journey automation on Temporal.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = db
    app.state.temporal = temporal
    errors.install(app)
    for r in (health, contacts, templates, journeys, runs):
        app.include_router(r.router)
    if settings.dev_mode:
        app.include_router(outbox.router)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory api.main:app_factory`."""
    return create_app()
