"""Drill-down from a report to the contacts behind a send step's numbers (PHI roles only).

Reads the rollup state (`report_send_state`, `report_unique`), so a page is an index
range, and writes one audit row per page read: who looked at which step's contacts.
"""

from __future__ import annotations

from typing import Any

from core.models import AuditLog, Journey
from services.context import ServiceContext
from services.errors import Forbidden, Invalid, NotFound
from services.report_privacy import may_see_phi
from services.report_rollup import ALL, NON_AUTOMATED, run_sql
from services.reports import VERDICTS, Period, resolve_mode

METRICS = ("received", "opened", "clicked")
MAX_LIMIT = 1000


async def step_contacts(
    ctx: ServiceContext,
    key: str,
    step: str,
    metric: str,
    *,
    version: int | None = None,
    period: Period = Period(),
    include_automated: bool | None = None,
    verdict: str | None = None,
    link: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> dict[str, Any]:
    if not may_see_phi(ctx.actor.role):
        raise Forbidden(f"role '{ctx.actor.role}' sees aggregates only")
    if metric not in METRICS:
        raise Invalid(f"metric must be one of {', '.join(METRICS)}", {"field": "metric"})
    if verdict is not None and verdict not in VERDICTS:
        raise Invalid(f"verdict must be one of {', '.join(VERDICTS)}", {"field": "verdict"})
    if link is not None and metric != "clicked":
        raise Invalid("link applies to metric=clicked only", {"field": "link"})
    if not 1 <= limit <= MAX_LIMIT:
        raise Invalid(f"limit must be between 1 and {MAX_LIMIT}", {"field": "limit"})
    period.check()
    if await ctx.session.get(Journey, key) is None:
        raise NotFound("journey not found", {"journey": key})

    params: dict[str, Any] = {
        "journey": key,
        "step": step,
        "cursor": cursor or "",
        "limit": limit + 1,
    }
    filters = ""
    if version is not None:
        filters += " AND x.version = :version"
        params["version"] = version
    if period.start is not None:
        filters += " AND x.day >= :start"
        params["start"] = period.start
    if period.end is not None:
        filters += " AND x.day <= :end"
        params["end"] = period.end
    include, _ = await resolve_mode(ctx, include_automated)
    if metric == "received":
        source = (
            "report_send_state x WHERE x.journey_key = :journey AND x.step = :step "
            "AND x.status = 'sent' AND coalesce(x.delivery, '') <> 'bounced'"
        )
    else:
        params["kind"] = "open" if metric == "opened" else "click"
        params["vclass"] = verdict or (ALL if include else NON_AUTOMATED)
        params["link"] = link or ""
        source = (
            "report_unique x WHERE x.journey_key = :journey AND x.step = :step "
            "AND x.kind = :kind AND x.vclass = :vclass AND x.link = :link"
        )
    rows = (
        await run_sql(
            ctx.session,
            "SELECT x.send_id, s.contact_id, c.external_id, x.version, x.day, s.sent_at "
            f"FROM (SELECT * FROM {source}{filters} AND x.send_id > :cursor "
            "ORDER BY x.send_id LIMIT :limit) x "
            "JOIN send s ON s.id = x.send_id LEFT JOIN contact c ON c.id = s.contact_id "
            "ORDER BY x.send_id",
            params,
        )
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    ctx.session.add(
        AuditLog(
            actor=ctx.actor.id,
            role=ctx.actor.role,
            action="read",
            resource=f"journey/{key}/report/steps/{step}/contacts",
            fields=["contact.id", "contact.external_id"],
            request_id=ctx.actor.request_id,
        )
    )
    await ctx.session.commit()
    return {
        "journey": key,
        "step": step,
        "metric": metric,
        "verdict": None if metric == "received" else params["vclass"],
        "link": link,
        "contacts": [
            {
                "contact_id": contact_id,
                "external_id": external_id,
                "send_id": send_id,
                "version": ver,
                "sent_at": sent_at,
                "day": day,  # received: the send's day; opened/clicked: the first one's day
            }
            for send_id, contact_id, external_id, ver, day, sent_at in map(tuple, rows)
        ],
        "next_cursor": rows[-1][0] if more and rows else None,
    }
