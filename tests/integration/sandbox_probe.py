"""A workflow for the runner tests: imports nothing but temporalio (the sandbox imports
this module afresh for each run)."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow


@workflow.defn(name="sandbox-probe")
class SandboxProbe:
    @workflow.run
    async def run(self, touch_the_clock: bool) -> str:
        if touch_the_clock:
            return datetime.now().isoformat()  # non-deterministic: the sandbox refuses it
        await workflow.sleep(timedelta(milliseconds=10))  # a second activation
        return "done"
