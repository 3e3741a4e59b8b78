"""Segments: static (explicit members) or rule-based (a CONDITION, SPEC section 3).

Rule membership is materialised in segment_membership and kept current by
services.segment_membership, so a member count is an index-only count over the primary key
and enrolment by segment is a plain read. Members are listed by opaque contact id only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import text
from sqlmodel import col, select

from core.models import Contact, Segment, SegmentMembership, utcnow
from dsl.issues import issues_from_pydantic
from dsl.model import SegmentCondition
from services.context import ServiceContext
from services.errors import Conflict, Invalid, NotFound
from services.segment_membership import (
    CONDITION,
    Changes,
    build_new,
    dispatch_all,
    rebuild,
    record_changes,
    refresh_contacts,
)
from services.segment_membership import (
    on_contact_changed as on_contact_changed,  # the change hook, also reachable from here
)
from services.segment_sql import RuleNotSupported, compile_rule, statement, walk

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
MAX_MEMBERS_PER_CALL = 10_000


class SegmentIn(BaseModel):
    key: str = Field(min_length=1, max_length=128)
    name: str = Field(default="", max_length=200)
    description: str = Field(default="", max_length=2000)
    kind: Literal["static", "rule"] | None = None  # inferred from rule when absent
    rule: dict[str, Any] | None = None


class SegmentUpdate(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    rule: dict[str, Any] | None = None


class RuleIn(BaseModel):
    rule: dict[str, Any]


class MembersIn(BaseModel):
    contact_ids: list[str] = Field(min_length=1, max_length=MAX_MEMBERS_PER_CALL)


def _check_key(key: str) -> None:
    if not _KEY_RE.fullmatch(key):
        raise Invalid(
            "a segment key is 1-128 letters, digits, '-', '_', '.' or ':', starting with a "
            "letter or digit",
            {"field": "key"},
        )


async def check_rule(
    ctx: ServiceContext, raw: Any, *, own_key: str | None = None
) -> dict[str, Any]:
    """The rule, validated: its shape (422 naming each field), forms a segment can use, and
    the segments it reads exist and do not lead back to own_key."""
    try:
        rule = CONDITION.validate_python(raw)
    except ValidationError as exc:
        details = [
            {"field": issue.field, "code": issue.code, "message": issue.message}
            for issue in issues_from_pydantic(exc.errors(), ("rule",))
        ]
        raise Invalid("rule is invalid", details) from None
    try:
        compile_rule(rule)
    except RuleNotSupported as exc:
        raise Invalid("rule is invalid", [{"field": exc.path, "code": "unsupported",
                                           "message": exc.message}]) from None
    refs = sorted({n.segment for n in walk(rule) if isinstance(n, SegmentCondition)})
    if refs:
        known = dict(
            (await ctx.session.exec(  # type: ignore[call-overload]
                text("SELECT key, deps FROM segment WHERE key = ANY(CAST(:k AS text[]))")
                .bindparams(k=refs)
            )).all()
        )
        missing = [k for k in refs if k not in known]
        if missing:
            raise Invalid("rule reads segments that do not exist", {"field": "rule",
                                                                   "segments": missing})
        if own_key is not None and await _reaches(ctx, refs, own_key):
            raise Invalid(
                "rule would make segments depend on each other in a cycle",
                {"field": "rule", "segment": own_key},
            )
    result: dict[str, Any] = rule.model_dump(mode="json", exclude_unset=True)
    return result


async def _reaches(ctx: ServiceContext, start: Sequence[str], target: str) -> bool:
    """True if a segment in start is target or reads target through other segments."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        key = todo.pop()
        if key == target:
            return True
        if key in seen:
            continue
        seen.add(key)
        seg = await ctx.session.get(Segment, key)
        if seg is not None:
            todo += [d.split(":", 1)[1] for d in seg.deps if d.startswith("segment:")]
    return False


async def member_count(ctx: ServiceContext, key: str) -> int:
    result = await ctx.session.exec(  # type: ignore[call-overload]
        text("SELECT count(*) FROM segment_membership WHERE segment_key = :k").bindparams(k=key)
    )
    return int(result.scalar_one())


async def segment_out(ctx: ServiceContext, seg: Segment, *, count: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": seg.key,
        "name": seg.name,
        "description": seg.description,
        "kind": seg.kind,
        "rule": seg.rule,
        "reads": seg.deps,
        "created_at": seg.created_at,
        "updated_at": seg.updated_at,
    }
    if count:
        out["member_count"] = await member_count(ctx, seg.key)
    return out


async def get_segment(ctx: ServiceContext, key: str) -> Segment:
    seg = await ctx.session.get(Segment, key)
    if seg is None:
        raise NotFound("segment not found", {"segment": key})
    return seg


async def list_segments(ctx: ServiceContext) -> list[dict[str, Any]]:
    rows = (await ctx.session.exec(select(Segment).order_by(col(Segment.key)))).all()
    counts = dict(
        (await ctx.session.exec(  # type: ignore[call-overload]
            text("SELECT segment_key, count(*) FROM segment_membership GROUP BY segment_key")
        )).all()
    )
    out = []
    for seg in rows:
        item = await segment_out(ctx, seg, count=False)
        item["member_count"] = int(counts.get(seg.key, 0))
        out.append(item)
    return out


async def create_segment(ctx: ServiceContext, data: SegmentIn) -> Segment:
    """A static segment starts empty; a rule segment is built over every contact in the
    same transaction (one INSERT ... SELECT), without entry events for the first members."""
    _check_key(data.key)
    kind = data.kind or ("rule" if data.rule is not None else "static")
    if kind == "rule" and data.rule is None:
        raise Invalid("a rule segment needs a rule", {"field": "rule"})
    if kind == "static" and data.rule is not None:
        raise Invalid("a static segment has no rule", {"field": "rule"})
    if await ctx.session.get(Segment, data.key) is not None:
        raise Conflict("a segment with this key exists", {"segment": data.key})
    rule = await check_rule(ctx, data.rule) if data.rule is not None else None
    now = utcnow()
    seg = Segment(
        key=data.key,
        name=data.name,
        description=data.description,
        kind=kind,
        rule=rule,
        deps=_deps(rule),
        created_at=now,
        updated_at=now,
    )
    ctx.session.add(seg)
    await ctx.session.flush()
    if kind == "rule":
        await build_new(ctx, seg.key, now=now)
    else:
        await ctx.session.commit()
    await ctx.session.refresh(seg)
    return seg


def _deps(rule: dict[str, Any] | None) -> list[str]:
    if rule is None:
        return []
    return compile_rule(CONDITION.validate_python(rule)).deps


async def update_segment(ctx: ServiceContext, key: str, data: SegmentUpdate) -> Segment:
    """Renames, or changes a rule segment's rule: membership is rebuilt and everyone who
    enters or leaves because of the new rule gets the entry/exit event."""
    seg = await get_segment(ctx, key)
    if data.name is not None:
        seg.name = data.name
    if data.description is not None:
        seg.description = data.description
    changed_rule = False
    if data.rule is not None:
        if seg.kind != "rule":
            raise Conflict("a static segment has no rule", {"segment": key, "field": "rule"})
        rule = await check_rule(ctx, data.rule, own_key=key)
        changed_rule = rule != seg.rule
        seg.rule = rule
        seg.deps = _deps(rule)
    seg.updated_at = utcnow()
    ctx.session.add(seg)
    await ctx.session.flush()
    if changed_rule:
        await rebuild(ctx, key, emit=True)
    else:
        await ctx.session.commit()
    await ctx.session.refresh(seg)
    return seg


async def delete_segment(ctx: ServiceContext, key: str) -> None:
    """Deletes the segment and its memberships (no exit events). Refused while another
    segment's rule reads it."""
    await get_segment(ctx, key)
    readers = (
        await ctx.session.exec(  # type: ignore[call-overload]
            text("SELECT key FROM segment WHERE deps ? :dep ORDER BY key").bindparams(
                dep=f"segment:{key}"
            )
        )
    ).scalars().all()
    if readers:
        raise Conflict("other segments' rules read this segment", {"segment": key,
                                                                    "read_by": list(readers)})
    for table in ("segment_membership", "segment_recheck"):
        await ctx.session.exec(  # type: ignore[call-overload]
            text(f"DELETE FROM {table} WHERE segment_key = :k").bindparams(k=key)
        )
    await ctx.session.exec(text("DELETE FROM segment WHERE key = :k").bindparams(k=key))  # type: ignore[call-overload]
    await ctx.session.commit()


# --- members ------------------------------------------------------------------------------


def _encode_cursor(contact_id: str) -> str:
    return base64.urlsafe_b64encode(contact_id.encode()).decode().rstrip("=")


_CURSOR_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _decode_cursor(cursor: str) -> str:
    bad = Invalid("cursor is not one this API returned", {"field": "cursor"})
    if not _CURSOR_RE.fullmatch(cursor):
        raise bad
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None
    if not _CURSOR_RE.fullmatch(decoded):
        raise bad
    return decoded


async def list_members(
    ctx: ServiceContext, key: str, *, limit: int = 100, cursor: str | None = None
) -> dict[str, Any]:
    """Members in contact id order, `limit` at a time; `next_cursor` continues the listing
    (stable while members come and go: it is a position, not an offset)."""
    await get_segment(ctx, key)
    if not 1 <= limit <= 1000:
        raise Invalid("limit must be between 1 and 1000", {"field": "limit"})
    q = (
        select(SegmentMembership.contact_id, SegmentMembership.entered_at)
        .where(SegmentMembership.segment_key == key)
        .order_by(col(SegmentMembership.contact_id))
        .limit(limit + 1)
    )
    if cursor:
        q = q.where(col(SegmentMembership.contact_id) > _decode_cursor(cursor))
    rows = (await ctx.session.exec(q)).all()
    page = rows[:limit]
    return {
        "segment": key,
        "members": [{"contact_id": cid, "entered_at": at} for cid, at in page],
        "next_cursor": _encode_cursor(page[-1][0]) if len(rows) > limit else None,
    }


async def member_ids(ctx: ServiceContext, key: str) -> list[str]:
    await get_segment(ctx, key)
    rows = await ctx.session.exec(
        select(SegmentMembership.contact_id).where(SegmentMembership.segment_key == key)
    )
    return list(rows.all())


async def _static(ctx: ServiceContext, key: str) -> Segment:
    seg = await get_segment(ctx, key)
    if seg.kind != "static":
        raise Conflict(
            "members of a rule segment follow its rule; they cannot be added or removed",
            {"segment": key},
        )
    return seg


async def add_members(
    ctx: ServiceContext, key: str, contact_ids: Sequence[str], *, now: datetime | None = None
) -> dict[str, Any]:
    """Adds contacts to a static segment; each one new to it gets a segment_entry event."""
    await _static(ctx, key)
    now = now or utcnow()
    ids = list(dict.fromkeys(contact_ids))
    known = set(
        (
            await ctx.session.exec(
                select(Contact.id).where(
                    col(Contact.id).in_(ids), col(Contact.deleted_at).is_(None)
                )
            )
        ).all()
    )
    unknown = [cid for cid in ids if cid not in known]
    wanted = [cid for cid in ids if cid in known]
    added: list[str] = []
    if wanted:
        result = await ctx.session.exec(  # type: ignore[call-overload]
            text(
                "INSERT INTO segment_membership (segment_key, contact_id, entered_at) "
                "SELECT :k, cid, CAST(:now AS timestamptz) FROM unnest(CAST(:ids AS text[])) cid "
                "ON CONFLICT (segment_key, contact_id) DO NOTHING RETURNING contact_id"
            ).bindparams(k=key, now=now, ids=wanted)
        )
        added = [row[0] for row in result.all()]
    changes = Changes(entered=[(key, cid) for cid in added])
    events = await record_changes(ctx, changes, now)
    await ctx.session.commit()
    await dispatch_all(ctx, events)
    if added:
        await refresh_contacts(ctx, added, kinds=[f"segment:{key}"], now=now)
    return {
        "added": len(added),
        "already_members": len(wanted) - len(added),
        "unknown_contacts": unknown,
        "member_count": await member_count(ctx, key),
    }


async def remove_members(
    ctx: ServiceContext, key: str, contact_ids: Sequence[str], *, now: datetime | None = None
) -> dict[str, Any]:
    """Removes contacts from a static segment; each one who was in it gets segment_exit."""
    await _static(ctx, key)
    now = now or utcnow()
    ids = list(dict.fromkeys(contact_ids))
    result = await ctx.session.exec(  # type: ignore[call-overload]
        text(
            "DELETE FROM segment_membership WHERE segment_key = :k "
            "AND contact_id = ANY(CAST(:ids AS text[])) RETURNING contact_id"
        ).bindparams(k=key, ids=ids)
    )
    removed = list(result.scalars().all())
    events = await record_changes(ctx, Changes(left=[(key, cid) for cid in removed]), now)
    await ctx.session.commit()
    await dispatch_all(ctx, events)
    if removed:
        await refresh_contacts(ctx, removed, kinds=[f"segment:{key}"], now=now)
    return {
        "removed": len(removed),
        "not_members": len(ids) - len(removed),
        "member_count": await member_count(ctx, key),
    }


# --- preview ------------------------------------------------------------------------------


async def preview(
    ctx: ServiceContext, raw_rule: Any, *, now: datetime | None = None
) -> dict[str, Any]:
    """How many contacts the rule would match now, without saving anything."""
    rule = await check_rule(ctx, raw_rule)
    compiled = compile_rule(CONDITION.validate_python(rule))
    params = compiled.bind(now or utcnow())
    sql = f"SELECT count(*) FROM contact c WHERE c.deleted_at IS NULL AND {compiled.predicate}"
    count = (await ctx.session.exec(statement(sql, params))).scalar_one()  # type: ignore[call-overload]
    await ctx.session.commit()
    return {"count": int(count), "reads": compiled.deps}
