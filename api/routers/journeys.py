from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from api.deps import Designer, Reader
from services import journeys as svc

router = APIRouter(prefix="/v1/journeys", tags=["journeys"])

Definition = Body(..., description="A journey definition (SPEC section 3)")


@router.post("", status_code=201)
async def create_journey(ctx: Designer, body: dict[str, Any] = Definition) -> dict[str, Any]:
    return svc.journey_out(await svc.create_journey(ctx, body))


@router.get("/{key}")
async def get_journey(ctx: Reader, key: str) -> dict[str, Any]:
    return svc.journey_out(await svc.get_journey(ctx, key))


@router.put("/{key}")
async def put_journey(ctx: Designer, key: str, body: dict[str, Any] = Definition) -> dict[str, Any]:
    return svc.journey_out(await svc.put_journey(ctx, key, body))


@router.post("/{key}/validate")
async def validate_journey(ctx: Designer, key: str) -> dict[str, Any]:
    j = await svc.get_journey(ctx, key)
    errors = await svc.validate_definition(ctx, j.draft)
    return {"key": key, "valid": not errors, "errors": errors}


@router.post("/{key}/publish")
async def publish_journey(ctx: Designer, key: str) -> dict[str, Any]:
    v = await svc.publish_journey(ctx, key)
    return {"key": key, "version": v.version, "published_at": v.published_at}


@router.post("/{key}/pause")
async def pause_journey(ctx: Designer, key: str) -> dict[str, Any]:
    return svc.journey_out(await svc.set_status(ctx, key, "pause"))


@router.post("/{key}/resume")
async def resume_journey(ctx: Designer, key: str) -> dict[str, Any]:
    return svc.journey_out(await svc.set_status(ctx, key, "resume"))


@router.post("/{key}/archive")
async def archive_journey(ctx: Designer, key: str) -> dict[str, Any]:
    return svc.journey_out(await svc.set_status(ctx, key, "archive"))
