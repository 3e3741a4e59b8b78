"""The redelivery sweep of stored, undelivered events (services.event_redelivery), started
every minute by the Temporal schedule `events-redelivery`. Within its minute it sweeps every
few seconds, so an event stored while Temporal was away reaches its runs seconds after
Temporal is back, without a workflow execution per sweep."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

REDELIVERY_WORKFLOW = "EventRedelivery"
REDELIVERY_ACTIVITY = "redeliver_events"
SWEEPS = 6  # per execution, PAUSE apart: about the schedule's minute
PAUSE = timedelta(seconds=10)


@workflow.defn(name=REDELIVERY_WORKFLOW)
class EventRedeliveryWorkflow:
    @workflow.run
    async def run(self, sweeps: int = SWEEPS) -> int:
        delivered = 0
        for i in range(max(sweeps, 1)):
            if i:
                await workflow.sleep(PAUSE)
            result: dict[str, int] = await workflow.execute_activity(
                REDELIVERY_ACTIVITY,
                start_to_close_timeout=timedelta(minutes=5),
                heartbeat_timeout=timedelta(minutes=1),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=2),
                    maximum_interval=timedelta(seconds=30),
                    maximum_attempts=3,  # the next sweep tries again anyway
                ),
            )
            delivered += result.get("delivered", 0)
        return delivered
