"""Read-only lookups the interpreter makes: the contact's clock, CONDITION and property
filter judgements, events since a step began, human engagement, the frequency cap.

Results carry decisions, times and ids; contact data (PHI) stays in the database except a
date attribute normalised for an until_attribute wait.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, or_, text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.sending import cap_lock_key, insert_reservation
from core.config import Settings
from core.db import Database
from core.models import Contact, Event, SegmentMembership, Send, TrackingEvent
from dsl.conditions import SnapshotContext, evaluate, matches_where
from dsl.dates import parse_date_or_datetime
from dsl.durations import parse_duration
from dsl.model import (
    AllCondition,
    AnyCondition,
    Condition,
    ConditionUnion,
    EngagedCondition,
    EventCondition,
    NotCondition,
    SegmentCondition,
)
from workflows.types import (
    CAP_BY_IN_FLIGHT,
    CAP_BY_SENT,
    CAP_BY_STALE,
    EngagementQuery,
    FindEventInput,
    JudgeInput,
    JudgeResult,
    SendCapInput,
    SendCapResult,
    WaitContext,
    WaitContextInput,
)

# Sends in these categories are not marketing and do not count toward a frequency cap.
NON_MARKETING_CATEGORIES = ("transactional",)
COUNTED_SEND_STATUSES = ("sent", "uncertain")  # uncertain: SMTP most likely accepted it
IN_FLIGHT_STATUSES = ("reserved", "sending")  # counted too: they are about to be sent
CAP_SETTLE_WAIT = 10.0  # seconds a decision that hinges on in-flight sends waits for them
CAP_SETTLE_POLL = 0.2
IN_FLIGHT_STALE = timedelta(minutes=5)
FIND_EVENT_SCAN = 200  # candidate events checked against a where filter


@cache
def _condition_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(Condition)


def parse_conditions(raw: list[dict[str, Any]]) -> list[ConditionUnion]:
    try:
        return [_condition_adapter().validate_python(c) for c in raw]
    except ValidationError:
        raise ApplicationError(
            "condition does not parse", type="DefinitionError", non_retryable=True
        ) from None


def _walk(conditions: list[ConditionUnion]) -> list[ConditionUnion]:
    out: list[ConditionUnion] = []
    stack = list(conditions)
    while stack:
        c = stack.pop()
        out.append(c)
        if isinstance(c, AllCondition):
            stack.extend(c.all_)
        elif isinstance(c, AnyCondition):
            stack.extend(c.any_)
        elif isinstance(c, NotCondition):
            stack.append(c.not_)
    return out


async def condition_context(
    s: AsyncSession, contact_id: str, run_id: str, now: datetime, conditions: list[ConditionUnion]
) -> SnapshotContext:
    """Everything the conditions need, in at most four queries (only those needed)."""
    nodes = _walk(conditions)
    contact = await s.get(Contact, contact_id)
    attributes = contact.attributes if contact and contact.deleted_at is None else {}
    segments: set[str] = set()
    if any(isinstance(n, SegmentCondition) for n in nodes):
        rows = await s.exec(
            select(SegmentMembership.segment_key).where(
                SegmentMembership.contact_id == contact_id
            )
        )
        segments = set(rows.all())
    events: dict[str, list[datetime]] = {}
    names = {n.event for n in nodes if isinstance(n, EventCondition)}
    if names:
        # The newest occurrence decides "had it within D" as well as "ever had it".
        rows2 = await s.exec(
            select(Event.name, func.max(Event.occurred_at))
            .where(Event.contact_id == contact_id, col(Event.name).in_(names))
            .group_by(Event.name)
        )
        events = {name: [at] for name, at in rows2.all()}
    engagements: set[tuple[str, str]] = set()
    if any(isinstance(n, EngagedCondition) for n in nodes):
        rows3 = await s.exec(
            select(Send.step, TrackingEvent.kind)
            .join(TrackingEvent, col(TrackingEvent.send_id) == col(Send.id))
            .where(Send.run_id == run_id, TrackingEvent.verdict == "human")
            .distinct()
        )
        for step, kind in rows3.all():
            engagements.add((step, kind))
            if kind == "click":  # a human click proves the message was opened
                engagements.add((step, "open"))
    return SnapshotContext(
        attributes=attributes or {},
        segments=segments,
        now=now,
        events=events,
        engagements=engagements,
    )


def normalised_date(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_date_or_datetime(value).isoformat()
    except ValueError:
        return None


class LookupActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings  # needed by send_cap to reserve a send (message id domain)

    @activity.defn(name="wait_context")
    async def wait_context(self, inp: WaitContextInput) -> WaitContext:
        async with self.db.session() as s:
            contact = await s.get(Contact, inp.contact_id)
        if contact is None or contact.deleted_at is not None:
            return WaitContext(timezone=None)
        value = None
        if inp.attribute is not None:
            value = normalised_date((contact.attributes or {}).get(inp.attribute))
        return WaitContext(timezone=contact.timezone, attribute_value=value)

    @activity.defn(name="judge")
    async def judge(self, inp: JudgeInput) -> JudgeResult:
        conditions = parse_conditions(inp.conditions)
        result = JudgeResult()
        async with self.db.session() as s:
            if inp.where:
                props: dict[str, Any] | None = None
                if inp.event_id is not None:
                    ev = await s.get(Event, inp.event_id)
                    if ev is not None and ev.contact_id == inp.contact_id:
                        props = ev.properties or {}
                result.where = [props is not None and matches_where(w, props) for w in inp.where]
            if conditions:
                ctx = await condition_context(s, inp.contact_id, inp.run_id, inp.now, conditions)
                for condition in conditions:
                    matched = evaluate(condition, ctx)
                    result.conditions.append(matched)
                    if matched and inp.first_match:
                        break
                result.conditions += [False] * (len(conditions) - len(result.conditions))
        return result

    @activity.defn(name="find_event")
    async def find_event(self, inp: FindEventInput) -> str:
        """Id of an event of this name that occurred at or after since and matches where
        (the oldest one), or "" when there is none."""
        async with self.db.session() as s:
            q = (
                select(Event)
                .where(
                    Event.contact_id == inp.contact_id,
                    Event.name == inp.name,
                    col(Event.occurred_at) >= inp.since,
                )
                .order_by(col(Event.occurred_at))
                .limit(FIND_EVENT_SCAN)
            )
            if inp.exclude_ids:
                q = q.where(col(Event.id).notin_(inp.exclude_ids))
            for ev in (await s.exec(q)).all():
                if matches_where(inp.where, ev.properties or {}):
                    return ev.id
        return ""

    @activity.defn(name="engagement_seen")
    async def engagement_seen(self, inp: EngagementQuery) -> bool:
        kinds = ["open", "click"] if inp.kind == "open" else [inp.kind]
        q = select(TrackingEvent.id).where(
            TrackingEvent.send_id == inp.send_id,
            TrackingEvent.verdict == "human",
            col(TrackingEvent.kind).in_(kinds),
        )
        if inp.link is not None:
            q = q.where(TrackingEvent.link == inp.link)
        async with self.db.session() as s:
            return (await s.exec(q.limit(1))).first() is not None

    @activity.defn(name="send_cap")
    async def send_cap(self, inp: SendCapInput) -> SendCapResult:
        """Marketing sends to the contact across all journeys in (now - period, now]; when
        the cap is reached, the moment enough of them leave the window.

        Race-free per contact: under a transaction-scoped advisory lock on the contact, the
        count includes sends in flight (reserved, sending) and, when the cap allows this
        send, its ledger row is reserved before the lock is released, so two runs deciding
        at the same instant cannot both pass. When only in-flight sends would reach the
        cap, it waits (briefly) for them to settle: one that ends blocked or failed does
        not count; if they have not settled by then, the result says so (basis
        CAP_BY_IN_FLIGHT) and next_allowed_at is when the cap frees should they go out."""
        period = parse_duration(inp.period)
        start = (-period).add_to(inp.now)
        at = func.coalesce(Send.sent_at, Send.created_at)
        q = (
            select(at, Send.status)
            .where(
                Send.contact_id == inp.contact_id,
                col(Send.status).in_(COUNTED_SEND_STATUSES + IN_FLIGHT_STATUSES),
                or_(
                    col(Send.category).is_(None),
                    col(Send.category).notin_(NON_MARKETING_CATEGORIES),
                ),
                at > start,
                ~(
                    (col(Send.run_id) == inp.run_id)
                    & (col(Send.step) == inp.step)
                    & (col(Send.visit) == inp.visit)
                ),
            )
            .order_by(at)
        )
        settle_by = time.monotonic() + CAP_SETTLE_WAIT
        while True:
            async with self.db.session() as s:
                await s.exec(  # type: ignore[call-overload]
                    text("SELECT pg_advisory_xact_lock(:k)").bindparams(
                        k=cap_lock_key(inp.contact_id)
                    )
                )
                rows = list((await s.exec(q)).all())
                # In flight for minutes (e.g. its run was terminated before sending): counted
                # as sent rather than waited for. On the decision's clock, like the period.
                stale = inp.now - IN_FLIGHT_STALE
                settled = sum(
                    1 for at_, status in rows if status in COUNTED_SEND_STATUSES or at_ < stale
                )
                if len(rows) < inp.max_sends:
                    if inp.send is not None:
                        await insert_reservation(s, inp.send, self.settings.mail_domain)
                    await s.commit()  # releases the lock with the reservation in place
                    return SendCapResult(count=len(rows), next_allowed_at=None)
            if settled >= inp.max_sends or time.monotonic() >= settle_by:
                break
            activity.heartbeat()
            await asyncio.sleep(CAP_SETTLE_POLL)
        oldest_to_leave = rows[len(rows) - inp.max_sends][0]
        next_allowed = period.add_to(oldest_to_leave)
        counted_sent = sum(1 for _, status in rows if status in COUNTED_SEND_STATUSES)
        if settled < inp.max_sends:
            # Still undecided: sends in flight that may yet fail make the count. The
            # interpreter looks again after a short durable wait rather than deciding.
            basis = CAP_BY_IN_FLIGHT
        elif counted_sent < inp.max_sends:
            basis = CAP_BY_STALE  # decided only by assuming long-stuck sends went out
        else:
            basis = CAP_BY_SENT
        return SendCapResult(count=len(rows), next_allowed_at=next_allowed, basis=basis)
