"""`journeys contacts ...`: bulk import against DATABASE_URL (and TEMPORAL_ADDRESS, so
contacts entering segments start their segment-entry journeys)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from core.config import get_settings

app = typer.Typer(no_args_is_help=True, help="Contacts.")
err = Console(stderr=True)


async def _service_context(settings: Any) -> tuple[Any, Any, Any]:
    """(database, session context manager, temporal client or None)."""
    from cli.main import _database_url
    from core.db import Database
    from devstack.preflight import check_database

    url = _database_url(settings)
    await check_database(url)
    temporal = None
    if settings.temporal_address:
        from core.temporal import connect

        try:
            temporal = await asyncio.wait_for(connect(settings), timeout=10)
        except Exception:
            err.print("[yellow]warning:[/] Temporal is not reachable: contacts entering "
                      "segments will not start segment-entry journeys during this import")
    return Database(url), url, temporal


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="A .csv (header row) or .ndjson/.jsonl file")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and count only")] = False,
    fmt: Annotated[str | None, typer.Option("--format", help="csv or ndjson (default: by "
                                            "file extension)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=5000)] = 1000,
    errors_json: Annotated[Path | None, typer.Option(help="Write the full report here")] = None,
) -> None:
    """Upserts contacts by external_id from FILE, streamed in batches, with a progress bar.
    Bad rows are skipped whole and listed by row, line, field and reason."""
    from services.contact_import import format_for, import_contacts, iter_file
    from services.context import Actor, ServiceContext
    from services.errors import ServiceError

    kind = format_for(None, f"x.{fmt}" if fmt else file.name)
    if kind is None:
        err.print("[bold red]error:[/] say --format csv or --format ndjson")
        raise typer.Exit(2)
    settings = get_settings()
    size = file.stat().st_size

    async def go() -> dict[str, Any]:
        db, _, temporal = await _service_context(settings)
        try:
            with Progress(
                TextColumn("[bold]importing[/] {task.fields[rows]} rows"),
                BarColumn(),
                DownloadColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            ) as progress:
                task = progress.add_task("import", total=size, rows=0)

                async def chunks() -> AsyncIterator[bytes]:
                    for chunk in iter_file(str(file)):
                        yield chunk
                        progress.advance(task, len(chunk))

                async with db.session() as s:
                    ctx = ServiceContext(s, settings, temporal, Actor("cli", "admin"))
                    report = await import_contacts(
                        ctx, chunks(), kind, dry_run=dry_run, batch_size=batch_size,
                        progress=lambda rows: progress.update(task, rows=rows),
                    )
                progress.update(task, completed=size)
            return report.as_dict()
        finally:
            await db.dispose()

    try:
        report = asyncio.run(go())
    except ServiceError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.details:
            err.print(json.dumps(exc.details, default=str), highlight=False)
        raise typer.Exit(2) from None
    verb = "would create" if dry_run else "created"
    err.print(
        f"{report['rows']} rows in {report['seconds']:.1f} s: {verb} {report['created']}, "
        f"updated {report['updated']}, failed {report['failed']}",
        highlight=False,
    )
    for e in report["errors"][:20]:
        field = e["field"] or "(row)"
        err.print(f"  row {e['row']} (line {e['line']}) {field}: {e['message']}", highlight=False)
    if len(report["errors"]) > 20 or report["errors_truncated"]:
        err.print("  ... more in the full report (--errors-json)")
    if errors_json is not None:
        errors_json.write_text(json.dumps(report, indent=2))
    if report["failed"]:
        sys.exit(1)
