"""Events from external systems and from the product itself (segment entry, bounces).

`ingest` stores the event once (idempotency_key) and hands it to `dispatch`, which
reaches every journey it triggers and every run waiting for it or exiting on it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select

from core.models import Event, new_id, utcnow
from services.context import ServiceContext
from services.contacts import resolve_contact_ref


class ContactRef(BaseModel):
    id: str | None = None
    external_id: str | None = None


class EventIn(BaseModel):
    contact: ContactRef
    event: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    properties: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, max_length=200)
    occurred_at: datetime | None = None


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
        .returning(Event.id)  # type: ignore[arg-type]
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
    """Reach journeys and runs with a stored event (grown by the journey-entry work)."""
    return {"started": 0, "signalled": 0}


async def ingest(ctx: ServiceContext, data: EventIn) -> dict[str, Any]:
    contact = await resolve_contact_ref(ctx, data.contact.model_dump())
    ev, new = await store_event(
        ctx,
        contact.id,
        data.event,
        data.properties,
        idempotency_key=data.idempotency_key,
        occurred_at=data.occurred_at,
    )
    out: dict[str, Any] = {"id": ev.id, "duplicate": not new}
    if new:
        out.update(await dispatch(ctx, ev))
    return out


async def emit_internal(
    ctx: ServiceContext, contact_id: str, name: str, properties: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Product-made events (segment_entry, segment_exit, bounce, complaint, unsubscribe)."""
    ev, _ = await store_event(ctx, contact_id, name, properties)
    return await dispatch(ctx, ev)
