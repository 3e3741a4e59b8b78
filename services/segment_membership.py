"""Keeping rule segments current, incrementally.

Whatever changes a contact (attributes, an event, a human open/click, a journey run starting
or ending) calls `on_contact_changed(ctx, contact_id, kinds=...)`. Only the rule segments
that read what changed ("attr:NAME", "event:NAME", "engagement", "journey:KEY",
"segment:KEY"), plus the segments built on those, are re-evaluated, and only for that
contact, by the rule's compiled SQL (services.segment_sql). Time passing is handled by
`sweep_due(ctx, now)`: every membership (and every non-member) whose result can flip by
time alone carries the instant it can, and the sweep re-evaluates just those.

Entering and leaving are events: the membership row and a `segment_entry` /
`segment_exit` event row are written in one transaction, then the event is dispatched
(services.events.dispatch starts segment_entry journeys and reaches running runs).
A new segment's first build and a deleted segment emit nothing: nobody "entered".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from graphlib import CycleError, TopologicalSorter
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import text

from core.models import Event, new_id, utcnow
from dsl.model import Condition, ConditionUnion
from services.context import ServiceContext
from services.segment_sql import CompiledRule, compile_rule, statement

log = logging.getLogger("journeys.segments")

CONDITION: TypeAdapter[ConditionUnion] = TypeAdapter(Condition)
ENTRY, EXIT = "segment_entry", "segment_exit"
SEGMENT_EVENTS = frozenset({ENTRY, EXIT})
BATCH = 1000
# Advisory lock classes: one per segment (rebuild exclusive, refresh shared) and one per
# contact (refreshes of one contact run one after another, so the last one wins).
_LOCK_SEGMENT = 74_117
_LOCK_CONTACT = 74_118


@dataclass(frozen=True)
class RuleSegment:
    key: str
    compiled: CompiledRule

    @property
    def deps(self) -> list[str]:
        return self.compiled.deps


@dataclass
class Changes:
    entered: list[tuple[str, str]] = field(default_factory=list)  # (segment, contact)
    left: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: Changes) -> None:
        self.entered += other.entered
        self.left += other.left


_compiled: dict[tuple[str, datetime], CompiledRule] = {}


def compiled_for(key: str, updated_at: datetime, rule: dict[str, Any]) -> CompiledRule:
    cached = _compiled.get((key, updated_at))
    if cached is None:
        cached = compile_rule(CONDITION.validate_python(rule))
        _compiled[(key, updated_at)] = cached
    return cached


async def rule_segments(ctx: ServiceContext) -> list[RuleSegment]:
    """Every rule segment, ordered so a segment comes after the segments its rule reads."""
    rows = (
        await ctx.session.exec(  # type: ignore[call-overload]
            text("SELECT key, updated_at, rule FROM segment WHERE kind = 'rule' ORDER BY key")
        )
    ).all()
    by_key = {
        key: RuleSegment(key, compiled_for(key, updated, rule)) for key, updated, rule in rows
    }
    graph = {
        key: {d.split(":", 1)[1] for d in seg.deps if d.startswith("segment:")} & by_key.keys()
        for key, seg in by_key.items()
    }
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError:  # refused when rules are saved; never loop if one slipped in
        log.error("rule segments reference each other in a cycle")
        order = sorted(by_key)
    return [by_key[k] for k in order]


def affected(
    segments: Sequence[RuleSegment], kinds: Iterable[str] | None, keys: Iterable[str] = ()
) -> list[RuleSegment]:
    """The segments reading any of kinds (all when kinds is None) or named in keys, plus
    every segment built on those, in evaluation order."""
    if kinds is None:
        return list(segments)
    wanted = set(kinds)
    chosen = {s.key for s in segments if wanted.intersection(s.deps)} | set(keys)
    grew = True
    while grew:
        grew = False
        for s in segments:
            if s.key not in chosen and any(f"segment:{k}" in s.deps for k in chosen):
                chosen.add(s.key)
                grew = True
    return [s for s in segments if s.key in chosen]


def _evaluate_sql(seg: RuleSegment, scope: str) -> str:
    """One statement: evaluate the rule for the contacts in scope, write the membership and
    recheck rows that changed, and return who entered and who left."""
    recheck = seg.compiled.recheck or "NULL::timestamptz"
    return f"""
WITH ev AS (
  SELECT c.id AS contact_id,
         (c.deleted_at IS NULL AND {seg.compiled.predicate}) AS hit,
         (CASE WHEN c.deleted_at IS NULL THEN {recheck} END) AS due
  FROM contact c {scope}
), ins AS (
  INSERT INTO segment_membership AS m (segment_key, contact_id, entered_at, recheck_at)
  SELECT CAST(:seg_key AS text), contact_id, CAST(:now AS timestamptz), due FROM ev WHERE hit
  ON CONFLICT (segment_key, contact_id) DO UPDATE SET recheck_at = EXCLUDED.recheck_at
    WHERE m.recheck_at IS DISTINCT FROM EXCLUDED.recheck_at
  RETURNING m.contact_id, (xmax = 0) AS inserted
), del AS (
  DELETE FROM segment_membership m USING ev
  WHERE m.segment_key = CAST(:seg_key AS text) AND m.contact_id = ev.contact_id AND NOT ev.hit
  RETURNING m.contact_id
), pending AS (
  INSERT INTO segment_recheck AS r (segment_key, contact_id, due_at)
  SELECT CAST(:seg_key AS text), contact_id, due FROM ev WHERE NOT hit AND due IS NOT NULL
  ON CONFLICT (segment_key, contact_id) DO UPDATE SET due_at = EXCLUDED.due_at
    WHERE r.due_at IS DISTINCT FROM EXCLUDED.due_at
  RETURNING 1
), settled AS (
  DELETE FROM segment_recheck r USING ev
  WHERE r.segment_key = CAST(:seg_key AS text) AND r.contact_id = ev.contact_id
    AND (ev.hit OR ev.due IS NULL)
  RETURNING 1
)
SELECT 'in' AS way, contact_id FROM ins WHERE inserted
UNION ALL SELECT 'out', contact_id FROM del
"""


async def _apply(
    ctx: ServiceContext, seg: RuleSegment, now: datetime, ids: Sequence[str] | None
) -> Changes:
    scope = "" if ids is None else "WHERE c.id = ANY(CAST(:ids AS text[]))"
    params = seg.compiled.bind(now) | {"seg_key": seg.key}
    if ids is not None:
        params["ids"] = list(ids)
    rows = (await ctx.session.exec(statement(_evaluate_sql(seg, scope), params))).all()  # type: ignore[call-overload]
    changes = Changes()
    for way, contact_id in rows:
        (changes.entered if way == "in" else changes.left).append((seg.key, contact_id))
    return changes


async def _lock_segments(ctx: ServiceContext, keys: Iterable[str], exclusive: bool) -> None:
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    await ctx.session.exec(  # type: ignore[call-overload]
        text(
            f"SELECT {fn}({_LOCK_SEGMENT}, hashtext(k)) FROM unnest(CAST(:keys AS text[])) k "
            "ORDER BY k"
        ).bindparams(keys=sorted(set(keys)))
    )


async def _lock_contacts(ctx: ServiceContext, ids: Sequence[str]) -> None:
    await ctx.session.exec(  # type: ignore[call-overload]
        text(
            f"SELECT pg_advisory_xact_lock({_LOCK_CONTACT}, hashtext(i)) "
            "FROM unnest(CAST(:ids AS text[])) i ORDER BY i"
        ).bindparams(ids=sorted(set(ids)))
    )


def _event_rows(changes: Changes, now: datetime) -> list[dict[str, Any]]:
    rows = []
    for name, pairs in ((ENTRY, changes.entered), (EXIT, changes.left)):
        for key, contact_id in pairs:
            rows.append(
                {
                    "id": new_id("ev"),
                    "contact_id": contact_id,
                    "name": name,
                    "properties": {"segment": key},
                    "idempotency_key": None,
                    "occurred_at": now,
                    "received_at": utcnow(),
                }
            )
    return rows


async def record_changes(ctx: ServiceContext, changes: Changes, now: datetime) -> list[Event]:
    """Writes the segment_entry / segment_exit event rows in the caller's transaction."""
    rows = _event_rows(changes, now)
    if rows:
        await ctx.session.exec(  # type: ignore[call-overload]
            text(
                "INSERT INTO event (id, contact_id, name, properties, occurred_at, received_at) "
                "SELECT id, cid, name, jsonb_build_object('segment', seg), "
                "CAST(:now AS timestamptz), CAST(:received AS timestamptz) "
                "FROM unnest(CAST(:ids AS text[]), CAST(:cids AS text[]), "
                "CAST(:names AS text[]), CAST(:segs AS text[])) AS v(id, cid, name, seg)"
            ).bindparams(
                now=now,
                received=rows[0]["received_at"],
                ids=[r["id"] for r in rows],
                cids=[r["contact_id"] for r in rows],
                names=[r["name"] for r in rows],
                segs=[r["properties"]["segment"] for r in rows],
            )
        )
    return [Event(**row) for row in rows]


async def dispatch_all(ctx: ServiceContext, events: Sequence[Event]) -> None:
    """Hands committed segment events to services.events.dispatch (journeys start there)."""
    from services.events import dispatch

    for ev in events:
        try:
            await dispatch(ctx, ev)
        except Exception as exc:  # the event row is stored; one failure must not stop the rest
            log.error("dispatch of %s %s failed: %s", ev.name, ev.id, type(exc).__name__)


async def refresh_contacts(
    ctx: ServiceContext,
    contact_ids: Sequence[str],
    *,
    kinds: Iterable[str] | None = None,
    keys: Iterable[str] = (),
    now: datetime | None = None,
) -> Changes:
    """Re-evaluates the affected rule segments for these contacts (in batches), records
    entries and exits with their events, commits, then dispatches the events."""
    now = now or utcnow()
    ids = list(dict.fromkeys(contact_ids))
    total = Changes()
    if not ids:
        return total
    segments = affected(await rule_segments(ctx), kinds, keys)
    if not segments:
        await ctx.session.commit()  # ends the read-only transaction rule_segments opened
        return total
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        await _lock_segments(ctx, (s.key for s in segments), exclusive=False)
        await _lock_contacts(ctx, batch)
        changes = Changes()
        for seg in segments:
            changes.merge(await _apply(ctx, seg, now, batch))
        events = await record_changes(ctx, changes, now)
        await ctx.session.commit()
        await dispatch_all(ctx, events)
        total.merge(changes)
    return total


async def on_contact_changed(
    ctx: ServiceContext,
    contact_id: str,
    *,
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
) -> Changes:
    """THE hook: something about this contact changed (kinds says what; None = anything).
    Re-evaluates only the rule segments that read it, for this contact only."""
    return await refresh_contacts(ctx, [contact_id], kinds=kinds, now=now)


async def on_contacts_changed(
    ctx: ServiceContext,
    contact_ids: Sequence[str],
    *,
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
) -> Changes:
    """on_contact_changed for many contacts at once (imports, bulk enrolment)."""
    return await refresh_contacts(ctx, contact_ids, kinds=kinds, now=now)


async def build_new(ctx: ServiceContext, key: str, *, now: datetime | None = None) -> int:
    """The first build of a new rule segment: one INSERT ... SELECT over every contact
    (plus one for the pending rechecks of a time-based rule), in the caller's transaction,
    which it commits. Nobody "enters" a segment that did not exist: no events. Returns the
    member count."""
    now = now or utcnow()
    seg = next((s for s in await rule_segments(ctx) if s.key == key), None)
    if seg is None:
        return 0
    await _lock_segments(ctx, [key], exclusive=True)
    compiled = seg.compiled
    params = compiled.bind(now) | {"seg_key": key}
    recheck = compiled.recheck or "NULL::timestamptz"
    inserted = (
        await ctx.session.exec(  # type: ignore[call-overload]
            statement(
                "WITH ins AS (INSERT INTO segment_membership "
                "(segment_key, contact_id, entered_at, recheck_at) "
                "SELECT CAST(:seg_key AS text), c.id, CAST(:now AS timestamptz), "
                f"{recheck} FROM contact c WHERE c.deleted_at IS NULL AND {compiled.predicate} "
                "RETURNING 1) SELECT count(*) FROM ins",
                params,
            )
        )
    ).scalar_one()
    if compiled.recheck:
        await ctx.session.exec(  # type: ignore[call-overload]
            statement(
                "INSERT INTO segment_recheck (segment_key, contact_id, due_at) "
                "SELECT CAST(:seg_key AS text), c.id, r.due FROM contact c "
                f"CROSS JOIN LATERAL (SELECT {compiled.recheck} AS due) r "
                f"WHERE c.deleted_at IS NULL AND NOT {compiled.predicate} AND r.due IS NOT NULL",
                params,
            )
        )
    await ctx.session.commit()
    return int(inserted)


async def rebuild(
    ctx: ServiceContext, key: str, *, now: datetime | None = None, emit: bool = True
) -> Changes:
    """Re-evaluates one rule segment over every contact in one statement (a first build
    emits nothing: emit=False), then the segments built on it for the contacts that moved."""
    now = now or utcnow()
    segments = await rule_segments(ctx)
    seg = next((s for s in segments if s.key == key), None)
    if seg is None:
        return Changes()
    await _lock_segments(ctx, [key], exclusive=True)
    changes = await _apply(ctx, seg, now, None)
    events = await record_changes(ctx, changes, now) if emit else []
    await ctx.session.commit()
    await dispatch_all(ctx, events)
    moved = [c for _, c in changes.entered + changes.left]
    if moved:
        await refresh_contacts(ctx, moved, kinds=[f"segment:{key}"], now=now)
    return changes


async def sweep_due(
    ctx: ServiceContext,
    now: datetime,
    *,
    limit: int = 100_000,
    progress: Callable[[int], Any] | None = None,
) -> int:
    """Re-evaluates every (segment, contact) whose time-based result was due to be
    re-checked before `now` (members ageing out, non-members ageing in). Returns how many
    were re-checked. `now` is a parameter so tests and time-skipping can move the clock."""
    done = 0
    while done < limit:
        rows = (
            await ctx.session.exec(  # type: ignore[call-overload]
                text(
                    "SELECT segment_key, contact_id FROM segment_membership "
                    "WHERE recheck_at < CAST(:now AS timestamptz) "
                    "UNION SELECT segment_key, contact_id FROM segment_recheck "
                    "WHERE due_at < CAST(:now AS timestamptz) LIMIT :n"
                ).bindparams(now=now, n=min(BATCH, limit - done))
            )
        ).all()
        await ctx.session.commit()
        if not rows:
            break
        by_segment: dict[str, list[str]] = {}
        for key, contact_id in rows:
            by_segment.setdefault(key, []).append(contact_id)
        for key, ids in sorted(by_segment.items()):
            await refresh_contacts(ctx, ids, kinds=(), keys=[key], now=now)
        done += len(rows)
        if progress is not None:
            progress(done)
    return done


async def forget_contact(ctx: ServiceContext, contact_id: str) -> None:
    """For erasure: drops every membership and pending recheck of the contact, silently
    (an erased contact neither enters nor leaves anything)."""
    for table in ("segment_membership", "segment_recheck"):
        await ctx.session.exec(  # type: ignore[call-overload]
            text(f"DELETE FROM {table} WHERE contact_id = :cid").bindparams(cid=contact_id)
        )
    await ctx.session.commit()
