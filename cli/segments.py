"""`journeys segments ...`: list, preview a rule, run the time-based sweep once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from core.config import get_settings

app = typer.Typer(no_args_is_help=True, help="Segments.")
out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    from cli.contacts import _service_context
    from services.context import Actor, ServiceContext
    from services.errors import ServiceError

    settings = get_settings()

    async def go() -> T:
        db, _, temporal = await _service_context(settings)
        try:
            async with db.session() as s:
                return await work(ServiceContext(s, settings, temporal, Actor("cli", "admin")))
        finally:
            await db.dispose()

    try:
        return asyncio.run(go())
    except ServiceError as exc:
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.details:
            err.print(json.dumps(exc.details, default=str), highlight=False)
        raise typer.Exit(2) from None


@app.command("list")
def list_() -> None:
    """Every segment with its kind and member count."""
    from services.segments import list_segments

    rows = _run(list_segments)
    table = Table("key", "kind", "members", "reads")
    for seg in rows:
        table.add_row(seg["key"], seg["kind"], str(seg["member_count"]), " ".join(seg["reads"]))
    out.print(table)


@app.command()
def preview(
    rule: Annotated[str, typer.Argument(help='A CONDITION as JSON, e.g. \'{"attr": "age", '
                                        '"op": "gte", "value": 50}\'')],
) -> None:
    """How many contacts RULE would match now."""
    from services.segments import preview as preview_rule

    try:
        parsed = json.loads(rule)
    except ValueError:
        err.print("[bold red]error:[/] RULE is not JSON")
        raise typer.Exit(2) from None
    result = _run(lambda ctx: preview_rule(ctx, parsed))
    out.print(result["count"])


@app.command()
def sweep() -> None:
    """Re-check time-based rules now (the worker's schedule does this every minute)."""
    from core.models import utcnow
    from services.segment_membership import sweep_due

    count = _run(lambda ctx: sweep_due(ctx, utcnow()))
    out.print(f"re-checked {count} memberships")
