"""The update_contact step: attributes and static segment memberships, in one transaction.

Entering or leaving a segment is an event (`segment_entry` / `segment_exit` with property
`segment`), stored with an idempotency key of (run, step, visit, segment) in the same
transaction and then dispatched, so journeys triggered by the segment start and runs with
`exit_when: segment_exit` leave. A retry re-dispatches the same events (runs drop repeated
event ids). Rule segments are re-evaluated by services.segments.on_contact_changed when
that hook exists.
"""

from __future__ import annotations

import inspect
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.config import Settings
from core.db import Database
from core.models import AuditLog, Contact, Event, Segment, SegmentMembership, new_id, utcnow
from services.context import Actor, ServiceContext
from workflows.types import UpdateContactInput, UpdateContactResult


def event_key(inp: UpdateContactInput, kind: str, segment: str) -> str:
    return f"{inp.run_id}/{inp.step}/{inp.visit}/{kind}/{segment}"


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if k not in before or k not in after or before[k] != after[k])


class ContactUpdateActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name="update_contact")
    async def update_contact(self, inp: UpdateContactInput) -> UpdateContactResult:
        actor = Actor(f"journey:{inp.journey_key}", "system")
        async with self.db.session() as s:
            contact = await s.get(Contact, inp.contact_id, with_for_update=True)
            if contact is None or contact.deleted_at is not None:
                return UpdateContactResult(status="no_contact")
            before = dict(contact.attributes or {})
            after = {**before, **inp.set}
            for name in inp.unset:
                after.pop(name, None)
            fields = changed_fields(before, after)
            if fields:
                contact.attributes = after
                contact.updated_at = utcnow()
                s.add(contact)
            added = await self._add(s, inp)
            removed = await self._remove(s, inp)
            if added or removed:
                fields.append("segments")
            if fields:
                s.add(
                    AuditLog(
                        actor=actor.id,
                        role=actor.role,
                        action="update",
                        resource=f"contact/{inp.contact_id}",
                        fields=fields,
                        request_id=f"run/{inp.run_id}/{inp.step}/{inp.visit}",
                    )
                )
            await s.commit()

        await self._dispatch(inp, actor)
        if inp.set or inp.unset or inp.add_segments or inp.remove_segments:
            await self._segments_hook(inp.contact_id, actor)
        return UpdateContactResult(
            status="updated" if fields else "unchanged",
            segments_added=added,
            segments_removed=removed,
        )

    async def _add(self, s: AsyncSession, inp: UpdateContactInput) -> list[str]:
        added: list[str] = []
        for key in inp.add_segments:
            if await s.get(Segment, key) is None:
                raise ApplicationError(
                    f"segment {key} does not exist", type="DefinitionError", non_retryable=True
                )
            row = await s.exec(  # type: ignore[call-overload]
                insert(SegmentMembership)
                .values(segment_key=key, contact_id=inp.contact_id, entered_at=utcnow())
                .on_conflict_do_nothing()
                .returning(col(SegmentMembership.segment_key))
            )
            if row.first() is not None:
                added.append(key)
                await self._store_event(s, inp, "segment_entry", key)
        return added

    async def _remove(self, s: AsyncSession, inp: UpdateContactInput) -> list[str]:
        removed: list[str] = []
        for key in inp.remove_segments:
            row = await s.exec(  # type: ignore[call-overload]
                delete(SegmentMembership)
                .where(
                    col(SegmentMembership.segment_key) == key,
                    col(SegmentMembership.contact_id) == inp.contact_id,
                )
                .returning(col(SegmentMembership.segment_key))
            )
            if row.first() is not None:
                removed.append(key)
                await self._store_event(s, inp, "segment_exit", key)
        return removed

    async def _store_event(
        self, s: AsyncSession, inp: UpdateContactInput, name: str, segment: str
    ) -> None:
        now = utcnow()
        await s.exec(  # type: ignore[call-overload]
            insert(Event)
            .values(
                id=new_id("ev"),
                contact_id=inp.contact_id,
                name=name,
                properties={"segment": segment},
                idempotency_key=event_key(inp, name, segment),
                occurred_at=now,
                received_at=now,
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )

    async def _dispatch(self, inp: UpdateContactInput, actor: Actor) -> None:
        from services import events as event_service

        keys = [event_key(inp, "segment_entry", k) for k in inp.add_segments]
        keys += [event_key(inp, "segment_exit", k) for k in inp.remove_segments]
        if not keys:
            return
        async with self.db.session() as s:
            stored = (
                await s.exec(select(Event).where(col(Event.idempotency_key).in_(keys)))
            ).all()
            ctx = ServiceContext(s, self.settings, activity.client(), actor)
            for ev in stored:
                await event_service.dispatch(ctx, ev)

    async def _segments_hook(self, contact_id: str, actor: Actor) -> None:
        """Rule segments may change with the contact (built by the segments work)."""
        from services import segments

        hook = getattr(segments, "on_contact_changed", None)
        if hook is None:
            return
        async with self.db.session() as s:
            ctx = ServiceContext(s, self.settings, activity.client(), actor)
            result = hook(ctx, contact_id)
            if inspect.isawaitable(result):
                await result
