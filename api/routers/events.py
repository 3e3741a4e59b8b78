from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from api.deps import Integration
from services import events as svc
from services.errors import Invalid

router = APIRouter(prefix="/v1/events", tags=["events"])

EXAMPLE_ONE = {
    "contact": {"external_id": "mrn-1001"},
    "event": "visit_completed",
    "properties": {"department": "cardiology"},
    "idempotency_key": "ehr-visit-88231",
    "occurred_at": "2026-01-05T10:00:00Z",
}

EventsBody = Body(
    ...,
    description=(
        "One event, or {\"events\": [...]} with up to 1000. Every item is validated before "
        "anything is stored; a repeated idempotency_key returns the first event's result."
    ),
    openapi_examples={
        "one": {"summary": "one event", "value": EXAMPLE_ONE},
        "batch": {"summary": "a batch", "value": {"events": [EXAMPLE_ONE]}},
    },
)


@router.post("")
async def post_events(ctx: Integration, body: Any = EventsBody) -> dict[str, Any]:
    """Store events and deliver them: start every journey they trigger (signal-with-start)
    and signal every running run of the contact."""
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise Invalid(
                "events must be a non-empty list",
                {"errors": [{"field": "events", "code": "list_type", "message": "not a list"}]},
            )
        results = await svc.ingest_many(ctx, items)
        return {
            "results": results,
            "stored": sum(not r["duplicate"] for r in results),
            "duplicates": sum(r["duplicate"] for r in results),
        }
    if not isinstance(body, dict):
        raise Invalid(
            "the body is one event object or {\"events\": [...]}",
            {"errors": [{"field": "", "code": "dict_type", "message": "not an object"}]},
        )
    return await svc.ingest(ctx, body)
