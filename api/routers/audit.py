"""GET /v1/audit: who read or changed what, when (auditor and admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import Auditor
from services import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("")
async def list_audit(
    ctx: Auditor,
    from_: Annotated[
        datetime | None, Query(alias="from", description="at or after (ISO 8601)")
    ] = None,
    to: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
    actor: Annotated[str | None, Query(max_length=100, description="API key id")] = None,
    role: Annotated[str | None, Query(max_length=40)] = None,
    action: Annotated[
        str | None,
        Query(max_length=40, description="read, create, update, erase, decode, denied, ..."),
    ] = None,
    resource: Annotated[
        str | None,
        Query(
            max_length=300,
            description='exact ("contact/c_...") or a prefix ending in * ("contact/*")',
        ),
    ] = None,
    request_id: Annotated[str | None, Query(max_length=100)] = None,
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_PAGE)] = 100,
) -> dict[str, Any]:
    rows, next_cursor = await audit.query(
        ctx,
        since=from_,
        until=to,
        actor=actor,
        role=role,
        action=action,
        resource=resource,
        request_id=request_id,
        cursor=cursor,
        limit=limit,
    )
    items = [audit.audit_out(r) for r in rows]
    # Reading the trail is itself an access worth recording.
    await audit.record(ctx, "read", "audit", details={"rows": len(items)})
    return {"items": items, "next_cursor": next_cursor}
