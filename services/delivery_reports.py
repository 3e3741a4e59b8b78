"""Bounces (RFC 3464) and complaints (RFC 5965) arriving after a message left.

The report is matched to the send by the original Message-ID it quotes (derived from
the send key, so unique), else by the hashed recipient address. Only reports about a
message we sent act: an unmatched report cannot suppress anyone, so a forged report for
an arbitrary address does nothing.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from core.models import Send, utcnow
from mail.reports import DeliveryReport, parse_report
from services.context import ServiceContext
from services.identity import email_hash
from services.mail_outcomes import record_outcome
from services.report_rollup import on_send_status

MAX_REPORT_BYTES = 10 * 1024 * 1024


async def _find_send(ctx: ServiceContext, report: DeliveryReport) -> tuple[Send | None, str | None]:
    """(send, hash of the affected address)."""
    hashes = [email_hash(r, ctx.pepper) for r in report.recipients]
    if report.original_message_id and "\x00" not in report.original_message_id:
        send = (
            await ctx.session.exec(
                select(Send).where(Send.message_id == report.original_message_id)
            )
        ).first()
        if send is not None:
            return send, send.email_hash or (hashes[0] if hashes else None)
    if hashes:
        send = (
            await ctx.session.exec(
                select(Send)
                .where(col(Send.email_hash).in_(hashes), Send.status == "sent")
                .order_by(col(Send.sent_at).desc())
                .limit(1)
            )
        ).first()
        if send is not None:
            return send, send.email_hash
    return None, None


async def process_report(ctx: ServiceContext, raw: bytes, *, source: str) -> dict[str, Any]:
    """Apply one inbound report. The answer names ids and kinds, never addresses."""
    report = parse_report(raw)
    if report is None:
        return {"processed": False, "reason": "not_a_bounce_or_complaint"}
    if report.kind == "delay":
        return {"processed": False, "kind": "delay", "reason": "delay_only"}
    send, hashed = await _find_send(ctx, report)
    if send is None:
        return {"processed": False, "kind": report.kind, "reason": "unknown_message"}

    send.delivery = "complained" if report.kind == "complaint" else "bounced"
    send.delivery_at = utcnow()
    ctx.session.add(send)
    await ctx.session.flush()
    await on_send_status(ctx.session, send.id)  # bounced/complained counts move with it
    reason = "complaint" if report.kind == "complaint" else "hard_bounce"
    outcome = await record_outcome(
        ctx,
        contact_id=send.contact_id,
        event=report.kind,
        properties={
            "send_id": send.id,
            "journey": send.journey_key,
            "step": send.step,
            "hard": report.hard,
            "status": report.status,
            "feedback_type": report.feedback_type,
            "source": source,
        },
        idempotency_key=f"report/{report.kind}/{send.id}",
        # Soft bounces (4.x.x after the relay gave up) do not suppress: the mailbox exists.
        suppress_hash=hashed if report.hard else None,
        suppress_reason=reason,
        suppress_source=f"{source}:{send.id}",
    )
    return {
        "processed": True,
        "kind": report.kind,
        "hard": report.hard,
        "status": report.status,
        "send_id": send.id,
        "contact_id": send.contact_id,
        "suppressed": outcome.suppressed,
        "event_id": outcome.event.id,
        "duplicate": not outcome.new_event,
    }
