"""The journey interpreter: one workflow per (journey, contact).

A pure function of the journey definition and the signals it receives. Every side
effect (sending, writing the contact store, recording steps) is an activity; every wait
is a durable timer. Operators see search attributes JourneyStep/JourneyStatus, query
`state`, and may signal `event`, `engagement` and `exit` (SPEC section 8).
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from workflows.definitions import load_definition
    from workflows.interpreter import RunEnded
    from workflows.steps import StepRunner
    from workflows.types import EngagementSignal, EventSignal, JourneyInput

WORKFLOW_NAME = "JourneyRun"


def workflow_id(journey_key: str, contact_id: str) -> str:
    return f"journey/{journey_key}/{contact_id}"


@workflow.defn(name=WORKFLOW_NAME)
class JourneyWorkflow(StepRunner):
    @workflow.init
    def __init__(self, inp: JourneyInput) -> None:
        try:
            shared, defn = load_definition(inp.journey_key, inp.version, inp.definition)
        except ValidationError:
            # Published versions are validated; this is a hand-made or corrupted input.
            raise ApplicationError(
                "journey definition does not parse", {"journey": inp.journey_key},
                type="DefinitionError", non_retryable=True,
            ) from None
        # Equal content, so no command changes; the run's own decoded copy is freed.
        inp.definition = shared
        self._setup(inp, defn)
        self.last_step: str | None = None

    # --- operator surface -------------------------------------------------------------
    @workflow.query(name="state")
    def query_state(self) -> dict[str, Any]:
        return self.snapshot()

    @workflow.signal(name="exit")
    def signal_exit(self, reason: str = "operator") -> None:
        self.request_exit(reason)

    @workflow.signal(name="event")
    def signal_event(self, ev: EventSignal) -> None:
        self.receive_event(ev)

    @workflow.signal(name="engagement")
    def signal_engagement(self, sig: EngagementSignal) -> None:
        self.receive_engagement(sig)

    # --- interpreter --------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: JourneyInput) -> dict[str, Any]:
        self.use_patches()
        if inp.state is None and inp.journey_key in inp.chain:
            # The contact came here through start_journey from this very journey.
            self.end("exited", "loop_guard", self.defn.start)
        else:
            try:
                await self.interpret()
            except RunEnded:
                pass
            except ActivityError as err:
                await self.fail(err)
        if self.state.status == "running":
            self.end("completed", "completed", self.last_step)
        await self.flush(force=True)
        return self.snapshot()

    async def interpret(self) -> None:
        while True:
            await self.drain()
            name = self.state.step
            if name is None:
                return
            if self.history_too_long():
                await self.continue_as_new()  # between steps: nothing in flight
            step = self.defn.step(name)
            wait = self.state.wait
            resume = wait is not None and wait.step == name
            if wait is not None and resume:
                visit = wait.visit  # re-entering a wait after continue-as-new
            else:
                visit = self.state.visits.get(name, 0) + 1
                if visit > step.max_visits:
                    self.end("exited", "loop_guard", name)
                    return
                self.state.visits[name] = visit
                self.state.entered_at = workflow.now()
                self.log(name, visit, "entered")
                self.mark_step(name)
            self.last_step = name
            nxt = await self.execute(name, step, visit, resume)
            if self.state.status != "running":
                return
            self.log(name, visit, "left", nxt)
            self.state.step = nxt
            await self.maybe_flush()

    async def fail(self, err: ActivityError) -> None:
        """A step failed for good (a definition bug such as a deleted template): end the
        run as exited/error, then fail the workflow so operators see it in Temporal."""
        cause = err.cause
        detail = cause.message if isinstance(cause, ApplicationError) else type(cause).__name__
        step = self.state.step
        self.end("exited", "error", step)
        await self.flush(force=True)
        raise ApplicationError(
            f"step {step} failed: {detail}", type="StepFailed", non_retryable=True
        ) from err
