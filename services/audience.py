"""The audience of a scheduled journey, a page at a time (keyset paging on contact id, so a
resumed enrolment continues where it stopped and memory stays flat)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from services.anniversaries import SQL_MONTH_DAY, candidate_month_days, due_in_window


@dataclass(frozen=True)
class Page:
    contact_ids: list[str]  # to enrol
    cursor: str | None  # last contact id looked at; None when the audience is exhausted


async def audience_page(
    session: AsyncSession,
    trigger: Mapping[str, Any],
    *,
    after: str | None,
    limit: int,
    window: tuple[datetime, datetime] | None = None,
) -> Page:
    """Next page of a schedule trigger's audience: its `segment` (or every contact), and for
    an `attribute` trigger only the contacts whose occurrence is due in window."""
    where = ["c.deleted_at IS NULL", "c.id > :after"]
    params: dict[str, Any] = {"after": after or "", "limit": limit}
    segment = trigger.get("segment")
    if segment:
        where.append(
            "EXISTS (SELECT 1 FROM segment_membership m "
            "WHERE m.segment_key = :segment AND m.contact_id = c.id)"
        )
        params["segment"] = segment
    attribute = trigger.get("attribute")
    if attribute:
        if window is None:
            raise ValueError("an attribute schedule needs the window it covers")
        value = "(c.attributes ->> :attr)"
        where.append(f"({SQL_MONTH_DAY.format(v=value)}) = ANY(:days)")
        params["attr"] = attribute
        params["days"] = candidate_month_days(*window, trigger.get("offset"))
    rows = (
        await session.execute(
            text(
                f"SELECT c.id, c.timezone, c.attributes -> :attr AS value FROM contact c "
                f"WHERE {' AND '.join(where)} ORDER BY c.id LIMIT :limit"
            ),
            params | {"attr": attribute or ""},
        )
    ).all()
    cursor = rows[-1].id if len(rows) == limit else None
    if not attribute:
        return Page([r.id for r in rows], cursor)
    assert window is not None
    due = [
        r.id
        for r in rows
        if due_in_window(
            r.value,
            r.timezone,
            *window,
            at_local_time=trigger.get("at_local_time"),
            offset=trigger.get("offset"),
        )
    ]
    return Page(due, cursor)
