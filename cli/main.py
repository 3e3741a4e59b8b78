"""The `journeys` command line: run the stack or one part of it, and manage the product."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

from core.config import get_settings

app = typer.Typer(no_args_is_help=True, help="Healthcare-grade email journeys on Temporal.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")

err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


@app.command()
def dev() -> None:
    """Start PostgreSQL, Temporal (with UI), the SMTP sink, the worker and the API."""
    from devstack.ports import PortTaken
    from devstack.stack import run_dev

    settings = get_settings().model_copy(update={"dev_mode": True})
    try:
        code = asyncio.run(run_dev(settings, say=lambda s: print(s, flush=True)))
    except PortTaken as exc:
        _fail(str(exc))
        return
    raise typer.Exit(code)


@app.command()
def worker() -> None:
    """Run one worker against the configured Temporal, database and SMTP relay."""
    from devstack.preflight import PreflightError, check_all
    from worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    try:
        asyncio.run(check_all(settings))
    except PreflightError as exc:
        _fail(str(exc))
    try:
        asyncio.run(run_worker(settings))
    except KeyboardInterrupt:
        pass


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address (API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (API_PORT)")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve the HTTP API against the configured services."""
    import uvicorn

    from devstack.preflight import PreflightError, check_all

    settings = get_settings()
    try:
        asyncio.run(check_all(settings))
    except PreflightError as exc:
        _fail(str(exc))
    uvicorn.run(
        "api.serve:app_factory",  # the app, with /t/* answered ahead of the framework
        factory=True,
        host=host or settings.api_host,
        port=port or settings.api_port,
        workers=workers,
        log_level="warning",
        access_log=False,  # URLs carry only opaque ids, but quiet is cheaper
        proxy_headers=False,  # client IPs come from X-Forwarded-For only for TRUSTED_PROXIES
    )


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="admin, designer, operator, marketer, auditor, integration")],
    name: Annotated[str, typer.Option(help="A label for the key")] = "",
) -> None:
    """Print a new API key with ROLE (stored hashed; shown only now)."""
    from core.db import Database
    from devstack.preflight import PreflightError, check_database
    from services.apikeys import create_key
    from services.errors import ServiceError

    settings = get_settings()
    url = _database_url(settings)

    async def go() -> str:
        await check_database(url)
        db = Database(url)
        try:
            async with db.session() as s:
                return await create_key(s, role, str(settings.secret_values()["api_key_pepper"]), name)
        finally:
            await db.dispose()

    try:
        print(asyncio.run(go()))
    except (PreflightError, ServiceError) as exc:
        _fail(str(exc))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to DATABASE_URL."""
    from core.migrate import upgrade

    upgrade(_database_url(get_settings()))
    print("database is up to date")


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Argument(help="What the migration does")],
    initial: Annotated[bool, typer.Option(help="Rewrite 0001 from the tables (pre-release only)")] = False,
) -> None:
    """Autogenerate a migration from the tables in core/models.py."""
    from devstack.makemigration import autogenerate

    asyncio.run(autogenerate(message, initial=initial))


def _database_url(settings: object) -> str:
    """DATABASE_URL, or the embedded server of `journeys dev` when it is running."""
    from core.config import Settings

    assert isinstance(settings, Settings)
    if settings.database_url:
        return settings.database_url
    return f"postgresql://postgres@127.0.0.1:{settings.postgres_port}/journeys"


def _register_command_modules() -> None:
    """Every other module in cli/ exposing `app` (a Typer) becomes `journeys <NAME>`,
    and one exposing `register(app)` adds top-level commands."""
    import importlib
    import pkgutil

    import cli

    for info in sorted(pkgutil.iter_modules(cli.__path__), key=lambda m: m.name):
        if info.name == "main":
            continue
        module = importlib.import_module(f"cli.{info.name}")
        if hasattr(module, "register"):
            module.register(app)
        elif isinstance(getattr(module, "app", None), typer.Typer):
            app.add_typer(module.app, name=getattr(module, "NAME", info.name))


_register_command_modules()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(app())
