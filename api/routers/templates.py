from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Designer, Reader
from api.routers._sending_params import TemplateKey
from services import templates as svc

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.post("", status_code=201)
async def create_template(ctx: Designer, body: svc.TemplateIn) -> dict[str, Any]:
    return svc.template_out(await svc.create_template(ctx, body))


@router.get("/{key}")
async def get_template(ctx: Reader, key: str) -> dict[str, Any]:
    return svc.template_out(await svc.get_template(ctx, key))


@router.put("/{key}")
async def put_template(ctx: Designer, key: str, body: svc.TemplateUpdate) -> dict[str, Any]:
    return svc.template_out(await svc.put_template(ctx, key, body))


@router.post("/{key}/preview")
async def preview_template(ctx: Designer, key: TemplateKey, body: svc.PreviewIn) -> dict[str, Any]:
    """Render the template for a contact (links untracked, nothing stored or sent)."""
    return await svc.preview_template(ctx, key, body)
