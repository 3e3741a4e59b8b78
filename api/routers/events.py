from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Response

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


def _accepted(response: Response, results: list[dict[str, Any]]) -> None:
    """202 when some event is stored but not (fully) delivered: `pending` (Temporal
    unreachable or misconfigured, e.g. a wrong namespace; the redelivery sweep delivers it)
    or `failed` (Temporal refused a call for good because of the call's data; each journey
    says why). 200 when everything was delivered."""
    if any(r.get("dispatch") in ("pending", "failed") for r in results):
        response.status_code = 202


@router.post(
    "",
    responses={
        202: {
            "description": "stored; delivery `pending` (retried) or `failed` (Temporal "
            "refused it for good: the journeys say why)"
        }
    },
)
async def post_events(
    ctx: Integration, response: Response, body: Any = EventsBody
) -> dict[str, Any]:
    """Store events and deliver them: start every journey they trigger (signal-with-start)
    and signal every running run of the contact. Answers 202 with `dispatch: pending` for
    events stored while Temporal does not answer or refuses this deployment's namespace or
    credentials (each such journey's `reason` says why; they are delivered once it is back
    or fixed), and with `dispatch: failed` when Temporal refused a call for good (each
    journey's `reason` says why; not retried)."""
    if isinstance(body, dict) and "events" in body:
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise Invalid(
                "events must be a non-empty list",
                {"errors": [{"field": "events", "code": "list_type", "message": "not a list"}]},
            )
        results = await svc.ingest_many(ctx, items)
        _accepted(response, results)
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
    result = await svc.ingest(ctx, body)
    _accepted(response, [result])
    return result
