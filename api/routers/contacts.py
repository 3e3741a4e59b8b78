from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from api.deps import Authorized
from api.policy import CONTACT_FIELDS, field_names, redact
from core.models import Contact
from services import audit, contact_import, erasure
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


_IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "description": "CSV with a header row (external_id, email, timezone, attribute "
        "columns) or NDJSON (one contact object per line), streamed; or multipart/form-data "
        "with the file in a part named `file`.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string",
                                                                     "format": "binary"}}}
            },
        },
    }
}


async def _upload_chunks(upload: Any) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 16):
        yield chunk


@router.post("/import", openapi_extra=_IMPORT_BODY)
async def import_contacts(
    ctx: Authorized,
    request: Request,
    dry_run: bool = Query(False, description="validate and count, write nothing"),
    batch_size: int = Query(1000, ge=1, le=5000),
) -> dict[str, Any]:
    """Bulk upsert by external_id. Bad rows are skipped whole and reported by row number,
    line, field and reason; good rows are written in batches."""
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise contact_import.UnsupportedImport("put the file in a form part named file")
        fmt = contact_import.format_for(upload.content_type, upload.filename)
        chunks = _upload_chunks(upload)
    else:
        fmt = contact_import.format_for(content_type)
        chunks = request.stream()
    if fmt is None:
        raise contact_import.UnsupportedImport(
            "send text/csv or application/x-ndjson (or a .csv/.ndjson file part)"
        )
    report = await contact_import.import_contacts(
        ctx, chunks, fmt, dry_run=dry_run, batch_size=batch_size
    )
    return report.as_dict()


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
