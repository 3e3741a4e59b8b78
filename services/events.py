"""Events from external systems and from the product itself (segment entry, bounces).

`ingest` stores the event once (idempotency_key) and hands it to `dispatch`, which
reaches every journey it triggers and every run waiting for it or exiting on it.

Storing is what the caller is told about: an event Temporal did not take (unreachable,
restarting) is kept with `dispatch: pending` and delivered by the redelivery sweep
(services.event_redelivery) once Temporal is back, once per run; one Temporal refused for
good (services.temporal_errors) is kept with `dispatch: failed` and each journey's reason.
A delivery that fails in any other way leaves the stored event pending for the sweep
(never a 500 for an event that is stored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from core.models import Contact, Event, new_id, utcnow
from services.context import ServiceContext
from services.entry_hooks import contacts_changed, event_changes
from services.errors import Invalid

log = logging.getLogger("journeys.events")

MAX_BATCH = 1000
# A stored event whose dispatch never finished (the process died) is dispatched again by a
# repeat of its idempotency_key once this long has passed (the redelivery sweep does it
# anyway); sooner, the first is in flight.
REDISPATCH_AFTER = timedelta(seconds=30)


class ContactRef(BaseModel):
    id: str | None = Field(default=None, min_length=1, max_length=100)
    external_id: str | None = Field(default=None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _exactly_one(self) -> ContactRef:
        if (self.id is None) == (self.external_id is None):
            raise ValueError("give exactly one of id and external_id")
        return self


class EventIn(BaseModel):
    contact: ContactRef
    event: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    properties: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)
    occurred_at: datetime | None = None

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        # A time without an offset is read as UTC, never as the server's zone.
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


async def store_event(
    ctx: ServiceContext,
    contact_id: str,
    name: str,
    properties: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    occurred_at: datetime | None = None,
) -> tuple[Event, bool]:
    """Returns (event, is_new); a repeated idempotency_key returns the first event."""
    ev = Event(
        id=new_id("ev"),
        contact_id=contact_id,
        name=name,
        properties=properties or {},
        idempotency_key=idempotency_key,
        occurred_at=occurred_at or utcnow(),
        received_at=utcnow(),
    )
    res = await ctx.session.exec(  # type: ignore[call-overload]
        insert(Event)
        .values(**ev.model_dump())
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(col(Event.id))
    )
    inserted = res.first() is not None
    await ctx.session.commit()
    if inserted and name not in ("segment_entry", "segment_exit"):
        # Rule segments reading this event re-evaluate this contact (segment events never
        # re-trigger segments: that could chase its own tail).
        from services.segment_membership import on_contact_changed

        await on_contact_changed(ctx, contact_id, kinds={f"event:{name}"})
    if not inserted:
        existing = (
            await ctx.session.exec(select(Event).where(Event.idempotency_key == idempotency_key))
        ).one()
        return existing, False
    return ev, True


async def dispatch(ctx: ServiceContext, event: Event) -> dict[str, Any]:
    """Reach every journey the stored event starts and every running run of its contact.
    Without a Temporal connection (e.g. a CLI import), or when Temporal does not answer, the
    event stays pending and the redelivery sweep delivers it later."""
    if ctx.temporal is None:
        log.info("event %s (%s) stored; the redelivery sweep delivers it", event.id, event.name)
        return {"dispatch": "pending", "started": 0, "signalled": 0, "journeys": []}
    return (await _dispatch_stored(ctx, [event]))[0]


async def _dispatch_stored(ctx: ServiceContext, events: Sequence[Event]) -> list[dict[str, Any]]:
    """dispatch_events for events already stored and committed. A failure other than
    Temporal's (which dispatch_events records itself) leaves them pending: nothing of the
    try was recorded (one transaction), the sweep tries again with backoff, one event at a
    time, and the caller hears `pending` rather than an error for a stored event."""
    from services.dispatch import dispatch_events

    try:
        return await dispatch_events(ctx, events)
    except Exception as exc:
        # The rollback (which releases the event rows' locks) expires every object loaded
        # in the session; the caller's events are detached first so they stay readable.
        for ev in events:
            if ev in ctx.session:
                ctx.session.expunge(ev)
        await ctx.session.rollback()
        log.error(
            "dispatch of %d stored events failed (%s); the redelivery sweep retries",
            len(events),
            type(exc).__name__,  # type only: no data in logs
        )
        return [{"dispatch": "pending"} for _ in events]


def parse_events(items: Sequence[Any], *, indexed: bool = True) -> list[EventIn]:
    """Validate every item; any bad one -> Invalid listing each error's index and field."""
    errors: list[dict[str, Any]] = []
    parsed: list[EventIn] = []
    for i, item in enumerate(items):
        try:
            parsed.append(EventIn.model_validate(item))
        except ValidationError as exc:
            for e in exc.errors():
                err: dict[str, Any] = {"index": i} if indexed else {}
                # Locations and reasons only: pydantic's "input" would echo values (PHI).
                err.update(
                    field=".".join(str(p) for p in e["loc"]) or "event",
                    code=e["type"],
                    message=e["msg"],
                )
                errors.append(err)
    if errors:
        raise Invalid(_invalid_message(indexed), {"errors": errors})
    return parsed


def _invalid_message(indexed: bool) -> str:
    what = "events are" if indexed else "event is"
    return f"{what} invalid; nothing was stored"


async def _resolve_contacts(
    ctx: ServiceContext, items: Sequence[EventIn], indexed: bool
) -> list[str]:
    """Each item's contact id; unknown or erased contacts -> Invalid naming the index."""
    ids = {it.contact.id for it in items if it.contact.id}
    externals = {it.contact.external_id for it in items if it.contact.external_id}
    live = col(Contact.deleted_at).is_(None)
    known_ids: set[str] = set()
    by_external: dict[str, str] = {}
    if ids:
        known_ids = set(
            (await ctx.session.exec(select(Contact.id).where(col(Contact.id).in_(ids), live))).all()
        )
    if externals:
        rows = await ctx.session.exec(
            select(Contact.external_id, Contact.id).where(
                col(Contact.external_id).in_(externals), live
            )
        )
        by_external = {ext: cid for ext, cid in rows.all() if ext is not None}
    out: list[str] = []
    errors: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        cid = it.contact.id if it.contact.id in known_ids else None
        field = "contact.id"
        if it.contact.external_id is not None:
            cid, field = by_external.get(it.contact.external_id), "contact.external_id"
        if cid is None:
            err: dict[str, Any] = {"index": i} if indexed else {}
            err.update(field=field, code="unknown_contact", message="no such contact")
            errors.append(err)
        else:
            out.append(cid)
    if errors:
        raise Invalid(_invalid_message(indexed), {"errors": errors})
    return out


async def store_events(
    ctx: ServiceContext, items: Sequence[EventIn], contact_ids: Sequence[str]
) -> list[tuple[Event, bool]]:
    """Store the items in one transaction; (event, is_new) per item, where a repeated
    idempotency_key (earlier, or earlier in this batch) gives the first event."""
    now = utcnow()
    events = [
        Event(
            id=new_id("ev"),
            contact_id=cid,
            name=it.event,
            properties=it.properties,
            idempotency_key=it.idempotency_key,
            occurred_at=it.occurred_at or now,
            received_at=now,
        )
        for it, cid in zip(items, contact_ids, strict=True)
    ]
    columns = (
        "id",
        "contact_id",
        "name",
        "properties",
        "idempotency_key",
        "occurred_at",
        "received_at",
    )
    res = await ctx.session.execute(
        insert(Event)
        .values([{c: getattr(ev, c) for c in columns} for ev in events])
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(col(Event.id))
    )
    inserted = set(res.scalars().all())
    missing = {ev.idempotency_key for ev in events if ev.id not in inserted}
    first: dict[str | None, Event] = {}
    if missing:
        rows = await ctx.session.exec(select(Event).where(col(Event.idempotency_key).in_(missing)))
        first = {ev.idempotency_key: ev for ev in rows.all()}
    await ctx.session.commit()
    return [
        (ev, True) if ev.id in inserted else (first[ev.idempotency_key], False) for ev in events
    ]


async def ingest_many(
    ctx: ServiceContext, raw_items: Sequence[Any], *, indexed: bool = True
) -> list[dict[str, Any]]:
    """Validate all, store all (one transaction), then dispatch the new ones. A repeated
    idempotency_key gets the first event's response and reaches nothing again."""
    if len(raw_items) > MAX_BATCH:
        raise Invalid(
            f"a batch holds at most {MAX_BATCH} events",
            {"errors": [{"field": "events", "code": "too_long", "message": "too many events"}]},
        )
    items = parse_events(raw_items, indexed=indexed)
    ctx.require_temporal()  # before anything is stored
    contact_ids = await _resolve_contacts(ctx, items, indexed)
    stored = await store_events(ctx, items, contact_ids)
    await contacts_changed(
        ctx, event_changes((ev.contact_id, ev.name) for ev, new in stored if new)
    )
    due = utcnow() - REDISPATCH_AFTER
    todo: dict[str, Event] = {}
    for ev, new in stored:
        if new or (ev.dispatched_at is None and ev.received_at < due):
            todo.setdefault(ev.id, ev)
    # What the answer needs, read before dispatching: a delivery that breaks rolls the
    # session back, which expires the repeated keys' events loaded by store_events.
    answers = [(ev.id, new, ev.dispatch_result) for ev, new in stored]
    # Temporal not answering leaves events pending (the sweep delivers them), not an error.
    delivered = await _dispatch_stored(ctx, list(todo.values()))
    outcomes = dict(zip(todo, delivered, strict=True))
    results: list[dict[str, Any]] = []
    for ev_id, new, prior in answers:
        outcome = outcomes.get(ev_id) or prior or {"dispatch": "pending"}
        results.append({"id": ev_id, "duplicate": not new, **outcome})
    return results


async def ingest(ctx: ServiceContext, data: EventIn | dict[str, Any]) -> dict[str, Any]:
    raw = data.model_dump(mode="json", exclude_none=True) if isinstance(data, EventIn) else data
    return (await ingest_many(ctx, [raw], indexed=False))[0]


async def emit_internal(
    ctx: ServiceContext, contact_id: str, name: str, properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Product-made events (segment_entry, segment_exit, bounce, complaint, unsubscribe).
    Without a Temporal connection (e.g. a CLI import) the event is stored undelivered."""
    ev, _ = await store_event(ctx, contact_id, name, properties)
    return await dispatch(ctx, ev)
