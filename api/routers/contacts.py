from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from api.deps import Integration, Operator
from services import contacts as svc

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])


@router.post("", status_code=200)
async def upsert_contact(ctx: Integration, body: svc.ContactIn, response: Response) -> dict[str, Any]:
    contact, created = await svc.upsert_contact(ctx, body)
    if created:
        response.status_code = 201
    return svc.contact_out(contact)


@router.get("/{contact_id}")
async def get_contact(ctx: Operator, contact_id: str) -> dict[str, Any]:
    return svc.contact_out(await svc.get_contact(ctx, contact_id))


@router.patch("/{contact_id}")
async def patch_contact(ctx: Integration, contact_id: str, body: svc.ContactPatch) -> dict[str, Any]:
    return svc.contact_out(await svc.patch_contact(ctx, contact_id, body))
