"""Unsubscribing through the link of a message (RFC 8058 one-click or the confirmation page).

The token names a `tracked_link` row of kind `unsub`; that row names the send, and the
send names the contact, the category and the hashed address. Nothing in the URL says
who the recipient is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlmodel import col, select

from core.models import Contact, Send, TrackedLink, utcnow
from services.context import ServiceContext
from services.identity import email_hash
from services.mail_outcomes import exit_runs, record_outcome
from services.report_rollup import on_send_status
from services.suppressions import ALL, suppress
from services.tracking_links import token_signer

Scope = Literal["category", "all"]
EXIT_REASON = "unsubscribed"


@dataclass
class UnsubTarget:
    send: Send
    expired: bool  # honoured anyway: an old message's link must keep working


async def resolve_token(ctx: ServiceContext, token: str) -> UnsubTarget | None:
    """The send an unsubscribe token belongs to, or None for a bad or unknown token."""
    verified = token_signer(ctx.settings).verify(token, "unsub", int(time.time()))
    if verified is None:
        return None
    link = await ctx.session.get(TrackedLink, verified.link_id.hex())
    if link is None or link.kind != "unsub":
        return None
    send = await ctx.session.get(Send, link.send_id)
    if send is None:
        return None
    return UnsubTarget(send, verified.expired)


async def unsubscribe(ctx: ServiceContext, target: UnsubTarget, scope: Scope) -> dict[str, Any]:
    """Suppress the send's category (or everything), record the event, end the runs.

    Idempotent: a second call finds the suppression and the event already there and
    only repeats the exit signals (harmless for runs that already ended).
    """
    send = target.send
    category = ALL if scope == "all" or not send.category else send.category
    hashed = send.email_hash
    if hashed is None:
        contact = await ctx.session.get(Contact, send.contact_id)
        hashed = contact.email_hash if contact is not None else None
    if send.unsubscribed_at is None:
        # Counted in the same transaction as the suppression (record_outcome commits).
        send.unsubscribed_at = utcnow()
        ctx.session.add(send)
        await ctx.session.flush()
        await on_send_status(ctx.session, send.id)
    outcome = await record_outcome(
        ctx,
        contact_id=send.contact_id,
        event="unsubscribe",
        properties={
            "category": category,
            "send_id": send.id,
            "journey": send.journey_key,
            "step": send.step,
        },
        idempotency_key=f"unsubscribe/{send.id}/{category}",
        suppress_hash=hashed,
        suppress_category=category,
        suppress_reason="unsubscribe",
        suppress_source=f"link:{send.id}",
    )
    signalled = await exit_runs(
        ctx,
        send.contact_id,
        EXIT_REASON,
        category=None if category == ALL else category,
        include_run=send.run_id,
    )
    return {
        "category": category,
        "suppressed": outcome.suppressed,
        "event_id": outcome.event.id,
        "duplicate": not outcome.new_event,
        "runs_signalled": signalled,
    }


async def unsubscribe_address(ctx: ServiceContext, address: str, *, source: str) -> dict[str, Any]:
    """A mailto: unsubscribe (the List-Unsubscribe alternative): the sender's address is
    suppressed for every category and the runs of every contact with it end."""
    hashed = email_hash(address, ctx.pepper)
    contacts = (
        await ctx.session.exec(
            select(Contact).where(Contact.email_hash == hashed, col(Contact.deleted_at).is_(None))
        )
    ).all()
    created = await suppress(ctx, hashed, ALL, "unsubscribe", source)
    await ctx.session.commit()
    signalled = 0
    for contact in contacts:
        await record_outcome(
            ctx,
            contact_id=contact.id,
            event="unsubscribe",
            properties={"category": ALL, "source": source},
            # One event per contact and day: repeated mails the same day change nothing.
            idempotency_key=f"unsubscribe/{source}/{contact.id}/{utcnow().date().isoformat()}",
        )
        signalled += await exit_runs(ctx, contact.id, EXIT_REASON)
    return {"suppressed": created, "contacts": len(contacts), "runs_signalled": signalled}
