"""Database tables (SQLModel). One table per thing the product keeps.

PHI lives only in `contact` (email, attributes), `event.properties` and the dev outbox.
Everything else refers to contacts by their opaque id, so erasure is one row's update.
"""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Opaque, random, PHI-free identifier (safe in URLs, workflow ids and logs)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def _ts(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kw)


def _json(default: Any = dict) -> Any:
    return Field(default_factory=default, sa_column=Column(JSONB, nullable=False))


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"
    id: str = Field(default_factory=lambda: new_id("key"), primary_key=True)
    prefix: str = Field(index=True, unique=True)
    key_hash: str
    role: str
    name: str = ""
    created_at: datetime = _ts()
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Contact(SQLModel, table=True):
    __tablename__ = "contact"
    # Rule segments and previews filter on attributes: containment (@>) and key
    # existence (?) use this index (default jsonb_ops supports both).
    __table_args__ = (Index("ix_contact_attributes", "attributes", postgresql_using="gin"),)
    id: str = Field(default_factory=lambda: new_id("c"), primary_key=True)
    external_id: str | None = Field(default=None, unique=True, index=True)
    email: str | None = None
    email_hash: str | None = Field(default=None, index=True)
    timezone: str = "UTC"
    attributes: dict[str, Any] = _json()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    deleted_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Consent(SQLModel, table=True):
    """Append-only consent history; the newest row per (contact, category) is in force."""

    __tablename__ = "consent"
    __table_args__ = (Index("ix_consent_contact_cat", "contact_id", "category", "at"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    contact_id: str = Field(foreign_key="contact.id")
    category: str
    granted: bool
    source: str
    at: datetime = _ts()
    recorded_at: datetime = _ts()


class Suppression(SQLModel, table=True):
    """Keyed by a keyed hash of the address so it outlives the contact's erasure."""

    __tablename__ = "suppression"
    __table_args__ = (UniqueConstraint("email_hash", "category", name="uq_suppression"),)
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    email_hash: str = Field(index=True)
    category: str = "*"  # "*" = every category
    reason: str  # unsubscribe | hard_bounce | complaint | manual
    source: str = ""
    created_at: datetime = _ts()


class Segment(SQLModel, table=True):
    __tablename__ = "segment"
    key: str = Field(primary_key=True)
    name: str = ""
    kind: str = "static"  # static | rule
    rule: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    description: str = ""
    # What a rule reads ("attr:NAME", "event:NAME", "engagement", "journey:KEY",
    # "segment:KEY"): a change re-evaluates only the segments that read it.
    deps: list[str] = _json(list)


class SegmentMembership(SQLModel, table=True):
    # No foreign keys: a rule segment's build inserts ~100k rows in one INSERT ... SELECT
    # from contact, and per-row RI triggers were 60% of its time. Rows are only written
    # from existing contact/segment rows, and deleting a segment deletes its rows.
    __tablename__ = "segment_membership"
    segment_key: str = Field(primary_key=True)
    contact_id: str = Field(primary_key=True, index=True)
    entered_at: datetime = _ts()
    # For time-based rules: when this membership must be re-checked (ages out).
    recheck_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True), index=True)


class Template(SQLModel, table=True):
    __tablename__ = "template"
    key: str = Field(primary_key=True)
    name: str = ""
    subject: str
    html: str
    text: str | None = None
    category: str | None = None
    track_opens: bool = True
    track_clicks: bool = True
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Journey(SQLModel, table=True):
    __tablename__ = "journey"
    key: str = Field(primary_key=True)
    name: str = ""
    status: str = "draft"  # draft | active | paused | archived
    draft: dict[str, Any] = _json()
    latest_version: int | None = None
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class JourneyVersion(SQLModel, table=True):
    __tablename__ = "journey_version"
    journey_key: str = Field(foreign_key="journey.key", primary_key=True)
    version: int = Field(primary_key=True)
    definition: dict[str, Any] = _json()
    published_at: datetime = _ts()


class Run(SQLModel, table=True):
    """One row per run of a contact through a journey (a workflow execution chain)."""

    __tablename__ = "run"
    __table_args__ = (Index("ix_run_journey_contact", "journey_key", "contact_id", "started_at"),)
    id: str = Field(primary_key=True)  # the first Temporal run id of the chain
    journey_key: str = Field(index=True)
    version: int
    contact_id: str = Field(index=True)
    workflow_id: str
    status: str = "running"  # running | completed | exited
    step: str | None = None
    exit_reason: str | None = None
    waiting_for: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    visits: dict[str, int] = _json()
    goal_reached_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    started_at: datetime = _ts()
    ended_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # The event whose delivery started this run (None: enrolment, segment entry, or not yet
    # known); a later try of that delivery must not start it again (services.dispatch).
    trigger_event_id: str | None = None


class StepLog(SQLModel, table=True):
    """Every step a run takes: entered/left with outcome, for reports and the run history."""

    __tablename__ = "step_log"
    __table_args__ = (
        UniqueConstraint("run_id", "seq", name="uq_step_log_seq"),
        Index("ix_step_log_journey", "journey_key", "version", "step"),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    run_id: str = Field(index=True)
    seq: int  # position in the run's trail; makes recording idempotent on retries
    journey_key: str
    version: int
    contact_id: str
    step: str
    visit: int
    action: str  # entered | left | exited
    outcome: str | None = None  # next step, or branch/exit detail
    at: datetime = Field(sa_type=DateTime(timezone=True))


class Send(SQLModel, table=True):
    """The send ledger: one row per (run, step, visit), reserved before SMTP."""

    __tablename__ = "send"
    id: str = Field(default_factory=lambda: new_id("s"), primary_key=True)
    send_key: str = Field(unique=True)  # "{run_id}/{step}/{visit}"
    run_id: str = Field(index=True)
    journey_key: str = Field(index=True)
    version: int
    step: str
    visit: int
    contact_id: str = Field(index=True)
    template_key: str
    category: str | None = None
    message_id: str = Field(unique=True)
    status: str = "reserved"  # reserved | sending | sent | blocked | failed | uncertain
    detail: str | None = None  # block reason / SMTP code (never content)
    delivery: str | None = None  # delivered | bounced | complained
    delivery_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Keyed hash of the address the message went to: reports and unsubscribes find the
    # address to suppress even after the contact is erased.
    email_hash: str | None = Field(default=None, index=True)
    attempts: int = 0
    created_at: datetime = _ts()
    sent_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Set when the recipient unsubscribed through this message (reports count it per step).
    unsubscribed_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class TrackedLink(SQLModel, table=True):
    """Server-side destination of a tracking token; the token only carries `id`."""

    __tablename__ = "tracked_link"
    id: str = Field(primary_key=True)  # hex of the random link id in the token
    send_id: str = Field(index=True)
    kind: str  # open | click | trap | unsub
    name: str | None = None
    url: str | None = None
    # Set when the contact was erased: url is then NULL (a designer may have put PHI in
    # it) and a click gets a "gone" page instead of a redirect.
    erased_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class TrackingEvent(SQLModel, table=True):
    """One open/click request as recorded; `verdict IS NULL` rows are the judge's queue."""

    __tablename__ = "tracking_event"
    __table_args__ = (
        # A message's events (judge, erasure, reports). On send_id alone: its entries
        # deduplicate (one key per page for a message's events), so the index is a
        # fraction of (send_id, at)'s size and each hit's insert into it costs
        # PostgreSQL ~13% less; a message has few events, sorted by `at` when read.
        Index("ix_tracking_send", "send_id"),
        # The judge's queue and the signaller's queue stay small, so partial indexes keep
        # both lookups cheap however many judged events accumulate. The queue's is keyed on
        # `at` so that every new hit lands at its right edge (keyed on send_id, each row
        # went to a random leaf page: ~3.5 us of PostgreSQL CPU a hit); the judge finds a
        # message's queued rows through ix_tracking_send.
        Index("ix_tracking_pending", "at", postgresql_where=sql_text("verdict IS NULL")),
        Index(
            "ix_tracking_unsignalled",
            "at",
            postgresql_where=sql_text("verdict = 'human' AND signal_result IS NULL"),
        ),
    )
    id: str = Field(default_factory=lambda: new_id("te"), primary_key=True)
    send_id: str
    link_id: str | None = None
    kind: str  # open | click
    link: str | None = None
    at: datetime = _ts()
    ip: str | None = None
    user_agent: str | None = None
    method: str = "GET"
    headers: dict[str, Any] = _json()
    verdict: str | None = None  # human | automated | unknown (None until judged)
    reason: str | None = None
    confidence: float | None = None
    revised_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    signalled: bool = False
    # The verdict first given, kept when a later event (trap hit, sweep) revises it.
    first_verdict: str | None = None
    first_reason: str | None = None
    judged_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # What became of the engagement signal of a human event: sent | run_ended | no_run |
    # refused:<reason> (Temporal refused it for good).
    signal_result: str | None = None
    signalled_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Event(SQLModel, table=True):
    """External events (EHR, CRM, forms) and internal ones (segment entry, bounces)."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_contact_name", "contact_id", "name", "occurred_at"),
        # The redelivery sweep's queue (services.event_redelivery) stays small.
        Index(
            "ix_event_undispatched",
            "received_at",
            postgresql_where=sql_text("dispatched_at IS NULL"),
        ),
    )
    id: str = Field(default_factory=lambda: new_id("ev"), primary_key=True)
    contact_id: str
    name: str
    properties: dict[str, Any] = _json()
    idempotency_key: str | None = Field(default=None, unique=True)
    occurred_at: datetime = _ts()
    received_at: datetime = _ts()
    # Set once dispatch reached journeys and runs; a repeat of the idempotency_key gets
    # dispatch_result back instead of reaching them twice.
    dispatched_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    dispatch_result: dict[str, Any] | None = Field(
        default=None, sa_column=Column(JSONB, nullable=True)
    )
    # Undelivered (Temporal unreachable): how often delivery was tried and when the
    # redelivery sweep tries next (NULL: received_at plus a short grace).
    dispatch_attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    dispatch_due_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class Setting(SQLModel, table=True):
    __tablename__ = "setting"
    key: str = Field(primary_key=True)
    value: Any = Field(sa_column=Column(JSONB, nullable=False))
    updated_at: datetime = _ts()


class AuditLog(SQLModel, table=True):
    """Append-only: who read or changed what (field names, never values)."""

    __tablename__ = "audit_log"
    __table_args__ = (
        # Filters of GET /v1/audit: by actor, and by resource prefix ("contact/c_...").
        Index("ix_audit_log_actor", "actor", "id"),
        Index("ix_audit_log_resource", "resource", postgresql_ops={"resource": "text_pattern_ops"}),
    )
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    at: datetime = _ts(index=True)
    actor: str  # api key id, "system" or "cli"
    role: str
    action: str  # read | create | update | delete | decode | export ...
    resource: str  # e.g. "contact/c_..."
    fields: list[str] = _json(list)
    request_id: str | None = None
    # Non-PHI facts about the access, e.g. {"namespace": "default", "payloads": 3}.
    details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))


class OutboxMessage(SQLModel, table=True):
    """Dev SMTP sink: every message received, kept for /dev/outbox."""

    __tablename__ = "outbox_message"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    mail_from: str
    rcpt_to: list[str] = _json(list)
    subject: str = ""
    message_id: str | None = Field(default=None, sa_column=Column(String, index=True, nullable=True))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    received_at: datetime = _ts()


# --- reports: rollups kept current as data arrives (services/report_rollup.py) ---------


def _report_key(**kw: Any) -> Any:
    return Field(primary_key=True, **kw)


class ReportCounter(SQLModel, table=True):
    """Additive counters: reports sum these instead of scanning raw rows.

    `step` is "" for run-level metrics, `template_key` "" outside sends, `verdict` "" where
    no verdict applies (or a verdict class for unique counts), `dimension` the breakdown
    (reason, link, next step, exit reason) or "". `shard` spreads hot rows across writers.
    """

    __tablename__ = "report_counter"
    __table_args__ = (Index("ix_report_counter_day", "day", "journey_key"),)
    journey_key: str = _report_key()
    version: int = _report_key()
    step: str = _report_key()
    template_key: str = _report_key()
    metric: str = _report_key()
    verdict: str = _report_key()
    dimension: str = _report_key()
    day: date = _report_key()
    shard: int = _report_key(sa_type=SmallInteger)
    count: int = Field(default=0, sa_type=BigInteger)


class ReportStepSeen(SQLModel, table=True):
    """step_log rows already counted: makes counting idempotent when record_steps retries."""

    __tablename__ = "report_step_seen"
    step_log_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))


class ReportRunState(SQLModel, table=True):
    """What a run currently contributes to the counters (started, exit reason, goal)."""

    __tablename__ = "report_run_state"
    run_id: str = Field(primary_key=True)
    journey_key: str | None = None
    version: int | None = None
    started_day: date | None = None
    exit_reason: str | None = None
    ended_day: date | None = None
    goal_day: date | None = None


class ReportSendState(SQLModel, table=True):
    """What a send currently contributes; also the per-send lock for engagement rollups."""

    __tablename__ = "report_send_state"
    __table_args__ = (Index("ix_report_send_state_step", "journey_key", "step", "send_id"),)
    send_id: str = Field(primary_key=True)
    journey_key: str | None = None
    version: int | None = None
    step: str | None = None
    template_key: str | None = None
    status: str | None = None
    detail: str | None = None
    delivery: str | None = None
    day: date | None = None
    unsub_day: date | None = None


class ReportTrackingState(SQLModel, table=True):
    """The verdict each open/click was counted under, so a revision moves exactly that count."""

    __tablename__ = "report_tracking_state"
    event_id: str = Field(primary_key=True)
    send_id: str = Field(index=True)
    journey_key: str
    version: int
    step: str
    template_key: str
    kind: str
    verdict: str
    reason: str | None = None
    link: str | None = None
    day: date


class ReportUnique(SQLModel, table=True):
    """First engagement per (send, kind, verdict class, link): exact unique opens and clicks.

    vclass is a verdict, "all" or "non_automated"; link is "" for the per-send row.
    """

    __tablename__ = "report_unique"
    __table_args__ = (
        Index("ix_report_unique_step", "journey_key", "step", "kind", "vclass", "link", "send_id"),
    )
    send_id: str = _report_key()
    kind: str = _report_key()
    vclass: str = _report_key()
    link: str = _report_key()
    journey_key: str
    version: int
    step: str
    template_key: str
    day: date
class AttributeDef(SQLModel, table=True):
    """The type of a contact attribute: declared through the API or inferred from the first
    value seen. Later values are coerced to it or rejected (string number boolean date list)."""

    __tablename__ = "attribute_def"
    name: str = Field(primary_key=True)
    type: str
    source: str = "inferred"  # inferred | declared
    description: str = ""
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class SegmentRecheck(SQLModel, table=True):
    """When a NON-member's result of a time-based rule can flip by time alone (e.g. "has not
    opened within 90 days" once the last open ages out). Members keep theirs in
    segment_membership.recheck_at."""

    __tablename__ = "segment_recheck"
    segment_key: str = Field(primary_key=True)  # no foreign keys: see SegmentMembership
    contact_id: str = Field(primary_key=True)
    due_at: datetime = Field(sa_type=DateTime(timezone=True), index=True)
