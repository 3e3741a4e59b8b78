"""`journeys events send ...`: send one event as an external system would."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from cli.service_context import fail, service_context
from core.temporal import TemporalConfigError
from services.errors import ServiceError

NAME = "events"
app = typer.Typer(no_args_is_help=True, help="Events that start journeys and reach runs.")


@app.command()
def send(
    event: Annotated[str, typer.Argument(help="Event name, e.g. visit_completed")],
    contact: Annotated[str | None, typer.Option(help="Contact id (c_...)")] = None,
    external_id: Annotated[str | None, typer.Option(help="Contact external id")] = None,
    properties: Annotated[str, typer.Option(help="Properties as a JSON object")] = "{}",
    idempotency_key: Annotated[str | None, typer.Option(help="Makes a repeat a no-op")] = None,
) -> None:
    """Store EVENT for a contact and deliver it; prints what it started and reached."""
    from services.events import ingest

    try:
        props = json.loads(properties)
    except json.JSONDecodeError:
        raise typer.BadParameter("--properties is not valid JSON") from None
    ref = {"id": contact} if contact else {"external_id": external_id}
    body: dict[str, Any] = {"contact": ref, "event": event, "properties": props}
    if idempotency_key:
        body["idempotency_key"] = idempotency_key

    async def go() -> dict[str, Any]:
        async with service_context() as ctx:
            return await ingest(ctx, body)

    try:
        result = asyncio.run(go())
    except (ServiceError, TemporalConfigError) as exc:
        raise fail(exc) from None
    print(json.dumps(result))
