"""The journey interpreter: one workflow per (journey, contact).

A pure function of the journey definition and the signals it receives. Every side
effect (sending, writing the contact store, recording steps) is an activity; every
wait is a durable timer.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows import search_attributes as sa
    from workflows.types import (
        JourneyInput,
        RecordInput,
        RunState,
        SendInput,
        SendResult,
        StepRecord,
    )

WORKFLOW_NAME = "JourneyRun"

ACTIVITY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
)


def _duration_seconds(iso: str) -> float:
    """Minimal ISO 8601 duration (PnDTnHnMnS) until the dsl package lands."""
    import re

    m = re.fullmatch(
        r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", iso
    )
    if not m:
        raise ValueError(f"bad duration {iso!r}")
    w, d, h, mi, s = (float(x) if x else 0.0 for x in m.groups())
    return (((w * 7 + d) * 24 + h) * 60 + mi) * 60 + s


def workflow_id(journey_key: str, contact_id: str) -> str:
    return f"journey/{journey_key}/{contact_id}"


@workflow.defn(name=WORKFLOW_NAME)
class JourneyWorkflow:
    def __init__(self) -> None:
        self.inp: JourneyInput | None = None
        self.state = RunState(step=None)
        self.pending: list[StepRecord] = []
        self.waiting_for: dict[str, Any] | None = None
        self.exit_requested: str | None = None

    # --- operator surface -------------------------------------------------
    @workflow.query(name="state")
    def query_state(self) -> dict[str, Any]:
        return {
            "status": self.state.status,
            "step": self.state.step,
            "visits": dict(self.state.visits),
            "exit_reason": self.state.exit_reason,
            "waiting_for": self.waiting_for,
        }

    @workflow.signal(name="exit")
    def signal_exit(self, reason: str = "operator") -> None:
        self.exit_requested = reason or "operator"

    # --- interpreter ------------------------------------------------------
    @workflow.run
    async def run(self, inp: JourneyInput) -> dict[str, Any]:
        self.inp = inp
        self.run_id = inp.run_id or workflow.info().run_id
        steps: dict[str, dict[str, Any]] = inp.definition["steps"]
        self.state = inp.state or RunState(step=inp.definition["start"])

        while self.state.step is not None and self.exit_requested is None:
            name = self.state.step
            step = steps[name]
            visits = self.state.visits.get(name, 0) + 1
            if visits > int(step.get("max_visits", 1)):
                self._end("exited", "loop_guard", name)
                break
            self.state.visits[name] = visits
            self._log(name, visits, "entered")
            self._upsert_step(name)
            nxt = await self._execute(name, step, visits)
            if self.exit_requested is not None:
                break
            self._log(name, visits, "left", nxt)
            self.state.step = nxt
        if self.exit_requested is not None and self.state.status == "running":
            self._end("exited", self.exit_requested, self.state.step)
        elif self.state.status == "running":
            self._end("completed", "completed", None)
        await self._flush()
        return self.query_state()

    async def _execute(self, name: str, step: dict[str, Any], visit: int) -> str | None:
        kind = step["type"]
        if kind == "send_email":
            await self._send(name, step, visit)
            return step.get("next")
        if kind == "wait":
            seconds = _duration_seconds(step["duration"])
            self.waiting_for = {"kind": "timer"}
            await self._flush()
            try:
                await workflow.wait_condition(
                    lambda: self.exit_requested is not None, timeout=timedelta(seconds=seconds)
                )
            except TimeoutError:
                pass
            self.waiting_for = None
            return step.get("next")
        if kind == "goto":
            return str(step["step"])
        if kind == "exit":
            self._end("exited" if step.get("reason") else "completed",
                      step.get("reason") or "completed", name)
            return None
        raise ValueError(f"step {name}: unsupported type {kind}")

    async def _send(self, name: str, step: dict[str, Any], visit: int) -> SendResult:
        assert self.inp is not None
        await self._flush()
        return await workflow.execute_activity(
            "send_email",
            SendInput(
                run_id=self.run_id,
                journey_key=self.inp.journey_key,
                journey_name=self.inp.definition.get("name", ""),
                version=self.inp.version,
                contact_id=self.inp.contact_id,
                step=name,
                visit=visit,
                template_key=step["template"],
                category=step.get("category") or self.inp.definition.get("category"),
            ),
            result_type=SendResult,
            start_to_close_timeout=timedelta(seconds=60),
            # send_email heartbeats every second: a killed worker's send is retried
            # (and settled without a second mail) within seconds.
            heartbeat_timeout=timedelta(seconds=5),
            retry_policy=ACTIVITY_RETRY,
        )

    # --- bookkeeping ------------------------------------------------------
    def _log(self, step: str, visit: int, action: str, outcome: str | None = None) -> None:
        self.state.seq += 1
        self.pending.append(
            StepRecord(self.state.seq, step, visit, action, workflow.now(), outcome)
        )

    def _end(self, status: str, reason: str, step: str | None) -> None:
        self.state.status = status
        self.state.exit_reason = reason
        if step is not None:
            self._log(step, self.state.visits.get(step, 0), "exited", reason)
        workflow.upsert_search_attributes([sa.JOURNEY_STATUS.value_set(status)])

    def _upsert_step(self, step: str) -> None:
        workflow.upsert_search_attributes([sa.JOURNEY_STEP.value_set(step)])

    async def _flush(self) -> None:
        """Write pending step records and the run's current state to the database."""
        assert self.inp is not None
        records, self.pending = self.pending, []
        await workflow.execute_activity(
            "record_steps",
            RecordInput(
                run_id=self.run_id,
                workflow_id=workflow.info().workflow_id,
                journey_key=self.inp.journey_key,
                version=self.inp.version,
                contact_id=self.inp.contact_id,
                records=records,
                status=self.state.status,
                step=self.state.step,
                visits=dict(self.state.visits),
                exit_reason=self.state.exit_reason,
                waiting_for=self.waiting_for,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=ACTIVITY_RETRY,
        )
