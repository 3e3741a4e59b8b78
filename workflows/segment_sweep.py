"""The periodic sweep of time-based segment rules, run by the Temporal schedule
`segments-sweep` (services.segment_schedule): members whose "within 90 days" has run out
leave, non-members of "not ... within" rules enter. The clock is the workflow's, so a
time-skipping test server moves it too."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

SWEEP_WORKFLOW = "SegmentSweep"
SWEEP_ACTIVITY = "sweep_segments"


@workflow.defn(name=SWEEP_WORKFLOW)
class SegmentSweepWorkflow:
    @workflow.run
    async def run(self) -> int:
        swept: int = await workflow.execute_activity(
            SWEEP_ACTIVITY,
            workflow.now().isoformat(),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=1)
            ),
        )
        return swept
