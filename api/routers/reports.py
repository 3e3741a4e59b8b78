"""Reports: the per-step journey funnel, engagement by day, and the drill-down to contacts.

JSON by default; `?format=csv` or `Accept: text/csv` gives CSV. Roles without PHI access
(marketer, auditor) get aggregates with small counts suppressed and no drill-down.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.deps import Operator, Reader
from services import report_contacts, reports
from services.report_csv import engagement_report_csv, journey_report_csv

router = APIRouter(prefix="/v1", tags=["reports"])

From = Annotated[str | None, Query(alias="from", description="first day, YYYY-MM-DD (UTC)")]
To = Annotated[str | None, Query(alias="to", description="last day, inclusive, YYYY-MM-DD (UTC)")]
IncludeAutomated = Annotated[
    bool | None,
    Query(
        description="count automated opens/clicks in totals and rates; "
        "default: the account setting exclude_automated_events"
    ),
]
Format = Annotated[Literal["json", "csv"] | None, Query(description="json (default) or csv")]


def _wants_csv(request: Request, fmt: str | None) -> bool:
    if fmt is not None:
        return fmt == "csv"
    return "text/csv" in request.headers.get("accept", "")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _csv(body: str, filename: str) -> Response:
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{_safe(filename)}"'},
    )


def _period(start: str | None, end: str | None) -> reports.Period:
    return reports.Period(reports.parse_day(start, "from"), reports.parse_day(end, "to")).check()


@router.get("/journeys/{key}/report", response_model=None)
async def journey_report(
    ctx: Reader,
    request: Request,
    key: str,
    version: Annotated[int | None, Query(ge=1)] = None,
    start: From = None,
    end: To = None,
    include_automated: IncludeAutomated = None,
    format: Format = None,
) -> dict[str, Any] | Response:
    report = await reports.journey_report(
        ctx, key, version=version, period=_period(start, end), include_automated=include_automated
    )
    if _wants_csv(request, format):
        return _csv(journey_report_csv(report), f"journey-{key}-report.csv")
    return report


@router.get("/journeys/{key}/report/steps/{step}/contacts")
async def step_contacts(
    ctx: Operator,
    key: str,
    step: str,
    metric: Annotated[Literal["received", "opened", "clicked"], Query()],
    version: Annotated[int | None, Query(ge=1)] = None,
    start: From = None,
    end: To = None,
    include_automated: IncludeAutomated = None,
    verdict: Annotated[Literal["human", "automated", "unknown"] | None, Query()] = None,
    link: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=report_contacts.MAX_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, Any]:
    return await report_contacts.step_contacts(
        ctx,
        key,
        step,
        metric,
        version=version,
        period=_period(start, end),
        include_automated=include_automated,
        verdict=verdict,
        link=link,
        limit=limit,
        cursor=cursor,
    )


@router.get("/reports/engagement", response_model=None)
async def engagement(
    ctx: Reader,
    request: Request,
    start: From = None,
    end: To = None,
    journey: Annotated[str | None, Query(max_length=200)] = None,
    template: Annotated[str | None, Query(max_length=200)] = None,
    group_by: Annotated[
        Literal["none", "journey", "template", "journey_template"], Query()
    ] = "none",
    include_automated: IncludeAutomated = None,
    format: Format = None,
) -> dict[str, Any] | Response:
    report = await reports.engagement_report(
        ctx,
        period=_period(start, end),
        journey=journey,
        template=template,
        group_by=group_by,
        include_automated=include_automated,
    )
    if _wants_csv(request, format):
        return _csv(engagement_report_csv(report), "engagement-report.csv")
    return report
