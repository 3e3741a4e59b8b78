"""Dataclasses that cross the workflow/activity boundary. Ids only, never PHI.

No `from __future__ import annotations` here: Temporal's JSON converter calls
typing.get_type_hints on a dataclass for every payload it decodes, and evaluating string
annotations made that 4-6x slower (~0.6 ms of worker CPU per journey run). A class used in
an annotation must therefore be defined above its use.
"""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Same as Settings.continue_as_new_after_events; used when the input does not say.
DEFAULT_CONTINUE_AS_NEW_AFTER = 2000


@dataclass
class StepRecord:
    seq: int
    step: str
    visit: int
    action: str  # entered | left | exited | skipped | deferred (cap decided on in-flight sends)
    at: datetime
    outcome: str | None = None


@dataclass
class EventSignal:
    """An external or internal event reaching a run (signal `event`). Properties stay in the DB."""

    event_id: str
    name: str
    occurred_at: datetime


@dataclass
class EngagementSignal:
    """A human open or click on a message this run sent (signal `engagement`)."""

    tracking_event_id: str
    send_id: str
    step: str  # the send_email step that sent the message
    kind: str  # open | click
    link: str | None
    at: datetime


@dataclass
class PendingWait:
    """A wait in progress: carried across continue-as-new so the new run re-enters the
    same wait with its original deadline instead of starting it over."""

    step: str
    visit: int
    deadline: datetime | None


@dataclass
class RunState:
    """Everything the interpreter needs to resume; carried across continue-as-new."""

    step: str | None
    visits: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    status: str = "running"
    exit_reason: str | None = None
    entered_at: datetime | None = None  # when the current step was entered
    wait: PendingWait | None = None
    # send_email step -> send id of its latest visit (wait_for_engagement, engaged).
    sends: dict[str, str] = field(default_factory=dict)
    engagements: list[EngagementSignal] = field(default_factory=list)
    inbox: list[EventSignal] = field(default_factory=list)  # received, not yet handled
    seen_events: list[str] = field(default_factory=list)  # recent ids: signals are at-least-once
    exit_requested: str | None = None
    goal_reached_at: datetime | None = None


@dataclass
class JourneyInput:
    journey_key: str
    version: int
    contact_id: str
    definition: dict[str, Any]
    # Journeys this contact came through via start_journey (cross-journey loop guard).
    chain: list[str] = field(default_factory=list)
    run_id: str | None = None  # first run id of the chain; set on continue-as-new
    state: RunState | None = None
    trigger_event_id: str | None = None
    # History length after which the run continues as new (None: the default above).
    continue_as_new_after: int | None = None


@dataclass
class RecordInput:
    run_id: str
    workflow_id: str
    journey_key: str
    version: int
    contact_id: str
    records: list[StepRecord]
    status: str
    step: str | None
    visits: dict[str, int]
    exit_reason: str | None = None
    waiting_for: dict[str, Any] | None = None
    goal_reached_at: datetime | None = None  # a conversion; never cleared once set
    # The event that started the run (JourneyInput.trigger_event_id); the row keeps the first.
    trigger_event_id: str | None = None


@dataclass
class SendInput:
    run_id: str
    journey_key: str
    journey_name: str
    version: int
    contact_id: str
    step: str
    visit: int
    template_key: str
    category: str | None


@dataclass
class SendResult:
    status: str  # sent | blocked | failed | uncertain
    send_id: str | None = None
    detail: str | None = None  # block reason or SMTP code; never content


# --- lookups the interpreter asks the database (activities/lookups.py) -----------------


@dataclass
class WaitContextInput:
    contact_id: str
    attribute: str | None = None  # a date attribute for until_attribute waits


@dataclass
class WaitContext:
    timezone: str | None  # IANA name; None when the contact is gone (UTC is used)
    # The attribute normalised to an ISO date/datetime; None when missing or not a date.
    attribute_value: str | None = None


@dataclass
class JudgeInput:
    """Evaluate CONDITIONs (JSON as in the definition) and/or property filters on one event."""

    contact_id: str
    run_id: str
    now: datetime
    conditions: list[dict[str, Any]] = field(default_factory=list)
    first_match: bool = False  # branch: stop at the first true condition
    event_id: str | None = None
    where: list[dict[str, Any]] = field(default_factory=list)  # filters on event_id's properties


@dataclass
class JudgeResult:
    conditions: list[bool] = field(default_factory=list)
    where: list[bool] = field(default_factory=list)


@dataclass
class FindEventInput:
    contact_id: str
    name: str
    since: datetime
    where: dict[str, Any] | None = None
    exclude_ids: list[str] = field(default_factory=list)


@dataclass
class EngagementQuery:
    send_id: str
    kind: str  # open | click (a human click also proves an open)
    link: str | None = None


@dataclass
class SendCapInput:
    contact_id: str
    now: datetime
    period: str  # ISO 8601 duration
    max_sends: int
    run_id: str  # the send being decided is not counted
    step: str
    visit: int
    # The send being decided: when the cap allows it, its ledger row is reserved in the
    # same transaction as the count, so a concurrent decision for the contact counts it.
    send: SendInput | None = None


# SendCapResult.basis: what made a capped send capped.
CAP_BY_SENT = "sent"  # enough sends went out (sent/uncertain) in the period: decided
# Only by counting sends still in flight after the settle wait: undecided, they may yet fail.
CAP_BY_IN_FLIGHT = "in_flight"
# Only by counting sends in flight for longer than IN_FLIGHT_STALE: decided, assumed sent.
CAP_BY_STALE = "stale"


@dataclass
class SendCapResult:
    count: int
    # None: a send is allowed now. Otherwise when the cap frees, counting the sends still in
    # flight as sent (results recorded before `basis` existed said "now" when undecided).
    next_allowed_at: datetime | None
    basis: str = CAP_BY_SENT  # CAP_BY_*; recorded results without it were decided ("sent")


# --- changes the interpreter makes (activities/contact_updates.py, activities/chaining.py) --


@dataclass
class UpdateContactInput:
    contact_id: str
    journey_key: str
    run_id: str
    step: str
    visit: int
    set: dict[str, Any] = field(default_factory=dict)
    unset: list[str] = field(default_factory=list)
    add_segments: list[str] = field(default_factory=list)
    remove_segments: list[str] = field(default_factory=list)


@dataclass
class UpdateContactResult:
    status: str  # updated | unchanged | no_contact
    segments_added: list[str] = field(default_factory=list)
    segments_removed: list[str] = field(default_factory=list)


@dataclass
class StartJourneyInput:
    journey_key: str  # the journey to start
    contact_id: str
    chain: list[str]  # journeys the contact came through, this one last
    continue_as_new_after: int | None = None


@dataclass
class StartJourneyResult:
    status: str  # started | already_running | not_active | not_published | no_contact
    run_id: str | None = None
