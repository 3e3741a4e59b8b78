from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Query, Request, Response

from api.deps import Integration, Operator
from services import contact_import
from services import contacts as svc

router = APIRouter(prefix="/v1/contacts", tags=["contacts"])


@router.post("", status_code=200)
async def upsert_contact(ctx: Integration, body: svc.ContactIn, response: Response) -> dict[str, Any]:
    contact, created = await svc.upsert_contact(ctx, body)
    if created:
        response.status_code = 201
    return svc.contact_out(contact)


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
    ctx: Integration,
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
async def get_contact(ctx: Operator, contact_id: str) -> dict[str, Any]:
    return svc.contact_out(await svc.get_contact(ctx, contact_id))


@router.patch("/{contact_id}")
async def patch_contact(ctx: Integration, contact_id: str, body: svc.ContactPatch) -> dict[str, Any]:
    return svc.contact_out(await svc.patch_contact(ctx, contact_id, body))
