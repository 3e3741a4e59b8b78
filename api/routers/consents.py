"""Consent per category (SPEC section 4): grant or revoke with source and time; history kept."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import Integration, Operator
from api.routers._sending_params import CategoryPath, ContactId
from services import consents as svc

router = APIRouter(prefix="/v1/contacts", tags=["consents"])


@router.put("/{contact_id}/consents/{category}")
async def put_consent(
    ctx: Integration, contact_id: ContactId, category: CategoryPath, body: svc.ConsentIn
) -> dict[str, Any]:
    """Append a grant (`granted: true`) or revocation; returns the consent in force."""
    return await svc.set_consent(ctx, contact_id, category, body)


@router.get("/{contact_id}/consents")
async def get_consents(ctx: Operator, contact_id: ContactId) -> dict[str, Any]:
    """Current consent per category and the full history, newest first."""
    return await svc.list_consents(ctx, contact_id)
