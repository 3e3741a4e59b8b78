"""ScheduledEntry: what a journey's Temporal schedule starts. It works out which window
of time this firing covers and hands the enrolment to one activity (all I/O is there)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

WORKFLOW_NAME = "ScheduledEntry"
ACTIVITY_NAME = "enroll_audience"
# Set by Temporal on every workflow a schedule starts: the firing's nominal time.
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


@dataclass
class ScheduledEntryInput:
    journey_key: str
    kind: str  # cron | attribute
    every_seconds: int = 0  # attribute schedules: the firing interval (window length)


@dataclass
class AudienceInput:
    journey_key: str
    kind: str  # cron: the whole audience; attribute: contacts due in [window_start, window_end)
    window_start: datetime | None = None
    window_end: datetime | None = None


def window(fired_at: datetime, every_seconds: int) -> tuple[datetime, datetime]:
    """[fired_at - every, fired_at): consecutive firings cover time without gaps or overlap."""
    end = fired_at.replace(second=0, microsecond=0)
    return end - timedelta(seconds=every_seconds), end


@workflow.defn(name=WORKFLOW_NAME)
class ScheduledEntryWorkflow:
    @workflow.run
    async def run(self, inp: ScheduledEntryInput) -> dict[str, Any]:
        audience = AudienceInput(inp.journey_key, inp.kind)
        if inp.kind == "attribute":
            fired = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
            audience.window_start, audience.window_end = window(
                fired or workflow.now(), inp.every_seconds
            )
        result: dict[str, Any] = await workflow.execute_activity(
            ACTIVITY_NAME,
            audience,
            # Large audiences take long; heartbeats carry the cursor so a retry resumes.
            start_to_close_timeout=timedelta(hours=6),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=5),
                maximum_interval=timedelta(minutes=5),
                maximum_attempts=20,
            ),
        )
        return result
