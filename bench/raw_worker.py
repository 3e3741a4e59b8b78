"""Baseline for bench/enrollment.py: a bare one-activity workflow on the same server,
polled with the same worker tuning (slots, pollers: Settings WORKER_*) as the journey worker."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker


@activity.defn(name="bare_activity")
async def bare_activity(n: int) -> int:
    return n


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        return await workflow.execute_activity(
            bare_activity, n, start_to_close_timeout=timedelta(seconds=30)
        )


async def main() -> None:
    # Imported here, not at the top: the sandbox re-imports this module for every run, and
    # the baseline must not pay for our modules.
    from core.config import Settings
    from worker import poller_options

    settings = Settings()
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    worker = Worker(
        client,
        task_queue=os.environ["TEMPORAL_TASK_QUEUE"] + "-raw",
        workflows=[BareWorkflow],
        activities=[bare_activity],
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        **poller_options(settings),
    )
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
