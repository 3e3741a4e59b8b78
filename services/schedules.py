"""Scheduled journeys (trigger `schedule`): a Temporal schedule per journey, kept in step
with the journey by `sync_schedule`, and the enrolment each firing does.

- cron: the schedule fires on the cron (in the trigger's timezone, default UTC) and enrols
  the audience: the trigger's `segment`, else every contact.
- attribute (birthdays and other dates): the schedule fires every 15 minutes and enrols the
  contacts whose occurrence (see services.anniversaries) falls in the 15 minutes before it.

Reentry rules apply to every enrolment (a weekly journey wants `always` or `after_exit`).
Pausing the journey pauses the schedule; archiving it, or publishing a version with
another trigger, deletes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from core.config import Settings
from core.db import Database
from core.models import Journey, JourneyVersion
from core.temporal import put_schedule
from services.audience import audience_page
from services.context import Actor, ServiceContext
from services.enrollment import EnrollmentResult, enroll
from services.errors import Conflict, NotFound, Unavailable
from workflows import search_attributes as sa
from workflows.scheduled_entry import WORKFLOW_NAME, AudienceInput, ScheduledEntryInput

ATTRIBUTE_EVERY = timedelta(minutes=15)
PAGE = 1000
SCHEDULER = Actor("schedule", "admin")


def schedule_id(journey_key: str) -> str:
    return f"journey-schedule/{journey_key}"


def schedule_trigger(definition: Mapping[str, Any] | None) -> dict[str, Any] | None:
    trigger = (definition or {}).get("trigger") or {}
    return dict(trigger) if trigger.get("type") == "schedule" else None


def require_temporal_for(ctx: ServiceContext, definition: Mapping[str, Any] | None) -> None:
    """Fail before anything is written when a schedule cannot be created."""
    if schedule_trigger(definition) is not None and ctx.temporal is None:
        raise Unavailable("Temporal is not connected; a scheduled journey needs it to publish")


def build_schedule(
    journey_key: str, trigger: Mapping[str, Any], task_queue: str, paused: bool
) -> Schedule:
    if trigger.get("attribute"):
        spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=ATTRIBUTE_EVERY)])
        arg = ScheduledEntryInput(
            journey_key, "attribute", int(ATTRIBUTE_EVERY.total_seconds())
        )
        # A firing missed while Temporal was down still runs (late beats never).
        catchup = timedelta(days=2)
    else:
        spec = ScheduleSpec(
            cron_expressions=[str(trigger["cron"])],
            time_zone_name=str(trigger.get("timezone") or "UTC"),
        )
        arg = ScheduledEntryInput(journey_key, "cron")
        catchup = timedelta(hours=1)
    return Schedule(
        action=ScheduleActionStartWorkflow(
            WORKFLOW_NAME,
            arg,
            id=f"journey-scheduled-entry/{journey_key}",
            task_queue=task_queue,
            typed_search_attributes=TypedSearchAttributes(
                [SearchAttributePair(sa.JOURNEY_KEY, journey_key)]
            ),
        ),
        spec=spec,
        # Every window must be enrolled, so firings queue up rather than being dropped.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.BUFFER_ALL, catchup_window=catchup),
        state=ScheduleState(
            paused=paused, note="journey paused" if paused else "journey active"
        ),
    )


async def sync_schedule(ctx: ServiceContext, journey: Journey) -> str:
    """Make Temporal's schedule for the journey match it; says what was done. The journey
    is already saved: a Temporal failure says so, and the same call again retries."""
    try:
        return await _sync(ctx, journey)
    except RPCError as exc:
        raise Unavailable(
            "the journey is saved but Temporal did not take its schedule; retry with "
            "`journeys journeys sync-schedule KEY`",
            {"key": journey.key, "schedule_id": schedule_id(journey.key)},
        ) from exc


async def _sync(ctx: ServiceContext, journey: Journey) -> str:
    version = None
    if journey.latest_version is not None:
        version = await ctx.session.get(JourneyVersion, (journey.key, journey.latest_version))
    trigger = schedule_trigger(version.definition if version else None)
    wanted = trigger is not None and journey.status in ("active", "paused")
    if ctx.temporal is None:
        if wanted:
            raise Unavailable("Temporal is not connected; cannot update the journey's schedule")
        return "none"
    client: Client = ctx.temporal
    handle = client.get_schedule_handle(schedule_id(journey.key))
    if not wanted or trigger is None:
        try:
            await handle.delete()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            return "none"
        return "deleted"
    schedule = build_schedule(
        journey.key, trigger, ctx.settings.temporal_task_queue, journey.status == "paused"
    )
    return await put_schedule(client, schedule_id(journey.key), schedule)


async def enroll_audience(
    db: Database,
    settings: Settings,
    client: Client,
    inp: AudienceInput,
    *,
    cursor: str | None = None,
    totals: EnrollmentResult | None = None,
    heartbeat: Callable[[str | None, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One firing: enrol the audience page by page from cursor; heartbeat(cursor, totals)
    after each page lets a retried activity resume."""
    result = totals or EnrollmentResult()
    window = None
    if inp.window_start is not None and inp.window_end is not None:
        window = (inp.window_start, inp.window_end)
    while True:
        async with db.session() as s:
            ctx = ServiceContext(s, settings, client, SCHEDULER)
            j = await s.get(Journey, inp.journey_key)
            if j is None or j.status != "active" or j.latest_version is None:
                return {**result.as_dict(), "stopped": "journey_not_active"}
            v = await s.get(JourneyVersion, (j.key, j.latest_version))
            trigger = schedule_trigger(v.definition if v else None)
            if trigger is None:
                return {**result.as_dict(), "stopped": "not_scheduled"}
            if bool(trigger.get("attribute")) != (inp.kind == "attribute"):
                return {**result.as_dict(), "stopped": "trigger_changed"}
            page = await audience_page(s, trigger, after=cursor, limit=PAGE, window=window)
            if page.contact_ids:
                try:
                    result.add(await enroll(ctx, j.key, page.contact_ids))
                except (Conflict, NotFound):  # paused or archived meanwhile
                    return {**result.as_dict(), "stopped": "journey_not_active"}
        cursor = page.cursor
        if heartbeat is not None:
            heartbeat(cursor, result.as_dict())
        if cursor is None:
            return result.as_dict()
