"""The update_contact step: attributes and static segment memberships.

Attributes go through services.contacts.patch_contact (typed attributes and the rule-segment
hook live there). Memberships go through services.segments.add_members / remove_members
when the segments service has them (entry/exit events, dependent rule segments); otherwise
the membership rows and their `segment_entry` / `segment_exit` events (property `segment`,
idempotency key of run, step, visit and segment) are written here in one transaction and
dispatched. Rule segments follow their rule, so adding to or removing from one is skipped.
Then services.segments.on_contact_changed(ctx, contact_id, ...) is called when it exists
(it is idempotent; rule segments reading the changed attributes are re-evaluated).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
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
from services.errors import Conflict, Invalid, NotFound
from workflows.types import UpdateContactInput, UpdateContactResult


def event_key(inp: UpdateContactInput, kind: str, segment: str) -> str:
    return f"{inp.run_id}/{inp.step}/{inp.visit}/{kind}/{segment}"


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    keys = set(before) | set(after)
    return sorted(k for k in keys if k not in before or k not in after or before[k] != after[k])


def definition_error(message: str) -> ApplicationError:
    return ApplicationError(message, type="DefinitionError", non_retryable=True)


class ContactUpdateActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def _ctx(self, s: AsyncSession, journey_key: str) -> ServiceContext:
        actor = Actor(f"journey:{journey_key}", "system")
        return ServiceContext(s, self.settings, activity.client(), actor)

    @activity.defn(name="update_contact")
    async def update_contact(self, inp: UpdateContactInput) -> UpdateContactResult:
        async with self.db.session() as s:
            ctx = self._ctx(s, inp.journey_key)
            contact = await s.get(Contact, inp.contact_id)
            if contact is None or contact.deleted_at is not None:
                return UpdateContactResult(status="no_contact")
            fields = await self._attributes(ctx, contact, inp)
            segments = await self._segments(s, inp)
            added, removed = await self._memberships(ctx, inp, segments)
            if added or removed:
                fields.append("segments")
            if fields:
                s.add(
                    AuditLog(
                        actor=ctx.actor.id,
                        role=ctx.actor.role,
                        action="update",
                        resource=f"contact/{inp.contact_id}",
                        fields=fields,
                        request_id=f"run/{inp.run_id}/{inp.step}/{inp.visit}",
                    )
                )
                await s.commit()
            await self._segments_hook(ctx, inp, fields)
        return UpdateContactResult(
            status="updated" if fields else "unchanged",
            segments_added=added,
            segments_removed=removed,
        )

    async def _attributes(
        self, ctx: ServiceContext, contact: Contact, inp: UpdateContactInput
    ) -> list[str]:
        """Names of the attributes that changed."""
        if not inp.set and not inp.unset:
            return []
        from services.contacts import ContactPatch, patch_contact

        before = dict(contact.attributes or {})
        # patch_contact merges, and a null value removes the attribute.
        patch = {**inp.set, **{name: None for name in inp.unset}}
        try:
            updated = await patch_contact(ctx, inp.contact_id, ContactPatch(attributes=patch))
        except Invalid as exc:  # a value the account's attribute schema refuses
            raise definition_error(f"update_contact: {exc.message}") from None
        return changed_fields(before, dict(updated.attributes or {}))

    async def _segments(self, s: AsyncSession, inp: UpdateContactInput) -> dict[str, Segment]:
        keys = list(dict.fromkeys([*inp.add_segments, *inp.remove_segments]))
        if not keys:
            return {}
        found = {
            seg.key: seg
            for seg in (await s.exec(select(Segment).where(col(Segment.key).in_(keys)))).all()
        }
        missing = [k for k in keys if k not in found]
        if missing:
            raise definition_error(f"update_contact: segment {missing[0]} does not exist")
        return found

    async def _memberships(
        self, ctx: ServiceContext, inp: UpdateContactInput, segments: dict[str, Segment]
    ) -> tuple[list[str], list[str]]:
        adds = [k for k in inp.add_segments if segments[k].kind != "rule"]
        removes = [k for k in inp.remove_segments if segments[k].kind != "rule"]
        if not adds and not removes:
            return [], []
        from services import segments as segment_service

        add = getattr(segment_service, "add_members", None)
        remove = getattr(segment_service, "remove_members", None)
        if add is not None and remove is not None:
            added = [k for k in adds if await self._service_call(add, ctx, k, inp, "added")]
            removed = [
                k for k in removes if await self._service_call(remove, ctx, k, inp, "removed")
            ]
            return added, removed
        return await self._write_memberships(ctx, inp, adds, removes)

    async def _service_call(
        self,
        fn: Callable[..., Awaitable[dict[str, Any]]],
        ctx: ServiceContext,
        key: str,
        inp: UpdateContactInput,
        counter: str,
    ) -> bool:
        try:
            result = await fn(ctx, key, [inp.contact_id])
        except Conflict:
            return False  # a rule segment after all: it follows its rule
        except NotFound:
            raise definition_error(f"update_contact: segment {key} does not exist") from None
        return bool(result.get(counter))

    async def _write_memberships(
        self, ctx: ServiceContext, inp: UpdateContactInput, adds: list[str], removes: list[str]
    ) -> tuple[list[str], list[str]]:
        """Without the segments service: rows and events in one transaction, then dispatch."""
        s = ctx.session
        added: list[str] = []
        removed: list[str] = []
        for key in adds:
            row = await s.exec(  # type: ignore[call-overload]
                insert(SegmentMembership)
                .values(segment_key=key, contact_id=inp.contact_id, entered_at=utcnow())
                .on_conflict_do_nothing()
                .returning(col(SegmentMembership.segment_key))
            )
            if row.first() is not None:
                added.append(key)
                await self._store_event(s, inp, "segment_entry", key)
        for key in removes:
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
        await s.commit()
        await self._dispatch(ctx, inp, adds, removes)
        return added, removed

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

    async def _dispatch(
        self, ctx: ServiceContext, inp: UpdateContactInput, adds: list[str], removes: list[str]
    ) -> None:
        """Dispatches this step's events, including ones a failed earlier attempt stored
        (runs drop an event id they have already seen)."""
        from services import events as event_service

        keys = [event_key(inp, "segment_entry", k) for k in adds]
        keys += [event_key(inp, "segment_exit", k) for k in removes]
        stored = (
            await ctx.session.exec(select(Event).where(col(Event.idempotency_key).in_(keys)))
        ).all()
        # Detached: a delivery that breaks rolls the session back, which would expire the
        # events still to come in this loop (read-only snapshots for dispatch).
        for ev in stored:
            ctx.session.expunge(ev)
        for ev in stored:
            await event_service.dispatch(ctx, ev)

    async def _segments_hook(
        self, ctx: ServiceContext, inp: UpdateContactInput, fields: list[str]
    ) -> None:
        """Rule segments may change with the contact (the segments service's hook)."""
        from services import segments as segment_service

        hook = getattr(segment_service, "on_contact_changed", None)
        if hook is None or not fields:
            return
        kinds = {f"attr:{name}" for name in fields if name != "segments"}
        kinds |= {f"segment:{k}" for k in [*inp.add_segments, *inp.remove_segments]}
        params = inspect.signature(hook).parameters
        result = hook(ctx, inp.contact_id, kinds=kinds) if "kinds" in params else hook(
            ctx, inp.contact_id
        )
        if inspect.isawaitable(result):
            await result
