"""Journey and engagement reports, read from the rollup counters (services/report_rollup.py).

A report is a handful of grouped sums over `report_counter`; nothing here scans step_log,
send or tracking_event, so the answer takes the same time for ten runs or a million.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlmodel import col, select

from core.models import Journey, JourneyVersion, Setting
from services.context import ServiceContext
from services.errors import Invalid, NotFound
from services.report_privacy import THRESHOLD, may_see_phi, ratio, suppress_small_counts
from services.report_rollup import ALL, NON_AUTOMATED, run_sql

VERDICTS = ("human", "automated", "unknown")
# Exit reasons always listed (zero when none), so a report reads the same every time.
EXIT_REASONS = (
    "completed",
    "goal",
    "exit_when",
    "loop_guard",
    "unsubscribed",
    "operator",
    "erased",
)
SETTING_KEY = "exclude_automated_events"
MAX_DAYS = 400  # engagement report range


@dataclass(frozen=True)
class Period:
    start: date | None = None
    end: date | None = None

    def check(self) -> Period:
        if self.start and self.end and self.start > self.end:
            raise Invalid("from is after to", {"field": "from"})
        return self


def parse_day(value: str | None, name: str) -> date | None:
    """A query date: YYYY-MM-DD, or an ISO datetime (its UTC day)."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            return date.fromisoformat(value)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(
            f"{name} must be a date (YYYY-MM-DD) or an ISO datetime", {"field": name}
        ) from None
    return (dt if dt.tzinfo is None else dt.astimezone(UTC)).date()


async def exclude_automated_default(ctx: ServiceContext) -> bool:
    """The account setting `exclude_automated_events` (default true)."""
    row = await ctx.session.get(Setting, SETTING_KEY)
    value = row.value if row is not None else True
    if isinstance(value, dict):
        value = value.get("value", True)
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "0", "no", "off")
    return bool(value)


async def resolve_mode(ctx: ServiceContext, include_automated: bool | None) -> tuple[bool, str]:
    if include_automated is not None:
        return include_automated, "query"
    return not await exclude_automated_default(ctx), "setting"


def _targets(spec: Any) -> list[str]:
    """Steps a raw step definition can go to, in field order."""
    if not isinstance(spec, dict):
        return []
    out = [spec.get(f) for f in ("next", "yes", "no", "step")]
    for group in ("cases", "paths"):
        out += [c.get("next") for c in spec.get(group) or [] if isinstance(c, dict)]
    out.append(spec.get("default"))
    return [t for t in out if isinstance(t, str)]


def flow_order(definition: dict[str, Any]) -> list[str]:
    """Steps breadth-first from `start`, then any unreachable ones (stored JSONB loses the
    declaration order, so the flow gives the report its order)."""
    steps = definition.get("steps") or {}
    order: list[str] = []
    queue = [definition.get("start")]
    while queue:
        name = queue.pop(0)
        if isinstance(name, str) and name in steps and name not in order:
            order.append(name)
            queue += _targets(steps[name])
    return order + sorted(n for n in steps if n not in order)


# --- counter access -----------------------------------------------------------------


class Counts:
    """Summed counters of one scope, indexed by (metric, verdict, dimension)."""

    def __init__(self) -> None:
        self.by: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))

    def add(self, metric: str, verdict: str, dimension: str, n: int) -> None:
        self.by[metric][(verdict, dimension)] += n

    def get(self, metric: str, verdict: str = "", dimension: str = "") -> int:
        return self.by.get(metric, {}).get((verdict, dimension), 0)

    def total(self, metric: str, verdict: str | None = None) -> int:
        return sum(n for (v, _), n in self.by.get(metric, {}).items() if verdict in (None, v))

    def dims(self, metric: str, verdict: str | None = None) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (v, d), n in self.by.get(metric, {}).items():
            if verdict in (None, v):
                out[d] += n
        return out

    def has(self, *metrics: str) -> bool:
        return any(self.by.get(m) for m in metrics)


def _where(
    journey: str | None, version: int | None, period: Period, template: str | None = None
) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = ["true"]
    params: dict[str, Any] = {}
    if journey is not None:
        clauses.append("journey_key = :journey")
        params["journey"] = journey
    if version is not None:
        clauses.append("version = :version")
        params["version"] = version
    if template is not None:
        clauses.append("template_key = :template")
        params["template"] = template
    if period.start is not None:
        clauses.append("day >= :start")
        params["start"] = period.start
    if period.end is not None:
        clauses.append("day <= :end")
        params["end"] = period.end
    return " AND ".join(clauses), params


# --- building blocks shared by both reports ---------------------------------------------


def engagement_block(c: Counts, kind: str, include_automated: bool) -> dict[str, Any]:
    """Opens or clicks: total and unique, split by verdict, with the machine share by reason."""
    uniq = f"unique_{kind}"
    per = {v: {"total": c.total(kind, v), "unique": c.get(uniq, v)} for v in VERDICTS}
    everything = {"total": c.total(kind), "unique": c.get(uniq, ALL)}
    non_auto = {
        "total": per["human"]["total"] + per["unknown"]["total"],
        "unique": c.get(uniq, NON_AUTOMATED),
    }
    mode = everything if include_automated else non_auto
    order = {v: i for i, v in enumerate(VERDICTS)}
    reasons: list[dict[str, Any]] = [
        {"verdict": v, "reason": r or None, "count": n}
        for (v, r), n in sorted(
            c.by.get(kind, {}).items(), key=lambda kv: (order.get(kv[0][0], 9), -kv[1], kv[0][1])
        )
        if n
    ]
    return {
        "total": mode["total"],
        "unique": mode["unique"],
        **per,
        "including_automated": dict(everything),
        "excluding_automated": dict(non_auto),
        "by_reason": reasons,
        "machine_by_reason": [
            {"reason": e["reason"], "count": e["count"]}
            for e in reasons
            if e["verdict"] == "automated"
        ],
    }


def add_engagement_shares(block: dict[str, Any]) -> None:
    """After suppression: how much of all opens/clicks machines made, overall and by reason."""
    total = block["including_automated"]["total"]
    block["machine_share"] = ratio(block["automated"]["total"], total)
    for e in block["machine_by_reason"]:
        e["share"] = ratio(e["count"], total)


def _send_rates(send: dict[str, Any], mode: str) -> dict[str, float | None]:
    opens = send["opens"][mode]["unique"]
    clicks = send["clicks"][mode]["unique"]
    delivered = send["delivered"]
    return {
        "delivery_rate": ratio(delivered, send["sent"]),
        "bounce_rate": ratio(send["bounced"], send["sent"]),
        "complaint_rate": ratio(send["complained"], delivered),
        "unsubscribe_rate": ratio(send["unsubscribed"], delivered),
        "open_rate": ratio(opens, delivered),
        "click_rate": ratio(clicks, delivered),
        "click_to_open_rate": ratio(clicks, opens),
    }


def _by(items: dict[str, int], name: str, blank: str | None = None) -> list[dict[str, Any]]:
    return [
        {name: (k if k != "" else blank), "count": n}
        for k, n in sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))
        if n
    ]


def send_block(c: Counts, templates: list[str], include_automated: bool) -> dict[str, Any]:
    links = sorted(set(c.dims("click_link")) | set(c.dims("unique_click_link")))
    by_link = []
    for link in links:
        per = {
            v: {
                "total": c.get("click_link", v, link),
                "unique": c.get("unique_click_link", v, link),
            }
            for v in VERDICTS
        }
        everything = {
            "total": sum(c.get("click_link", v, link) for v in VERDICTS),
            "unique": c.get("unique_click_link", ALL, link),
        }
        non_auto = {
            "total": per["human"]["total"] + per["unknown"]["total"],
            "unique": c.get("unique_click_link", NON_AUTOMATED, link),
        }
        mode = everything if include_automated else non_auto
        by_link.append(
            {
                "link": link,
                "total": mode["total"],
                "unique": mode["unique"],
                **per,
                "including_automated": everything,
                "excluding_automated": non_auto,
            }
        )
    clicks = engagement_block(c, "click", include_automated)
    clicks["by_link"] = by_link
    return {
        "templates": templates,
        "sent": c.total("sent"),
        "delivered": c.total("delivered"),
        "bounced": c.total("bounced"),
        "complained": c.total("complained"),
        "unsubscribed": c.total("unsubscribed"),
        "uncertain": c.total("uncertain"),
        "blocked": {"total": c.total("blocked"), "by_reason": _by(c.dims("blocked"), "reason")},
        "failed": {"total": c.total("failed"), "by_reason": _by(c.dims("failed"), "reason")},
        "opens": engagement_block(c, "open", include_automated),
        "clicks": clicks,
    }


def finish_send_block(send: dict[str, Any], include_automated: bool) -> None:
    """After suppression: rates in the report's mode and in both modes."""
    add_engagement_shares(send["opens"])
    add_engagement_shares(send["clicks"])
    with_auto = _send_rates(send, "including_automated")
    without = _send_rates(send, "excluding_automated")
    send["rates"] = dict(with_auto if include_automated else without)
    send["rates_including_automated"] = with_auto
    send["rates_excluding_automated"] = without


# --- GET /v1/journeys/{key}/report --------------------------------------------------------


async def journey_report(
    ctx: ServiceContext,
    key: str,
    *,
    version: int | None = None,
    period: Period = Period(),
    include_automated: bool | None = None,
) -> dict[str, Any]:
    period.check()
    journey = await ctx.session.get(Journey, key)
    if journey is None:
        raise NotFound("journey not found", {"journey": key})
    versions = (
        await ctx.session.exec(
            select(JourneyVersion)
            .where(JourneyVersion.journey_key == key)
            .order_by(col(JourneyVersion.version).desc())
        )
    ).all()
    if version is not None and version not in {v.version for v in versions}:
        raise NotFound("journey version not found", {"journey": key, "version": version})
    include, source = await resolve_mode(ctx, include_automated)

    where, params = _where(key, version, period)
    rows = (
        await run_sql(
            ctx.session,
            "SELECT step, template_key, metric, verdict, dimension, sum(count) "
            f"FROM report_counter WHERE {where} "
            "GROUP BY step, template_key, metric, verdict, dimension",
            params,
        )
    ).all()
    per_step: dict[str, Counts] = defaultdict(Counts)
    templates: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        step, template, metric, verdict, dimension, n = tuple(row)
        per_step[step].add(metric, verdict, dimension, int(n))
        if template and metric == "sent" and n:
            templates[step].add(template)

    # Step order (journey flow) and types from the definitions, newest version first.
    defs = [v.definition for v in versions if version is None or v.version == version]
    if not defs and journey.draft:
        defs = [journey.draft]
    types: dict[str, str | None] = {}
    for d in defs:
        steps = d.get("steps") or {}
        for name in flow_order(d):
            spec = steps.get(name)
            types.setdefault(name, spec.get("type") if isinstance(spec, dict) else None)
    for name in sorted(per_step):
        if name:
            types.setdefault(name, None)

    run_counts = per_step.get("", Counts())
    exits = run_counts.dims("run_exit")
    for reason in EXIT_REASONS:
        exits.setdefault(reason, 0)
    report: dict[str, Any] = {
        "journey": key,
        "name": journey.name,
        "version": version,
        "versions": sorted(v.version for v in versions if version is None or v.version == version),
        "from": period.start,
        "to": period.end,
        "include_automated": include,
        "include_automated_source": source,
        "runs": {
            "started": run_counts.total("run_started"),
            "ended": run_counts.total("run_exit"),
            "exits": [
                {"reason": r, "count": n}
                for r, n in sorted(exits.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
            "goal": {"conversions": run_counts.total("goal")},
        },
        "steps": [],
    }
    for name, kind in types.items():
        c = per_step.get(name, Counts())
        entry: dict[str, Any] = {
            "step": name,
            "type": kind,
            "entered": c.total("entered"),
            "entries": c.total("entries"),
            "left": c.total("left"),
            "went_to": _by(c.dims("left"), "step"),  # step null: the run ended there
            "exited": c.total("exited"),
            "exits": _by(c.dims("exited"), "reason"),
        }
        if kind == "send_email" or c.has("sent", "blocked", "failed", "open", "click"):
            entry["send"] = send_block(c, sorted(templates.get(name, ())), include)
        report["steps"].append(entry)

    suppressed = not may_see_phi(ctx.actor.role) and suppress_small_counts(report)
    report["runs"]["goal"]["conversion_rate"] = ratio(
        report["runs"]["goal"]["conversions"], report["runs"]["started"]
    )
    for entry in report["steps"]:
        if "send" in entry:
            finish_send_block(entry["send"], include)
    if not may_see_phi(ctx.actor.role):
        report["suppression_threshold"] = THRESHOLD
        report["suppressed"] = suppressed
    return report


# --- GET /v1/reports/engagement -----------------------------------------------------------

_ENGAGEMENT_METRICS = (
    "sent",
    "delivered",
    "bounced",
    "complained",
    "unsubscribed",
    "blocked",
    "open",
    "click",
    "unique_open",
    "unique_click",
)
GROUPS = {
    "none": (),
    "journey": ("journey_key",),
    "template": ("template_key",),
    "journey_template": ("journey_key", "template_key"),
}


async def engagement_report(
    ctx: ServiceContext,
    *,
    period: Period = Period(),
    journey: str | None = None,
    template: str | None = None,
    group_by: str = "none",
    include_automated: bool | None = None,
) -> dict[str, Any]:
    if group_by not in GROUPS:
        raise Invalid(f"group_by must be one of {', '.join(GROUPS)}", {"field": "group_by"})
    end = period.end or datetime.now(UTC).date()
    start = period.start or end - timedelta(days=29)
    period = Period(start, end).check()
    if (end - start).days + 1 > MAX_DAYS:
        raise Invalid(f"the range is longer than {MAX_DAYS} days", {"field": "from"})
    include, source = await resolve_mode(ctx, include_automated)

    cols = GROUPS[group_by]
    where, params = _where(journey, None, period, template)
    params["metrics"] = list(_ENGAGEMENT_METRICS)
    group_sql = "".join(f"{c_}, " for c_ in cols)
    rows = (
        await run_sql(
            ctx.session,
            f"SELECT day, {group_sql}metric, verdict, dimension, sum(count) "
            f"FROM report_counter WHERE {where} AND metric = ANY(CAST(:metrics AS text[])) "
            f"GROUP BY day, {group_sql}metric, verdict, dimension",
            params,
        )
    ).all()
    buckets: dict[tuple[Any, ...], Counts] = defaultdict(Counts)
    totals = Counts()
    for row in rows:
        values = tuple(row)
        day, groups = values[0], values[1 : 1 + len(cols)]
        metric, verdict, dimension, n = values[-4:]
        buckets[(day, *groups)].add(metric, verdict, dimension, int(n))
        totals.add(metric, verdict, dimension, int(n))
    if not cols:  # every day of the range, so a chart has no holes
        day = start
        while day <= end:
            buckets.setdefault((day,), Counts())
            day += timedelta(days=1)

    def block(c: Counts) -> dict[str, Any]:
        return {
            "sent": c.total("sent"),
            "delivered": c.total("delivered"),
            "bounced": c.total("bounced"),
            "complained": c.total("complained"),
            "unsubscribed": c.total("unsubscribed"),
            "blocked": c.total("blocked"),
            "opens": engagement_block(c, "open", include),
            "clicks": engagement_block(c, "click", include),
        }

    days = []
    for bucket_key in sorted(buckets, key=lambda k: tuple("" if x is None else str(x) for x in k)):
        entry: dict[str, Any] = {"day": bucket_key[0]}
        for name, value in zip(cols, bucket_key[1:], strict=True):
            entry[name.removesuffix("_key")] = value
        entry.update(block(buckets[bucket_key]))
        days.append(entry)
    report: dict[str, Any] = {
        "from": start,
        "to": end,
        "journey": journey,
        "template": template,
        "group_by": group_by,
        "include_automated": include,
        "include_automated_source": source,
        "days": days,
        "totals": block(totals),
    }
    suppressed = not may_see_phi(ctx.actor.role) and suppress_small_counts(report)
    for entry in [*days, report["totals"]]:
        for kind in ("opens", "clicks"):
            add_engagement_shares(entry[kind])
        entry["open_rate"] = ratio(entry["opens"]["unique"], entry["delivered"])
        entry["click_rate"] = ratio(entry["clicks"]["unique"], entry["delivered"])
    if not may_see_phi(ctx.actor.role):
        report["suppression_threshold"] = THRESHOLD
        report["suppressed"] = suppressed
    return report
