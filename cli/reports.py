"""`journeys reports ...`: print a journey's report, and catch the rollups up with raw data."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from core.config import get_settings

app = typer.Typer(no_args_is_help=True, help="Journey and engagement reports.")


def _url() -> str:
    from cli.main import _database_url

    return _database_url(get_settings())


def _fail(message: str) -> None:
    from cli.main import _fail as fail

    fail(message)


@app.command("backfill")
def backfill_cmd(
    journey: Annotated[
        str | None, typer.Option(help="Only this journey (default: every journey)")
    ] = None,
) -> None:
    """Count raw rows the report counters do not hold yet (idempotent; safe to rerun).

    Use after importing history, or for rows written before a writer called its hook.
    """
    from sqlmodel import select

    from core.db import Database
    from core.models import Journey
    from services.report_rollup import backfill

    async def go() -> list[str]:
        db = Database(_url())
        try:
            async with db.session() as s:
                keys = [journey] if journey else list((await s.exec(select(Journey.key))).all())
            for key in keys:
                async with db.session() as s:
                    await backfill(s, key)
                    await s.commit()
            return keys
        finally:
            await db.dispose()

    for key in asyncio.run(go()):
        print(f"counted {key}")


@app.command("show")
def show(
    journey: Annotated[str, typer.Argument(help="Journey key")],
    version: Annotated[int | None, typer.Option(help="Only this version")] = None,
    start: Annotated[str | None, typer.Option("--from", help="First day, YYYY-MM-DD")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Last day, YYYY-MM-DD")] = None,
    include_automated: Annotated[
        bool | None,
        typer.Option(
            "--include-automated/--exclude-automated",
            help="Default: the account setting exclude_automated_events",
        ),
    ] = None,
    csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON")] = False,
) -> None:
    """Print a journey's per-step report (what GET /v1/journeys/{key}/report returns)."""
    from core.db import Database
    from services.context import Actor, ServiceContext
    from services.errors import ServiceError
    from services.report_csv import journey_report_csv
    from services.reports import Period, journey_report, parse_day

    settings = get_settings()

    async def go() -> dict[str, Any]:
        db = Database(_url())
        try:
            async with db.session() as s:
                ctx = ServiceContext(s, settings, None, Actor("cli", "admin"))
                period = Period(parse_day(start, "from"), parse_day(end, "to"))
                return await journey_report(
                    ctx,
                    journey,
                    version=version,
                    period=period,
                    include_automated=include_automated,
                )
        finally:
            await db.dispose()

    try:
        report = asyncio.run(go())
    except ServiceError as exc:
        _fail(f"{exc.message} {json.dumps(exc.details, default=str) if exc.details else ''}")
        return
    print(journey_report_csv(report) if csv else json.dumps(report, indent=2, default=str), end="")
