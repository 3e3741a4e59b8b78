"""Database engine and sessions (async SQLAlchemy over psycopg 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession


class DatabaseConfigError(RuntimeError):
    pass


def normalize_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and use the psycopg 3 driver for them."""
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the URL in it
        raise DatabaseConfigError(
            "DATABASE_URL is not a valid URL; expected postgresql://USER:PASSWORD@HOST:PORT/DB"
        ) from exc
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseConfigError(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://...), not '{parsed.get_backend_name()}'"
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


_engines: dict[str, AsyncEngine] = {}


def get_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    key = normalize_url(url)
    if key not in _engines:
        _engines[key] = create_async_engine(
            key, pool_size=pool_size, max_overflow=20, pool_pre_ping=True
        )
    return _engines[key]


def session_factory(url: str) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(get_engine(url), class_=AsyncSession, expire_on_commit=False)


class Database:
    """What services need from the database: a session factory bound to one URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = get_engine(url)
        self._factory = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._factory() as s:
            yield s

    async def dispose(self) -> None:
        await self.engine.dispose()
        _engines.pop(normalize_url(self.url), None)
