"""Segments: static or rule-based (SPEC section 4). Thin over services.segments."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from api.deps import Designer, Integration, Operator, Reader
from services import segments as svc

router = APIRouter(prefix="/v1/segments", tags=["segments"])


@router.post("", status_code=201)
async def create_segment(ctx: Designer, body: svc.SegmentIn) -> dict[str, Any]:
    """A static segment (no rule) or a rule segment (`rule`: a CONDITION); a rule segment
    is built over every contact before this returns."""
    return await svc.segment_out(ctx, await svc.create_segment(ctx, body))


@router.get("")
async def list_segments(ctx: Reader) -> dict[str, Any]:
    return {"segments": await svc.list_segments(ctx)}


@router.post("/preview")
async def preview(ctx: Reader, body: svc.RuleIn) -> dict[str, Any]:
    """How many contacts a rule would match now (nothing is saved)."""
    return await svc.preview(ctx, body.rule)


@router.get("/{key}")
async def get_segment(ctx: Reader, key: str) -> dict[str, Any]:
    return await svc.segment_out(ctx, await svc.get_segment(ctx, key))


@router.put("/{key}")
async def update_segment(ctx: Designer, key: str, body: svc.SegmentUpdate) -> dict[str, Any]:
    """Renames, or replaces a rule segment's rule (members who enter or leave because of
    the new rule get segment_entry / segment_exit)."""
    return await svc.segment_out(ctx, await svc.update_segment(ctx, key, body))


@router.delete("/{key}", status_code=204)
async def delete_segment(ctx: Designer, key: str) -> Response:
    await svc.delete_segment(ctx, key)
    return Response(status_code=204)


@router.get("/{key}/members")
async def list_members(
    ctx: Operator,
    key: str,
    limit: int = Query(100, ge=1, le=1000),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Member contact ids in pages; pass `next_cursor` back as `cursor` for the next page."""
    return await svc.list_members(ctx, key, limit=limit, cursor=cursor)


@router.post("/{key}/members")
async def add_members(ctx: Integration, key: str, body: svc.MembersIn) -> dict[str, Any]:
    """Static segments only."""
    return await svc.add_members(ctx, key, body.contact_ids)


@router.delete("/{key}/members")
async def remove_members(ctx: Integration, key: str, body: svc.MembersIn) -> dict[str, Any]:
    """Static segments only; the body names the contacts to remove."""
    return await svc.remove_members(ctx, key, body.contact_ids)


@router.delete("/{key}/members/{contact_id}")
async def remove_member(ctx: Integration, key: str, contact_id: str) -> dict[str, Any]:
    return await svc.remove_members(ctx, key, [contact_id])
