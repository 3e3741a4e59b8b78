"""What each step type of SPEC section 3 does, as workflow code.

Each executor returns the next step (None ends the run as completed). Waits go through
pause(), which records the pending wait and its deadline so a continue-as-new can resume
it; lookups and changes are activities (activities/lookups.py, contact_updates.py,
chaining.py, sending.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow

from dsl.dates import parse_datetime
from dsl.durations import parse_duration
from dsl.model import (
    BranchStep,
    ExitStep,
    GotoStep,
    SendEmailStep,
    SplitStep,
    StartJourneyStep,
    StepUnion,
    UpdateContactStep,
    WaitForEngagementStep,
    WaitForEventStep,
    WaitStep,
)
from dsl.split import choose_path
from dsl.timing import next_send_time, wait_until
from workflows.definitions import condition_json, where_json
from workflows.interpreter import EventWait, Interpreter
from workflows.types import (
    CAP_BY_IN_FLIGHT,
    CAP_BY_SENT,
    EngagementQuery,
    EngagementSignal,
    FindEventInput,
    JudgeInput,
    JudgeResult,
    PendingWait,
    SendCapInput,
    SendCapResult,
    SendInput,
    SendResult,
    StartJourneyInput,
    StartJourneyResult,
    UpdateContactInput,
    UpdateContactResult,
    WaitContext,
    WaitContextInput,
)

SEND_TIMEOUT = timedelta(seconds=60)
MIN_DEFER = timedelta(minutes=1)
# A cap decision that hinges on sends still in flight (they may yet fail) is looked at
# again after UNDECIDED_CAP_WAIT, for skip and defer journeys alike; after
# UNDECIDED_CAP_LOOKS undecided looks (about activities.lookups.IN_FLIGHT_STALE, after which
# in-flight sends count as sent anyway) the in-flight sends are assumed sent.
UNDECIDED_CAP_WAIT = MIN_DEFER
UNDECIDED_CAP_LOOKS = 5
CAP_ASSUMED_SENT = "frequency_cap_in_flight"  # step record outcome of such a decision
# Runs that reach an undecided cap decision from this patch on look again (above); before
# it, a skip journey skipped and a defer journey looked again after MIN_DEFER, unbounded.
CAP_UNDECIDED_PATCH = "frequency-cap-undecided-looks-again"


def _never() -> bool:
    return False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def needs_contact_clock(step: WaitStep) -> bool:
    """Whether the wait's end depends on the contact's zone or attributes (an activity)."""
    if step.until_attribute is not None or step.at_local_time is not None or step.days:
        return True
    if step.until is not None:
        return parse_datetime(step.until).tzinfo is None  # naive: the contact's local time
    if step.duration is not None:
        d = parse_duration(step.duration)
        return bool(d.years or d.months or d.days)  # calendar days follow local DST
    return False


def engagement_matches(e: EngagementSignal, step: WaitForEngagementStep, send_id: str) -> bool:
    # A human click on the message also proves it was opened.
    kind_ok = e.kind == step.event or (step.event == "open" and e.kind == "click")
    return e.send_id == send_id and kind_ok and (step.link is None or e.link == step.link)


class StepRunner(Interpreter):
    async def execute(self, name: str, step: StepUnion, visit: int, resume: bool) -> str | None:
        if isinstance(step, SendEmailStep):
            return await self.send_email(name, step, visit)
        if isinstance(step, WaitStep):
            return await self.wait(name, step, visit, resume)
        if isinstance(step, WaitForEngagementStep):
            return await self.wait_for_engagement(name, step, visit, resume)
        if isinstance(step, WaitForEventStep):
            return await self.wait_for_event(name, step, visit, resume)
        if isinstance(step, BranchStep):
            return await self.branch(step)
        if isinstance(step, SplitStep):
            weights = [path.weight for path in step.paths]
            index = choose_path(
                self.inp.contact_id, self.inp.journey_key, self.inp.version, weights, step=name
            )
            return step.paths[index].next
        if isinstance(step, UpdateContactStep):
            return await self.update_contact(name, step, visit)
        if isinstance(step, GotoStep):
            return step.step
        if isinstance(step, StartJourneyStep):
            return await self.start_journey(step)
        if isinstance(step, ExitStep):
            if step.reason:
                self.end("exited", step.reason, name)
            else:
                self.end("completed", "completed", name)
            return None
        raise TypeError(f"step {name}: unsupported type")

    # --- waiting -------------------------------------------------------------------------
    def resumed_deadline(self, name: str, resume: bool) -> datetime | None:
        wait = self.state.wait
        if resume and wait is not None and wait.step == name:
            return wait.deadline
        return None

    async def pause(
        self,
        name: str,
        visit: int,
        deadline: datetime | None,
        waiting_for: dict[str, Any],
        done: Callable[[], bool] = _never,
    ) -> bool:
        """Block in step name until done() or the deadline; True if done() became true."""
        self.state.wait = PendingWait(name, visit, deadline)
        self.set_waiting({**waiting_for, "until": _iso(deadline)})
        hit = await self.block(deadline, done)
        self.state.wait = None
        self.set_waiting(None)
        # Condition-form exit_when/goal: things may have changed while the run waited.
        await self.check_condition_rules()
        return hit

    async def wait(self, name: str, step: WaitStep, visit: int, resume: bool) -> str | None:
        deadline = self.resumed_deadline(name, resume)
        if deadline is None:
            clock = WaitContext(timezone=None)
            if needs_contact_clock(step):
                clock = await self.call(
                    "wait_context",
                    WaitContextInput(self.inp.contact_id, step.until_attribute),
                    WaitContext,
                )
            deadline = wait_until(step, workflow.now(), clock.timezone, clock.attribute_value)
        await self.pause(name, visit, deadline, {"kind": "timer"})
        return step.next

    async def wait_for_engagement(
        self, name: str, step: WaitForEngagementStep, visit: int, resume: bool
    ) -> str | None:
        send_id = self.state.sends.get(step.send_step)
        deadline = self.resumed_deadline(name, resume)
        if deadline is None:
            deadline = parse_duration(step.timeout).add_to(workflow.now())

        def engaged() -> bool:
            return send_id is not None and any(
                engagement_matches(e, step, send_id) for e in self.state.engagements
            )

        waiting_for = {"kind": "engagement", "step": step.send_step, "event": step.event}
        if step.link is not None:
            waiting_for["link"] = step.link
        if not resume and send_id is not None and not engaged():
            # A human engagement may have been recorded before this wait began.
            seen = await self.call(
                "engagement_seen", EngagementQuery(send_id, step.event, step.link), bool
            )
            if seen:
                return step.yes
        hit = await self.pause(name, visit, deadline, waiting_for, engaged)
        return step.yes if hit else step.no

    async def wait_for_event(
        self, name: str, step: WaitForEventStep, visit: int, resume: bool
    ) -> str | None:
        deadline = self.resumed_deadline(name, resume)
        if deadline is None:
            deadline = parse_duration(step.timeout).add_to(workflow.now())
        where = where_json(step.where) if step.where else None
        listening = EventWait(step.event, where)
        self.event_wait = listening
        try:
            if not resume:
                # Events that occurred since the run entered this step count too.
                found = await self.call(
                    "find_event",
                    FindEventInput(
                        contact_id=self.inp.contact_id,
                        name=step.event,
                        since=self.state.entered_at or workflow.now(),
                        where=where,
                        exclude_ids=[t for t in [self.inp.trigger_event_id] if t],
                    ),
                    str,
                )
                if found:
                    return step.yes
            hit = await self.pause(
                name,
                visit,
                deadline,
                {"kind": "event", "event": step.event},
                lambda: listening.matched_event_id is not None,
            )
        finally:
            self.event_wait = None
        return step.yes if hit else step.no

    # --- sending -------------------------------------------------------------------------
    async def send_email(self, name: str, step: SendEmailStep, visit: int) -> str | None:
        """Honour the send window (quiet hours, contact's zone) and the frequency cap
        (defer or skip), then send once per (run, step, visit)."""
        window, cap = self.defn.send_window, self.defn.frequency_cap
        send = SendInput(
            run_id=self.run_id,
            journey_key=self.inp.journey_key,
            journey_name=self.defn.name,
            version=self.inp.version,
            contact_id=self.inp.contact_id,
            step=name,
            visit=visit,
            template_key=step.template,
            category=step.category or self.defn.category,
        )
        undecided_looks = 0  # cap decisions that hinged on sends still in flight
        while window is not None or cap is not None:
            now = workflow.now()
            if window is not None:
                clock = await self.call(
                    "wait_context", WaitContextInput(self.inp.contact_id), WaitContext
                )
                opens = next_send_time(window, now, clock.timezone)
                if opens > now:
                    await self.pause(name, visit, opens, {"kind": "send_window"})
                    continue
            if cap is not None:
                counted = await self.call(
                    "send_cap",
                    SendCapInput(
                        contact_id=self.inp.contact_id,
                        now=now,
                        period=cap.period,
                        max_sends=cap.max_,
                        run_id=self.run_id,
                        step=name,
                        visit=visit,
                        send=send,
                    ),
                    SendCapResult,
                )
                if counted.next_allowed_at is not None:
                    outcome = "frequency_cap"
                    if counted.basis != CAP_BY_SENT and (
                        self.local_steps or workflow.patched(CAP_UNDECIDED_PATCH)
                    ):
                        if counted.basis == CAP_BY_IN_FLIGHT:
                            undecided_looks += 1
                            if undecided_looks < UNDECIDED_CAP_LOOKS:
                                # The sends that make the count may yet fail: look again.
                                await self.pause(
                                    name,
                                    visit,
                                    now + UNDECIDED_CAP_WAIT,
                                    {"kind": "frequency_cap", "undecided": True},
                                )
                                continue
                        # Decided by counting sends still in flight as sent (stuck too long,
                        # or still unsettled after the looks): the record says so.
                        outcome = CAP_ASSUMED_SENT
                    # Unpatched (replaying a run from before the patch): the recorded
                    # next_allowed_at is used as is, exactly as that code did.
                    if cap.action == "skip":
                        self.log(name, visit, "skipped", outcome)
                        return step.next
                    if outcome != "frequency_cap":
                        self.log(name, visit, "deferred", outcome)
                    until = max(counted.next_allowed_at, now + MIN_DEFER)
                    await self.pause(name, visit, until, {"kind": "frequency_cap"})
                    continue
            break
        result = await self.call(
            "send_email",
            send,
            SendResult,
            start_to_close=SEND_TIMEOUT,
            # As an activity task (runs from before LOCAL_STEPS_PATCH) send_email heartbeats
            # every second: a killed worker's send is retried (and settled without a second
            # mail) within seconds, not after SEND_TIMEOUT.
            heartbeat=timedelta(seconds=5),
            local=True,  # (runs with LOCAL_STEPS_PATCH; see Interpreter.call)
        )
        if result.send_id:
            self.state.sends[name] = result.send_id
        if result.status != "sent":
            self.log(name, visit, "skipped", f"send_{result.status}")
        return step.next

    # --- decisions and changes -----------------------------------------------------------
    async def branch(self, step: BranchStep) -> str | None:
        judged = await self.call(
            "judge",
            JudgeInput(
                contact_id=self.inp.contact_id,
                run_id=self.run_id,
                now=workflow.now(),
                conditions=[condition_json(case.if_) for case in step.cases],
                first_match=True,
            ),
            JudgeResult,
        )
        for case, matched in zip(step.cases, judged.conditions, strict=False):
            if matched:
                return case.next
        return step.default

    async def update_contact(self, name: str, step: UpdateContactStep, visit: int) -> str | None:
        await self.call(
            "update_contact",
            UpdateContactInput(
                contact_id=self.inp.contact_id,
                journey_key=self.inp.journey_key,
                run_id=self.run_id,
                step=name,
                visit=visit,
                set=dict(step.set_ or {}),
                unset=list(step.unset or []),
                add_segments=list(step.add_segments or []),
                remove_segments=list(step.remove_segments or []),
            ),
            UpdateContactResult,
        )
        return step.next

    async def start_journey(self, step: StartJourneyStep) -> str | None:
        await self.call(
            "start_journey",
            StartJourneyInput(
                journey_key=step.journey,
                contact_id=self.inp.contact_id,
                chain=[*self.inp.chain, self.inp.journey_key],
                continue_as_new_after=self.inp.continue_as_new_after,
            ),
            StartJourneyResult,
        )
        return step.next
