"""The contact attribute schema: declared and inferred types (services.attributes)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import Designer, Reader
from services import attributes as svc

router = APIRouter(prefix="/v1/attributes", tags=["contacts"])


class AttributeIn(BaseModel):
    type: Literal["string", "number", "boolean", "date", "list"]
    description: str | None = Field(default=None, max_length=2000)


@router.get("")
async def list_attributes(ctx: Reader) -> dict[str, Any]:
    return {"attributes": await svc.list_attributes(ctx)}


@router.put("/{name}")
async def declare_attribute(
    ctx: Designer, name: str, body: AttributeIn, response: Response
) -> dict[str, Any]:
    """Declares an attribute's type; refused (409) while stored values do not fit it."""
    out, created = await svc.declare_attribute(ctx, name, body.type, body.description)
    if created:
        response.status_code = 201
    return out
