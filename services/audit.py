"""The audit trail (SPEC section 7; HIPAA 45 CFR 164.312(b)).

Every read or change of a contact's data and every codec decode leaves a row: who
(API key id and role), what action on which resource, the NAMES of the fields
involved (never their values), when, and the request id. The table is append-only
for the application: migration 0002 makes PostgreSQL refuse UPDATE, DELETE and
TRUNCATE on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import inspect
from sqlmodel import col, select

from core.models import AuditLog
from services.context import ServiceContext
from services.errors import Invalid

MAX_PAGE = 1000
_MAX_ID = 2**63 - 1  # bigint
_LIKE_SPECIALS = re.compile(r"([\\%_])")


def _text(value: str, limit: int) -> str:
    # PostgreSQL text cannot hold NUL; names and paths come from requests, so bound them.
    return value.replace("\x00", "")[:limit]


def stage(
    ctx: ServiceContext,
    action: str,
    resource: str,
    fields: Iterable[str] = (),
    details: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Adds the row to the caller's transaction: it commits with the change it records
    (and disappears with it when the change rolls back)."""
    row = AuditLog(
        actor=ctx.actor.id,
        role=ctx.actor.role,
        action=action,
        resource=_text(resource, 300),
        fields=sorted({_text(f, 200) for f in fields}),
        request_id=ctx.actor.request_id,
        details=dict(details) if details else None,
    )
    ctx.session.add(row)
    return row


async def record(
    ctx: ServiceContext,
    action: str,
    resource: str,
    fields: Iterable[str] = (),
    details: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Writes the row now (commits the session: call it when nothing else is pending,
    e.g. after a read and before its answer leaves)."""
    row = stage(ctx, action, resource, fields, details)
    await ctx.session.commit()
    return row


async def ensure_written(ctx: ServiceContext, row: AuditLog) -> None:
    """Commits a staged row unless the caller's own commit already carried it.

    Called after a handler succeeded: a read leaves the row pending, a write has
    committed it with its change, and a handler that rolled back dropped it (so it
    is written again on its own).
    """
    state = inspect(row)
    if state.detached:
        return  # committed, then expunged by the handler
    if state.transient:  # rolled back with the handler's transaction
        fresh = AuditLog(**{k: getattr(row, k) for k in _COPY})
        ctx.session.add(fresh)
    elif not state.pending and not ctx.session.in_transaction():
        return
    await ctx.session.commit()


_COPY = ("at", "actor", "role", "action", "resource", "fields", "request_id", "details")


def _utc(when: datetime | None, field: str) -> datetime | None:
    """A time without a zone means UTC (not the database session's zone)."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+14:00
        raise Invalid("time is out of range", {"field": field}) from None


def audit_out(row: AuditLog) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at,
        "actor": row.actor,
        "role": row.role,
        "action": row.action,
        "resource": row.resource,
        "fields": row.fields,
        "request_id": row.request_id,
        "details": row.details,
    }


async def query(
    ctx: ServiceContext,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
    role: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    request_id: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> tuple[Sequence[AuditLog], str | None]:
    """Newest first, keyset-paged by id. `resource` is exact, or a prefix when it ends
    with "*" ("contact/*"). Returns (rows, next_cursor)."""
    since, until = _utc(since, "from"), _utc(until, "to")
    for name, value in (
        ("actor", actor),
        ("role", role),
        ("action", action),
        ("resource", resource),
        ("request_id", request_id),
    ):
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold NUL
            raise Invalid(f"{name} contains a NUL character", {"field": name})
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"limit must be between 1 and {MAX_PAGE}", {"field": "limit"})
    q = select(AuditLog)
    if since is not None:
        q = q.where(AuditLog.at >= since)
    if until is not None:
        q = q.where(AuditLog.at < until)
    if since is not None and until is not None and until <= since:
        raise Invalid("'to' must be after 'from'", {"field": "to"})
    if actor:
        q = q.where(AuditLog.actor == actor)
    if role:
        q = q.where(AuditLog.role == role)
    if action:
        q = q.where(AuditLog.action == action)
    if request_id:
        q = q.where(AuditLog.request_id == request_id)
    if resource:
        if resource.endswith("*"):
            prefix = _LIKE_SPECIALS.sub(r"\\\1", resource[:-1])
            q = q.where(col(AuditLog.resource).like(prefix + "%", escape="\\"))
        else:
            q = q.where(AuditLog.resource == resource)
    if cursor:
        if not cursor.isascii() or not cursor.isdigit() or int(cursor) > _MAX_ID:
            raise Invalid("cursor is not one this API returned", {"field": "cursor"})
        q = q.where(col(AuditLog.id) < int(cursor))
    q = q.order_by(col(AuditLog.id).desc()).limit(limit + 1)
    rows = list((await ctx.session.exec(q)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].id) if more and rows else None
    return rows, next_cursor
