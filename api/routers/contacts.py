from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from api.deps import Authorized
from api.policy import CONTACT_FIELDS, field_names, redact
from core.models import Contact
from services import audit, erasure
from services import contacts as svc
from services.context import ServiceContext

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])

# Opaque ids ("c_<hex>"): anything else is refused before it reaches the database.
ContactId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]

# Who may call each route: api/policy.py. Every call is audited here (field names only).


def _out(ctx: ServiceContext, c: Contact) -> dict[str, Any]:
    return redact("contact", svc.contact_out(c), ctx.actor.role)


def _shown(out: dict[str, Any]) -> list[str]:
    return [f for f in CONTACT_FIELDS if f in out]


@router.post("", status_code=200)
async def upsert_contact(
    ctx: Authorized, body: svc.ContactIn, response: Response
) -> dict[str, Any]:
    contact, created = await svc.upsert_contact(ctx, body)
    # The id exists only once the row does, so this row follows the change's commit.
    await audit.record(
        ctx,
        "create" if created else "update",
        f"contact/{contact.id}",
        field_names(body.model_dump(exclude_unset=True)),
    )
    if created:
        response.status_code = 201
    return _out(ctx, contact)


@router.get("/{contact_id}")
async def get_contact(ctx: Authorized, contact_id: ContactId) -> dict[str, Any]:
    out = _out(ctx, await svc.get_contact(ctx, contact_id))
    await audit.record(ctx, "read", f"contact/{contact_id}", _shown(out))
    return out


@router.patch("/{contact_id}")
async def patch_contact(
    ctx: Authorized, contact_id: ContactId, body: svc.ContactPatch
) -> dict[str, Any]:
    # Staged first: it commits with the change, or not at all.
    audit.stage(
        ctx, "update", f"contact/{contact_id}", field_names(body.model_dump(exclude_unset=True))
    )
    return _out(ctx, await svc.patch_contact(ctx, contact_id, body))


@router.delete("/{contact_id}", status_code=204)
async def erase_contact(ctx: Authorized, contact_id: ContactId) -> Response:
    """Erases the contact's PHI, keeps suppressions and the audit trail, exits its runs."""
    await erasure.erase_contact(ctx, contact_id)
    return Response(status_code=204)
