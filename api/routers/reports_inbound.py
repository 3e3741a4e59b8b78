"""Inbound delivery reports: a bounce (RFC 3464) or complaint (RFC 5965) as a raw message."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.deps import Integration
from services.delivery_reports import MAX_REPORT_BYTES, process_report
from services.errors import Invalid, ServiceError

router = APIRouter(prefix="/v1/reports", tags=["reports"])


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


@router.post(
    "/inbound",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in ("message/rfc822", "application/octet-stream")
            },
        }
    },
)
async def inbound_report(ctx: Integration, request: Request) -> dict[str, Any]:
    """The raw report message (Content-Type: message/rfc822). Finds the send by the
    original Message-ID (or the recipient), marks its delivery, suppresses hard bounces
    and complaints and emits the internal event `bounce` / `complaint`."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_REPORT_BYTES:
            raise TooLarge(f"a report must be at most {MAX_REPORT_BYTES} bytes")
    if not raw.strip():
        raise Invalid("the body must be the raw report message", {"field": "body"})
    return await process_report(ctx, bytes(raw), source="api")
