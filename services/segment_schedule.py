"""The Temporal schedule that runs the segment sweep every minute (created or updated when
a worker starts; visible and pausable in the Temporal UI under Schedules)."""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from core.temporal import put_schedule
from workflows.segment_sweep import SWEEP_WORKFLOW

SCHEDULE_ID = "segments-sweep"
EVERY = timedelta(minutes=1)


def sweep_schedule(task_queue: str, every: timedelta = EVERY) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            SWEEP_WORKFLOW,
            id="segments-sweep",
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=30),
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # One sweep at a time; a sweep that overruns makes the next one skip, not pile up.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )


async def ensure_sweep_schedule(
    client: Client, task_queue: str, every: timedelta = EVERY, schedule_id: str = SCHEDULE_ID
) -> None:
    """Creates the schedule, or brings an existing one to this task queue and interval
    (an operator's pause is kept)."""
    wanted = sweep_schedule(task_queue, every)
    await put_schedule(client, schedule_id, wanted, keep_state=True)  # a pause stays
