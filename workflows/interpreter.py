"""The interpreter's engine room: run state, step records, blocking waits that keep
handling events, journey-level exit/goal rules, and continue-as-new.

Deterministic workflow code only: time is workflow.now(), every lookup or change is an
activity. The step types themselves are in workflows/steps.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy

from dsl.model import (
    ConditionExit,
    ConditionGoal,
    EventExit,
    EventGoal,
    JourneyDefinition,
    SegmentExit,
)
from workflows import search_attributes as sa
from workflows.definitions import condition_json, where_json
from workflows.types import (
    DEFAULT_CONTINUE_AS_NEW_AFTER,
    EngagementSignal,
    EventSignal,
    JourneyInput,
    JudgeInput,
    JudgeResult,
    RecordInput,
    RunState,
    StepRecord,
)

T = TypeVar("T")

# Database lookups and writes: retried with backoff for as long as it takes (an outage must
# not lose a run); bugs in a definition raise non-retryable errors instead.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["DefinitionError"],
)
DB_TIMEOUT = timedelta(seconds=30)

SEEN_EVENTS_KEPT = 200  # ids of recent events, to drop a re-delivered signal
ENGAGEMENTS_KEPT = 200
FLUSH_AFTER_RECORDS = 200  # a long run of non-blocking steps still writes its trail
# Runs started from this patch on write their records with a local activity (no activity
# task round trip through the server) and send each workflow task's search attribute
# changes as one upsert. Older histories replay with the old commands.
LOCAL_RECORDS_PATCH = "local-record-steps-batched-search-attributes"
# Runs started from this patch on also send as a local activity: a send -> exit run is one
# workflow task with no activity task (the server's CPU a run fell by a fifth to a quarter). It implies
# LOCAL_RECORDS_PATCH and the undecided frequency cap's patch (one marker per run instead of
# one per patch). A send is keyed by (run, step, visit) in the ledger, which a local
# activity needs: it runs again when its workflow task is lost (a worker dies, or a
# signal lands as the run completes), and the ledger answers with the first outcome.
LOCAL_STEPS_PATCH = "local-step-activities"
REASON_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class RunEnded(Exception):
    """Raised inside a step when the run ends where it is (exit signal, exit_when, goal)."""


@dataclass
class EventWait:
    """What the current wait_for_event step listens for."""

    name: str
    where: dict[str, Any] | None  # None: no filter, no activity needed
    matched_event_id: str | None = None


class Interpreter:
    inp: JourneyInput
    defn: JourneyDefinition
    state: RunState
    run_id: str

    def _setup(self, inp: JourneyInput, defn: JourneyDefinition) -> None:
        self.inp = inp
        self.defn = defn
        self.run_id = inp.run_id or workflow.info().run_id
        self.state = inp.state or RunState(step=defn.start)
        self.pending: list[StepRecord] = []
        self.waiting_for: dict[str, Any] | None = None
        self.event_wait: EventWait | None = None
        self.dirty = True  # the run row needs writing at the next blocking point
        self.conditions_stale = False  # engagement arrived: re-check condition rules
        self.threshold = inp.continue_as_new_after or DEFAULT_CONTINUE_AS_NEW_AFTER
        # Runs started with our search attributes keep them current; a run started without
        # them (a server where they are not registered) must not upsert.
        self.sa_enabled = sa.JOURNEY_KEY in workflow.info().typed_search_attributes
        self.sa_step: str | None = (
            workflow.info().typed_search_attributes.get(sa.JOURNEY_STEP)
            if self.sa_enabled
            else None
        )
        self.sa_sent_step = self.sa_step  # what the server has (differs only when batched)
        self.batched = False  # set by use_patches() when the run starts
        self.local_steps = False  # ditto
        self.condition_rules = [
            rule.condition for rule in defn.exit_when if isinstance(rule, ConditionExit)
        ]

    # --- signals (called from the workflow's handlers) ---------------------------------
    def receive_event(self, ev: EventSignal) -> None:
        self.state.inbox.append(ev)

    def receive_engagement(self, sig: EngagementSignal) -> None:
        if any(e.tracking_event_id == sig.tracking_event_id for e in self.state.engagements):
            return
        self.state.engagements.append(sig)
        del self.state.engagements[:-ENGAGEMENTS_KEPT]
        if self.condition_rules or isinstance(self.defn.goal, ConditionGoal):
            self.conditions_stale = True

    def request_exit(self, reason: str | None) -> None:
        # Operators can type anything in the Temporal UI; only a reason code is kept (it is
        # stored and reported), never free text that could carry PHI.
        if not isinstance(reason, str) or not REASON_CODE.fullmatch(reason):
            reason = "operator"
        if self.state.exit_requested is None:
            self.state.exit_requested = reason

    def snapshot(self) -> dict[str, Any]:
        return {
            "journey_key": self.inp.journey_key,
            "version": self.inp.version,
            "contact_id": self.inp.contact_id,
            "run_id": self.run_id,
            "status": self.state.status,
            "step": self.state.step,
            "visits": dict(self.state.visits),
            "exit_reason": self.state.exit_reason,
            "waiting_for": self.waiting_for,
            "goal_reached_at": _iso(self.state.goal_reached_at),
            "chain": list(self.inp.chain),
        }

    def use_patches(self) -> None:
        """Decided once, first thing in the run, so a replay takes the same path. A run
        that has the newest patch never asks for the older ones (each would add a marker
        and a search attribute upsert to its history)."""
        self.local_steps = workflow.patched(LOCAL_STEPS_PATCH)
        self.batched = self.local_steps or workflow.patched(LOCAL_RECORDS_PATCH)

    # --- activities ----------------------------------------------------------------------
    async def call(
        self,
        name: str,
        arg: Any,
        result_type: type[T],
        start_to_close: timedelta = DB_TIMEOUT,
        retry: RetryPolicy = DB_RETRY,
        heartbeat: timedelta | None = None,
        local: bool = False,
    ) -> T:
        """local=True (runs with LOCAL_STEPS_PATCH): a local activity. Only for work keyed
        by (run, step, visit) whose result a second execution reproduces: a workflow task
        that fails (a signal landing as the run completes) loses its local activities'
        results and runs them again. Decisions (judge, lookups) stay activity tasks, so
        their results are in the history before anything acts on them."""
        self.sync_search_attributes()
        if self.local_steps and local:
            # No heartbeat: a worker lost mid-activity loses its workflow task too, and the
            # next worker runs the activity again when that task times out.
            done: T = await workflow.execute_local_activity(
                name,
                arg,
                result_type=result_type,
                start_to_close_timeout=start_to_close,
                retry_policy=retry,
            )
            return done
        result: T = await workflow.execute_activity(
            name,
            arg,
            result_type=result_type,
            start_to_close_timeout=start_to_close,
            heartbeat_timeout=heartbeat,
            retry_policy=retry,
        )
        return result

    # --- records -------------------------------------------------------------------------
    def log(self, step: str, visit: int, action: str, outcome: str | None = None) -> None:
        self.state.seq += 1
        record = StepRecord(self.state.seq, step, visit, action, workflow.now(), outcome)
        self.pending.append(record)
        self.dirty = True

    def end(self, status: str, reason: str, step: str | None) -> None:
        if self.state.status != "running":
            return
        self.state.status = status
        self.state.exit_reason = reason
        self.waiting_for = None
        self.state.wait = None
        if step is not None:
            self.log(step, self.state.visits.get(step, 0), "exited", reason)
        self.dirty = True
        if self.batched:
            self.sync_search_attributes(status)
        elif self.sa_enabled:
            workflow.upsert_search_attributes([sa.JOURNEY_STATUS.value_set(status)])

    def mark_step(self, step: str) -> None:
        if self.sa_enabled and step != self.sa_step and not self.batched:
            workflow.upsert_search_attributes([sa.JOURNEY_STEP.value_set(step)])
            self.sa_sent_step = step
        self.sa_step = step

    def sync_search_attributes(self, status: str | None = None) -> None:
        """Batched runs: one upsert for the step and status changes since the last one,
        made before the workflow waits (any activity, timer or condition) or ends."""
        if not self.sa_enabled:
            return
        updates = []
        if self.sa_step is not None and self.sa_step != self.sa_sent_step:
            updates.append(sa.JOURNEY_STEP.value_set(self.sa_step))
            self.sa_sent_step = self.sa_step
        if status is not None:
            updates.append(sa.JOURNEY_STATUS.value_set(status))
        if updates:
            workflow.upsert_search_attributes(updates)

    async def flush(self, force: bool = False) -> None:
        """Write buffered step records and the run row (one activity, local when batched)."""
        if not (force or self.dirty or self.pending):
            return
        records, self.pending = self.pending, []
        self.dirty = False
        inp = RecordInput(
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
            goal_reached_at=self.state.goal_reached_at,
            trigger_event_id=self.inp.trigger_event_id,  # (activity input only: no command)
        )
        if not self.batched:
            await self.call("record_steps", inp, type(None))
            return
        # Idempotent (by seq), so the local activity running again after a lost workflow
        # task is harmless; retried like any database write.
        self.sync_search_attributes()
        await workflow.execute_local_activity(
            "record_steps",
            inp,
            result_type=type(None),
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
        )

    def set_waiting(self, waiting_for: dict[str, Any] | None) -> None:
        self.waiting_for = waiting_for
        self.dirty = True

    async def maybe_flush(self) -> None:
        if len(self.pending) >= FLUSH_AFTER_RECORDS:
            await self.flush()

    # --- blocking ------------------------------------------------------------------------
    async def block(self, until: datetime | None, done: Callable[[], bool]) -> bool:
        """Wait until done() (True) or until the deadline (False), handling events as they
        arrive. Raises RunEnded when the run must end where it is. A blocking point: the
        buffered records are written first, and the run may continue as new here."""
        timed_out = False
        while True:
            await self.drain()
            if done():
                return True
            if timed_out or (until is not None and workflow.now() >= until):
                return False
            if self.history_too_long():
                await self.continue_as_new()
            if self.dirty or self.pending:
                await self.flush()
                continue  # time passed and signals may have come: check again
            timeout = None if until is None else until - workflow.now()
            self.sync_search_attributes()
            try:
                await workflow.wait_condition(
                    lambda: self.woken() or done(), timeout=timeout
                )
            except TimeoutError:
                timed_out = True

    def woken(self) -> bool:
        s = self.state
        return bool(s.inbox) or s.exit_requested is not None or self.conditions_stale

    async def drain(self) -> None:
        """Handle received events; raise RunEnded if one ends the run."""
        while self.state.inbox:
            ev = self.state.inbox.pop(0)
            await self.handle_event(ev)
        if self.conditions_stale:
            self.conditions_stale = False
            await self.check_condition_rules()
        if self.state.exit_requested is not None:
            self.end("exited", self.state.exit_requested, self.state.step)
            raise RunEnded

    async def handle_event(self, ev: EventSignal) -> None:
        s = self.state
        if ev.event_id in s.seen_events or ev.event_id == self.inp.trigger_event_id:
            return
        s.seen_events.append(ev.event_id)
        del s.seen_events[:-SEEN_EVENTS_KEPT]

        # Property filters to test on this event, each tagged with what it decides.
        filters: list[tuple[str, dict[str, Any] | None]] = []
        goal = self.defn.goal
        if isinstance(goal, EventGoal) and s.goal_reached_at is None and goal.event == ev.name:
            filters.append(("goal", goal.where))
        for rule in self.defn.exit_when:
            if isinstance(rule, EventExit) and rule.event == ev.name:
                filters.append(("exit", rule.where))
            elif isinstance(rule, SegmentExit) and ev.name == "segment_exit":
                filters.append(("exit", {"segment": rule.segment_exit}))
        if self.event_wait is not None and self.event_wait.name == ev.name:
            filters.append(("wait", self.event_wait.where))
        conditions = list(self.condition_rules)
        if isinstance(goal, ConditionGoal) and s.goal_reached_at is None:
            conditions.append(goal.condition)
        if not filters and not conditions:
            return

        needs_judge = [(tag, where) for tag, where in filters if where]
        judged = JudgeResult()
        if needs_judge or conditions:
            judged = await self.call(
                "judge",
                JudgeInput(
                    contact_id=self.inp.contact_id,
                    run_id=self.run_id,
                    now=workflow.now(),
                    conditions=[condition_json(c) for c in conditions],
                    event_id=ev.event_id,
                    where=[where_json(where) for _, where in needs_judge],
                ),
                JudgeResult,
            )
        verdicts = iter(judged.where)
        hits = {tag for tag, where in filters if (next(verdicts) if where else True)}
        cond_hits = judged.conditions
        if isinstance(goal, ConditionGoal) and s.goal_reached_at is None and cond_hits[-1]:
            hits.add("goal")
        if any(cond_hits[: len(self.condition_rules)]):
            hits.add("exit")
        if "wait" in hits and self.event_wait is not None:
            self.event_wait.matched_event_id = ev.event_id
        self.apply_rules("goal" in hits, "exit" in hits)

    async def check_condition_rules(self) -> None:
        """Condition-form exit_when and goal, checked when a wait begins and when
        events or engagements arrive."""
        goal = self.defn.goal
        conditions = list(self.condition_rules)
        open_goal = isinstance(goal, ConditionGoal) and self.state.goal_reached_at is None
        if open_goal:
            assert isinstance(goal, ConditionGoal)
            conditions.append(goal.condition)
        if not conditions:
            return
        judged = await self.call(
            "judge",
            JudgeInput(
                contact_id=self.inp.contact_id,
                run_id=self.run_id,
                now=workflow.now(),
                conditions=[condition_json(c) for c in conditions],
            ),
            JudgeResult,
        )
        goal_hit = open_goal and judged.conditions[-1]
        self.apply_rules(goal_hit, any(judged.conditions[: len(self.condition_rules)]))

    def apply_rules(self, goal_hit: bool, exit_hit: bool) -> None:
        """A goal counts before an exit rule on the same event (they often name the same
        event, and the conversion must not be lost); either may end the run."""
        goal = self.defn.goal
        if goal_hit and goal is not None and self.state.goal_reached_at is None:
            self.state.goal_reached_at = workflow.now()
            self.dirty = True
            if goal.exit:
                self.end("exited", "goal", self.state.step)
                raise RunEnded
        if exit_hit:
            self.end("exited", "exit_when", self.state.step)
            raise RunEnded

    # --- continue-as-new -----------------------------------------------------------------
    def history_too_long(self) -> bool:
        info = workflow.info()
        return (
            info.get_current_history_length() >= self.threshold
            or info.is_continue_as_new_suggested()
        )

    async def continue_as_new(self) -> None:
        """Carry the whole state (visits, pending wait and its deadline, received signals)
        into a fresh history. Called only where no activity is in flight."""
        await self.flush()
        self.sync_search_attributes()
        await workflow.wait_condition(workflow.all_handlers_finished)
        inp = self.inp
        workflow.continue_as_new(
            JourneyInput(
                journey_key=inp.journey_key,
                version=inp.version,
                contact_id=inp.contact_id,
                definition=inp.definition,
                chain=list(inp.chain),
                run_id=self.run_id,
                state=self.state,
                trigger_event_id=inp.trigger_event_id,
                continue_as_new_after=inp.continue_as_new_after,
            )
        )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
