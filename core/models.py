"""Database tables (SQLModel). One table per thing the product keeps.

PHI lives only in `contact` (email, attributes), `event.properties` and the dev outbox.
Everything else refers to contacts by their opaque id, so erasure is one row's update.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
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


class SegmentMembership(SQLModel, table=True):
    __tablename__ = "segment_membership"
    segment_key: str = Field(foreign_key="segment.key", primary_key=True)
    contact_id: str = Field(foreign_key="contact.id", primary_key=True, index=True)
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


class TrackedLink(SQLModel, table=True):
    """Server-side destination of a tracking token; the token only carries `id`."""

    __tablename__ = "tracked_link"
    id: str = Field(primary_key=True)  # hex of the random link id in the token
    send_id: str = Field(index=True)
    kind: str  # open | click | trap | unsub
    name: str | None = None
    url: str | None = None


class TrackingEvent(SQLModel, table=True):
    __tablename__ = "tracking_event"
    __table_args__ = (Index("ix_tracking_send_at", "send_id", "at"),)
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


class Event(SQLModel, table=True):
    """External events (EHR, CRM, forms) and internal ones (segment entry, bounces)."""

    __tablename__ = "event"
    __table_args__ = (Index("ix_event_contact_name", "contact_id", "name", "occurred_at"),)
    id: str = Field(default_factory=lambda: new_id("ev"), primary_key=True)
    contact_id: str
    name: str
    properties: dict[str, Any] = _json()
    idempotency_key: str | None = Field(default=None, unique=True)
    occurred_at: datetime = _ts()
    received_at: datetime = _ts()


class Setting(SQLModel, table=True):
    __tablename__ = "setting"
    key: str = Field(primary_key=True)
    value: Any = Field(sa_column=Column(JSONB, nullable=False))
    updated_at: datetime = _ts()


class AuditLog(SQLModel, table=True):
    """Append-only: who read or changed what (field names, never values)."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    at: datetime = _ts(index=True)
    actor: str  # api key id, "system" or "cli"
    role: str
    action: str  # read | create | update | delete | decode | export ...
    resource: str  # e.g. "contact/c_..."
    fields: list[str] = _json(list)
    request_id: str | None = None


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
