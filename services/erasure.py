"""Erasing a contact (right to erasure; SPEC section 7).

One transaction removes the contact's PHI wherever the product keeps it:
  contact      email, external_id, email_hash -> null; attributes -> {}; timezone -> UTC
  event        properties -> {} (names and times stay for aggregate reports)
  tracking     ip, user agent and headers of opens/clicks on the contact's messages
  links        destination URLs of the tracked links in the contact's messages (a
               designer may have put PHI in one): url -> NULL, erased_at set; a later
               click gets a "gone" page, never a redirect
  segments     memberships (being in a segment can itself say something about health)
  outbox       dev-sink messages addressed to the contact
What stays: suppressions (keyed by the address's keyed hash, so an erased address is
still never mailed again), consent history (the legal record of what was allowed),
runs, step logs and sends (ids only, for reports), and the audit trail.

Then every running run of the contact gets the signal "exit" with reason `erased`.
Temporal histories hold only ids and encrypted payloads of ids (workflows carry no
PHI), so nothing there needs rewriting.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from sqlalchemy import delete, func, text, update
from sqlalchemy import select as sa_select
from sqlmodel import col, select
from temporalio.service import RPCError

from core.models import (
    Contact,
    Event,
    OutboxMessage,
    Run,
    SegmentMembership,
    Send,
    TrackedLink,
    TrackingEvent,
    utcnow,
)
from services import audit
from services.context import ServiceContext
from services.errors import NotFound
from services.temporal_errors import run_not_found
from services.tracking import forget_all_links
from services.tracking_buffer import HITS_LOCK

log = logging.getLogger("journeys.erasure")

EXIT_REASON = "erased"
ERASED_FIELDS = (
    "email",
    "external_id",
    "attributes",
    "timezone",
    "event.properties",
    "tracking_event.ip",
    "tracking_event.user_agent",
    "tracking_event.headers",
    "tracked_link.url",
    "segment_membership",
    "outbox_message",
)


@dataclass
class ErasureResult:
    contact_id: str
    events_cleared: int = 0
    tracking_events_cleared: int = 0
    links_tombstoned: int = 0
    memberships_removed: int = 0
    outbox_deleted: int = 0
    runs_signalled: int = 0
    runs_not_signalled: list[str] = field(default_factory=list)


async def erase_contact(ctx: ServiceContext, contact_id: str) -> ErasureResult:
    s = ctx.session
    contact = (
        await s.exec(select(Contact).where(col(Contact.id) == contact_id).with_for_update())
    ).first()
    if contact is None or contact.deleted_at is not None:
        raise NotFound("contact not found", {"contact_id": contact_id})
    address = contact.email
    result = ErasureResult(contact_id)

    contact.email = None
    contact.email_hash = None
    contact.external_id = None
    contact.attributes = {}
    contact.timezone = "UTC"
    contact.deleted_at = contact.updated_at = utcnow()
    s.add(contact)

    res = await s.exec(  # type: ignore[call-overload]
        update(Event)
        .where(col(Event.contact_id) == contact_id, text("event.properties <> '{}'::jsonb"))
        .values(properties={})
    )
    result.events_cleared = res.rowcount or 0

    sends = sa_select(col(Send.id)).where(col(Send.contact_id) == contact_id).scalar_subquery()
    # Hit batches in flight commit first (their evidence is cleared below); later ones
    # see the tombstones and store nothing (services.tracking_buffer.HITS_LOCK).
    await s.exec(text(f"SELECT pg_advisory_xact_lock({HITS_LOCK})"))  # type: ignore[call-overload]
    # Every kind (click, trap, open, unsub) is tombstoned: a hit on any of them afterwards
    # is about an erased person, and the unsubscribe page still works from send_id.
    res = await s.exec(  # type: ignore[call-overload]
        update(TrackedLink)
        .where(col(TrackedLink.send_id).in_(sends), col(TrackedLink.erased_at).is_(None))
        .values(url=None, erased_at=contact.deleted_at)
    )
    result.links_tombstoned = res.rowcount or 0

    res = await s.exec(  # type: ignore[call-overload]
        update(TrackingEvent)
        .where(col(TrackingEvent.send_id).in_(sends))
        .values(ip=None, user_agent=None, headers={})
    )
    result.tracking_events_cleared = res.rowcount or 0

    res = await s.exec(  # type: ignore[call-overload]
        delete(SegmentMembership).where(col(SegmentMembership.contact_id) == contact_id)
    )
    result.memberships_removed = res.rowcount or 0

    if address:
        # Any recipient equal to the address, case-insensitively (RCPT TO keeps the case sent).
        recipients = func.jsonb_array_elements_text(OutboxMessage.rcpt_to).table_valued("value")
        res = await s.exec(  # type: ignore[call-overload]
            delete(OutboxMessage).where(
                sa_select(recipients.c.value)
                .where(func.lower(recipients.c.value) == address.lower())
                .exists()
            )
        )
        result.outbox_deleted = res.rowcount or 0

    audit.stage(
        ctx,
        "erase",
        f"contact/{contact_id}",
        ERASED_FIELDS,
        details={
            "events_cleared": result.events_cleared,
            "tracking_events_cleared": result.tracking_events_cleared,
            "links_tombstoned": result.links_tombstoned,
            "memberships_removed": result.memberships_removed,
            "outbox_deleted": result.outbox_deleted,
        },
    )
    await s.commit()
    forget_all_links()  # this process stops redirecting at once; others within the TTL

    await _exit_runs(ctx, contact_id, result)
    return result


async def _exit_runs(ctx: ServiceContext, contact_id: str, result: ErasureResult) -> None:
    """Signals "exit" (reason erased) to the contact's running runs. After the commit:
    a run that sends before the signal lands finds no address and sends nothing."""
    workflow_ids = list(
        (
            await ctx.session.exec(
                select(Run.workflow_id).where(
                    col(Run.contact_id) == contact_id, col(Run.status) == "running"
                )
            )
        ).all()
    )
    if not workflow_ids:
        return
    client = ctx.require_temporal()

    async def one(wid: str) -> None:
        try:
            await client.get_workflow_handle(wid).signal("exit", EXIT_REASON)
            result.runs_signalled += 1
        except RPCError as exc:
            if not run_not_found(exc):  # it ended meanwhile (not: the namespace is missing)
                result.runs_not_signalled.append(wid)
                log.warning("could not signal exit to %s (%s)", wid, exc.status.name)

    await asyncio.gather(*(one(w) for w in dict.fromkeys(workflow_ids)))
