"""Dataclasses that cross the workflow/activity boundary. Ids only, never PHI."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class StepRecord:
    seq: int
    step: str
    visit: int
    action: str  # entered | left | exited
    at: datetime
    outcome: str | None = None


@dataclass
class RunState:
    """Everything the interpreter needs to resume; carried across continue-as-new."""

    step: str | None
    visits: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    status: str = "running"
    exit_reason: str | None = None


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
