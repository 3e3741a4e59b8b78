"""A database of a test module's own, on the session's PostgreSQL server.

For tests that count what their own processes did with a queue kept in the database (the
tracking judge's): the test session's API has a judge of its own, woken by every NOTIFY,
that would otherwise take part of that queue. Created and migrated like the session's
database (tests/conftest.py), dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from core.config import Settings
from core.db import Database
from core.migrate import upgrade_async
from devstack.postgres import EmbeddedPostgres


async def _admin(postgres: EmbeddedPostgres, statement: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        postgres.url("postgres"), autocommit=True
    ) as conn:
        await conn.execute(statement)


@asynccontextmanager
async def own_database(
    postgres: EmbeddedPostgres, settings: Settings, prefix: str
) -> AsyncIterator[tuple[Database, Settings]]:
    """A fresh, migrated database and the session's settings pointing at it."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    await _admin(postgres, f'CREATE DATABASE "{name}"')
    try:
        url = postgres.url(name)
        await upgrade_async(url)
        db = Database(url)
        try:
            yield db, settings.model_copy(update={"database_url": url})
        finally:
            await db.dispose()
    finally:
        await _admin(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
