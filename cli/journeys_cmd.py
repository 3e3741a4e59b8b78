"""`journeys journeys ...`: define, validate, publish and enrol journeys from the shell.

Talks to the services directly (DATABASE_URL, TEMPORAL_ADDRESS), like `journeys keys`.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.service_context import fail, print_error, service_context
from core.temporal import TemporalConfigError
from services.errors import Invalid, ServiceError

NAME = "journeys"
app = typer.Typer(no_args_is_help=True, help="Journeys: create, validate, publish, enrol, runs.")
out = Console()

FileArg = Annotated[Path, typer.Argument(help="Journey definition, JSON or YAML", exists=True,
                                         dir_okay=False, readable=True)]
KeyArg = Annotated[str, typer.Argument(help="Journey key")]


def load_definition(path: Path) -> Any:
    """JSON, or YAML (a superset) for .yaml/.yml and anything that is not valid JSON."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"{path.name} is not valid JSON (line {exc.lineno})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise typer.BadParameter(f"{path.name} is not valid YAML or JSON") from None


def read_ids(path: Path) -> list[str]:
    """Contact ids: a JSON array, or one per line (blank lines and # comments skipped)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise typer.BadParameter("the JSON file must be a list of contact ids")
        return data
    lines = (line.strip() for line in text.splitlines())
    return [line.split(",")[0].strip() for line in lines if line and not line.startswith("#")]


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ServiceError as exc:
        raise fail(exc) from None
    except TemporalConfigError as exc:
        raise fail(exc) from None


@app.command()
def create(file: FileArg) -> None:
    """Save a new journey (as a draft) from FILE."""
    from services import journeys as svc

    raw = load_definition(file)

    async def go() -> dict[str, Any]:
        async with service_context(temporal=False) as ctx:
            return svc.journey_out(await svc.create_journey(ctx, raw))

    j = _run(go())
    out.print(f"created journey [bold]{j['key']}[/] ({j['status']})")


@app.command()
def update(file: FileArg) -> None:
    """Replace the draft of the journey named in FILE."""
    from services import journeys as svc

    raw = load_definition(file)
    key = raw.get("key") if isinstance(raw, dict) else None
    if not isinstance(key, str):
        raise fail(ValueError("the definition has no key"))

    async def go() -> dict[str, Any]:
        async with service_context(temporal=False) as ctx:
            return svc.journey_out(await svc.put_journey(ctx, key, raw))

    j = _run(go())
    out.print(f"updated the draft of [bold]{j['key']}[/] ({j['status']})")


@app.command()
def validate(
    target: Annotated[str, typer.Argument(help="A definition file, or the key of a saved journey")],
) -> None:
    """List every error (step and field) of a definition file or a saved draft."""
    from services import journeys as svc

    path = Path(target)
    raw = load_definition(path) if path.is_file() else None

    async def go() -> list[dict[str, Any]]:
        async with service_context(temporal=False) as ctx:
            if raw is None:
                draft = (await svc.get_journey(ctx, target)).draft
                return await svc.validate_definition(ctx, draft)
            if not isinstance(raw, dict):
                raise Invalid("a journey definition is a JSON object", {"errors": []})
            own = {raw["key"]} if isinstance(raw.get("key"), str) else set()
            return await svc.validate_definition(ctx, raw, extra_journeys=own)

    errors = _run(go())
    if not errors:
        out.print("[green]valid[/]")
        return
    print_error(Invalid(f"{len(errors)} error(s)", {"errors": errors}))
    raise typer.Exit(1)


@app.command()
def publish(key: KeyArg) -> None:
    """Freeze the draft as the next version (a scheduled journey gets its schedule)."""
    from services import journeys as svc

    async def go() -> int:
        async with service_context() as ctx:
            return (await svc.publish_journey(ctx, key)).version

    out.print(f"published [bold]{key}[/] version {_run(go())}")


def _status_command(action: str) -> None:
    @app.command(name=action, help=f"{action.capitalize()} the journey KEY.")
    def command(key: KeyArg) -> None:
        from services import journeys as svc

        async def go() -> str:
            async with service_context() as ctx:
                return (await svc.set_status(ctx, key, action)).status

        out.print(f"[bold]{key}[/] is {_run(go())}")


for _action in ("pause", "resume", "archive"):
    _status_command(_action)


@app.command("sync-schedule")
def sync_schedule(key: KeyArg) -> None:
    """Make the Temporal schedule of KEY match the journey (after a Temporal outage)."""
    from services import journeys as svc
    from services.schedules import schedule_id, sync_schedule

    async def go() -> str:
        async with service_context() as ctx:
            return await sync_schedule(ctx, await svc.get_journey(ctx, key))

    out.print(f"schedule {schedule_id(key)}: {_run(go())}")


@app.command()
def enroll(
    key: KeyArg,
    contacts: Annotated[
        Path | None,
        typer.Option(help="File of contact ids: one per line, or a JSON list", exists=True,
                     dir_okay=False),
    ] = None,
    segment: Annotated[str | None, typer.Option(help="Enrol the members of this segment")] = None,
) -> None:
    """Enrol contacts (or a segment's members) in the newest published version of KEY."""
    from services.enrollment import enroll as enroll_contacts
    from services.segments import member_ids

    if (contacts is None) == (segment is None):
        raise typer.BadParameter("give exactly one of --contacts and --segment")
    ids_from_file = read_ids(contacts) if contacts is not None else None

    async def go() -> dict[str, Any]:
        async with service_context() as ctx:
            ids = ids_from_file
            if ids is None:
                ids = await member_ids(ctx, str(segment))
            with Progress(
                TextColumn("enrolling"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=out,
                transient=False,
            ) as bar:
                task = bar.add_task("enrol", total=len(ids))
                result = await enroll_contacts(
                    ctx, key, ids, progress=lambda n: bar.advance(task, n)
                )
            return result.as_dict()

    r = _run(go())
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["skipped_by_reason"].items()))
    line = f"enrolled {r['enrolled']}, skipped {r['skipped']}"
    out.print(line + (f" ({reasons})" if reasons else ""))


@app.command()
def runs(
    key: KeyArg,
    status: Annotated[str | None, typer.Option(help="running, completed or exited")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """The newest runs of KEY: contact id, version, status, step, exit reason."""
    from services.runs import list_runs

    async def go() -> list[dict[str, Any]]:
        async with service_context(temporal=False) as ctx:
            return await list_runs(ctx, key, status, limit)

    rows = _run(go())
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    table = Table("contact", "version", "status", "step", "exit reason", "started", "ended")
    for r in rows:
        table.add_row(
            r["contact_id"], str(r["version"]), r["status"], r["step"] or "",
            r["exit_reason"] or "", _when(r["started_at"]), _when(r["ended_at"]),
        )
    out.print(table)
    out.print(f"{len(rows)} run(s)")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""
