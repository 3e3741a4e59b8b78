"""Dev only: what the built-in SMTP sink received (SPEC section 4, dev outbox)."""

from __future__ import annotations

import email
import email.policy
from html import escape
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response
from sqlmodel import col, select

from api.deps import SessionDep
from api.paging import Limit, Offset, RowId
from core.models import OutboxMessage

router = APIRouter(prefix="/dev/outbox", tags=["dev"])
DEV_ONLY = True


def _summary(m: OutboxMessage) -> dict[str, Any]:
    return {
        "id": m.id,
        "to": m.rcpt_to,
        "from": m.mail_from,
        "subject": m.subject,
        "message_id": m.message_id,
        "received_at": m.received_at,
    }


async def _get(session: SessionDep, message_id: RowId) -> OutboxMessage:
    m = await session.get(OutboxMessage, message_id)
    if m is None:
        raise HTTPException(404, "no such message")
    return m


@router.get("/messages")
async def list_messages(
    session: SessionDep, limit: Limit = 200, offset: Offset = 0
) -> list[dict[str, Any]]:
    q = (
        select(OutboxMessage)
        .order_by(col(OutboxMessage.id).desc())
        .offset(offset)
        .limit(min(limit, 1000))
    )
    return [_summary(m) for m in (await session.exec(q)).all()]


@router.get("/messages/{message_id}/raw")
async def raw_message(session: SessionDep, message_id: RowId) -> Response:
    m = await _get(session, message_id)
    return Response(m.raw, media_type="message/rfc822")


@router.get("/messages/{message_id}", response_class=HTMLResponse)
async def view_message(session: SessionDep, message_id: RowId) -> str:
    m = await _get(session, message_id)
    msg = email.message_from_bytes(m.raw, policy=email.policy.default)
    headers = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in msg.items()
    )
    html_part = msg.get_body(("html",)) if hasattr(msg, "get_body") else None
    text_part = msg.get_body(("plain",)) if hasattr(msg, "get_body") else None
    html = html_part.get_content() if html_part is not None else ""  # type: ignore[attr-defined]
    text = text_part.get_content() if text_part is not None else ""  # type: ignore[attr-defined]
    return (
        f"<!doctype html><title>{escape(m.subject)}</title>"
        f"<p><a href='/dev/outbox'>&larr; outbox</a> · <a href='{m.id}/raw'>raw</a></p>"
        f"<table>{headers}</table><h3>HTML</h3>"
        # The message HTML is shown sandboxed: no scripts, no same-origin access.
        f"<iframe sandbox style='width:100%;height:480px' srcdoc='{escape(html, quote=True)}'></iframe>"
        f"<h3>Text</h3><pre>{escape(text)}</pre>"
    )


@router.get("", response_class=HTMLResponse)
async def outbox_page(session: SessionDep) -> str:
    q = select(OutboxMessage).order_by(col(OutboxMessage.id).desc()).limit(500)
    rows = "".join(
        f"<tr><td><a href='/dev/outbox/messages/{m.id}'>{m.id}</a></td><td>{escape(', '.join(m.rcpt_to))}</td>"
        f"<td>{escape(m.subject)}</td><td>{escape(str(m.received_at))}</td></tr>"
        for m in (await session.exec(q)).all()
    )
    return (
        "<!doctype html><title>journeys outbox</title><h1>Outbox</h1>"
        "<p>Every message the built-in SMTP sink received (dev only).</p>"
        f"<table border=1 cellpadding=4><tr><th>#</th><th>To</th><th>Subject</th><th>Received</th></tr>{rows}</table>"
    )
