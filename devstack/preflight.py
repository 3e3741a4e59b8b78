"""Start-up checks that turn misconfiguration into one clear line."""

from __future__ import annotations

import asyncio

import psycopg

from core.config import Settings
from core.db import DatabaseConfigError, normalize_url, safe_url


class PreflightError(RuntimeError):
    pass


async def check_database(url: str | None) -> None:
    if not url:
        raise PreflightError("DATABASE_URL is not set; set it to postgresql://USER:PASS@HOST:PORT/DB")
    try:
        normalize_url(url)
    except DatabaseConfigError as exc:
        raise PreflightError(str(exc)) from None
    plain = normalize_url(url).replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        conn = await psycopg.AsyncConnection.connect(plain, connect_timeout=5)
        await conn.close()
    except Exception as exc:
        reason = type(exc).__name__
        raise PreflightError(
            f"cannot connect to the database at {safe_url(url)} ({reason}); check DATABASE_URL "
            "and that PostgreSQL 14+ is running"
        ) from None


async def check_temporal(settings: Settings) -> None:
    from core.temporal import TemporalConfigError, connect

    try:
        await asyncio.wait_for(connect(settings), timeout=10)
    except (TemporalConfigError, TimeoutError) as exc:
        msg = str(exc) if isinstance(exc, TemporalConfigError) else (
            f"timed out connecting to Temporal at {settings.temporal_address}; check TEMPORAL_ADDRESS"
        )
        raise PreflightError(msg) from None


async def check_all(settings: Settings) -> None:
    await check_database(settings.database_url)
    await check_temporal(settings)
