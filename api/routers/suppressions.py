"""Suppressions for operators. Responses carry the address hash and contact ids; only an
admin also sees the address."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Response

from api.deps import Operator
from api.routers._sending_params import CategoryQuery, ContactIdQuery, Limit, Offset, RowId
from services import suppressions as svc

router = APIRouter(prefix="/v1/suppressions", tags=["suppressions"])


@router.get("")
async def list_suppressions(
    ctx: Operator,
    category: CategoryQuery = None,
    reason: svc.Reason | None = None,
    contact_id: ContactIdQuery = None,
    since: datetime | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    return await svc.list_suppressions(
        ctx,
        category=category,
        reason=reason,
        contact_id=contact_id,
        since=since,
        limit=limit,
        offset=offset,
    )


@router.post("", status_code=201)
async def add_suppression(
    ctx: Operator, body: svc.SuppressionIn, response: Response
) -> dict[str, Any]:
    """Suppress an address (given, or a contact's) for a category or "*" (all)."""
    out, created = await svc.add_suppression(ctx, body)
    if not created:
        response.status_code = 200
    return out


@router.post("/check")
async def check_suppression(ctx: Operator, body: svc.SuppressionCheck) -> dict[str, Any]:
    """Whether mail to the address (of the category, if given) is suppressed."""
    return await svc.check_suppression(ctx, body)


@router.delete("", status_code=200)
async def remove_suppressions_of(ctx: Operator, body: svc.SuppressionCheck) -> dict[str, Any]:
    """Lift the address's suppressions (of `category`, or all of them). The body names the
    address or contact, so no address appears in a URL."""
    return {"removed": await svc.remove_matching(ctx, body)}


@router.delete("/{suppression_id}", status_code=204)
async def remove_suppression(ctx: Operator, suppression_id: RowId) -> Response:
    await svc.remove_suppression(ctx, suppression_id)
    return Response(status_code=204)
