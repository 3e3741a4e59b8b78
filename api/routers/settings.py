"""Account-wide settings: anyone who reads reports may read them; only admins change them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends

from api.deps import Reader, require
from services import account_settings as svc
from services.context import ServiceContext

router = APIRouter(prefix="/v1/settings", tags=["settings"])

Admin = Annotated[ServiceContext, Depends(require())]


@router.get("")
async def get_settings(ctx: Reader) -> dict[str, Any]:
    return await svc.get_settings(ctx)


@router.put("")
async def put_settings(
    ctx: Admin,
    body: Annotated[
        dict[str, Any],
        Body(examples=[{"exclude_automated_events": True}], description="Settings to change"),
    ],
) -> dict[str, Any]:
    return await svc.update_settings(ctx, body)
