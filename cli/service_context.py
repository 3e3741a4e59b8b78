"""What CLI commands that call services need: a ServiceContext over DATABASE_URL and
TEMPORAL_ADDRESS (or the embedded services of a running `journeys dev`), and one way of
reporting service errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import typer
from rich.console import Console

from core.config import get_settings
from core.db import Database
from core.temporal import connect
from services.context import Actor, ServiceContext
from services.errors import ServiceError

CLI_ACTOR = Actor("cli", "admin")
err = Console(stderr=True)


def database_url() -> str:
    settings = get_settings()
    return settings.database_url or f"postgresql://postgres@127.0.0.1:{settings.postgres_port}/journeys"


@asynccontextmanager
async def service_context(*, temporal: bool = True) -> AsyncIterator[ServiceContext]:
    settings = get_settings()
    db = Database(database_url())
    try:
        client = None
        if temporal:
            address = settings.temporal_address or f"127.0.0.1:{settings.temporal_port}"
            client = await connect(settings, address)
        async with db.session() as session:
            yield ServiceContext(session, settings, client, CLI_ACTOR)
    finally:
        await db.dispose()


def print_error(exc: ServiceError) -> None:
    """The message, then each listed error with its step / index and field."""
    err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
    details: Any = exc.details
    errors = details.get("errors") if isinstance(details, dict) else None
    for e in errors or []:
        where = []
        if e.get("index") is not None:
            where.append(f"item {e['index']}")
        if e.get("step"):
            where.append(f"step {e['step']!r}")
        if e.get("field"):
            where.append(f"field {e['field']}")
        err.print(f"  - {', '.join(where) or 'journey'}: {e.get('message', '')}", highlight=False)
    if not errors and isinstance(details, dict):
        err.print(f"  {details}", highlight=False)


def fail(exc: Exception, code: int = 2) -> typer.Exit:
    if isinstance(exc, ServiceError):
        print_error(exc)
    else:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
    return typer.Exit(code)
