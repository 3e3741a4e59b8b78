"""A database of a test module's own, on the session's PostgreSQL server.

For tests that count what their own processes did with a queue kept in the database (the
tracking judge's): the test session's API has a judge of its own, woken by every NOTIFY,
that would otherwise take part of that queue. Created and migrated like the session's
database (tests/conftest.py), dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
import pytest_asyncio

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


def own_database_fixtures(prefix: str) -> tuple[Callable[..., Any], ...]:
    """Fixtures for a test module: `own` (module-scoped: the database, created once) and
    `judge_db` / `judge_settings` (its Database and Settings). Bind all three in the module:
    `own, judge_db, judge_settings = own_database_fixtures("judge_x")`."""

    @pytest_asyncio.fixture(scope="module", name="own")
    async def own(
        postgres: EmbeddedPostgres, settings: Settings
    ) -> AsyncIterator[tuple[Database, Settings]]:
        async with own_database(postgres, settings, prefix) as pair:
            yield pair

    @pytest.fixture(name="judge_db")
    def judge_db(own: tuple[Database, Settings]) -> Database:
        return own[0]

    @pytest.fixture(name="judge_settings")
    def judge_settings(own: tuple[Database, Settings]) -> Settings:
        return own[1]

    return own, judge_db, judge_settings
