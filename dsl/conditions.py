"""Evaluation of CONDITIONs and event property filters against what is known of a contact.

The caller supplies a context (attributes, segments, events, engagement of this run) and
the current time, so evaluation is pure and replay-safe inside a workflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from dsl.compare import apply_op
from dsl.durations import parse_duration
from dsl.model import (
    AllCondition,
    AnyCondition,
    AttrCondition,
    ConditionUnion,
    EngagedCondition,
    EngagementCondition,
    EventCondition,
    JourneyCondition,
    NotCondition,
    SegmentCondition,
    WhereOp,
)


class ConditionContext(Protocol):
    @property
    def attributes(self) -> Mapping[str, Any]: ...

    @property
    def segments(self) -> AbstractSet[str]: ...

    @property
    def now(self) -> datetime: ...

    def has_event(self, name: str, since: datetime | None) -> bool:
        """True if the contact had event name at or after since (ever, if since is None)."""
        ...

    def engaged(self, send_step: str, event: str) -> bool:
        """True if a human open/click happened on the message sent by send_step in this run."""
        ...

    def had_engagement(
        self,
        kind: str,
        since: datetime | None,
        journey: str | None = None,
        step: str | None = None,
        link: str | None = None,
    ) -> bool:
        """True if the contact made a human open/click (kind) at or after since (ever, if
        None) on any message, or on the sends of journey (and its send step), on link."""
        ...

    def in_journey(self, journey: str) -> bool:
        """True if the contact has a running run of journey."""
        ...


@dataclass(frozen=True)
class EngagementFact:
    """One human open/click: on the message journey/step sent, on link (clicks)."""

    kind: str
    at: datetime
    journey: str | None = None
    step: str | None = None
    link: str | None = None


@dataclass(frozen=True)
class SnapshotContext:
    """A ConditionContext over plain data: event name -> occurrence times, and the
    (send_step, "open"|"click") pairs engaged with in this run."""

    attributes: Mapping[str, Any]
    segments: AbstractSet[str]
    now: datetime
    events: Mapping[str, Sequence[datetime]] = field(default_factory=dict)
    engagements: AbstractSet[tuple[str, str]] = field(default_factory=frozenset)
    human_engagements: Sequence[EngagementFact] = ()
    journeys: AbstractSet[str] = field(default_factory=frozenset)  # running runs

    def has_event(self, name: str, since: datetime | None) -> bool:
        times = self.events.get(name, ())
        return bool(times) if since is None else any(at >= since for at in times)

    def engaged(self, send_step: str, event: str) -> bool:
        return (send_step, event) in self.engagements

    def had_engagement(
        self,
        kind: str,
        since: datetime | None,
        journey: str | None = None,
        step: str | None = None,
        link: str | None = None,
    ) -> bool:
        return any(
            fact.kind == kind
            and (since is None or fact.at >= since)
            and (journey is None or fact.journey == journey)
            and (step is None or fact.step == step)
            and (link is None or fact.link == link)
            for fact in self.human_engagements
        )

    def in_journey(self, journey: str) -> bool:
        return journey in self.journeys


def evaluate(condition: ConditionUnion, ctx: ConditionContext) -> bool:
    if isinstance(condition, AttrCondition):
        value = ctx.attributes.get(condition.attr)
        # A null attribute is treated as absent.
        return apply_op(condition.op, value is not None, value, condition.value)
    if isinstance(condition, SegmentCondition):
        return condition.segment in ctx.segments
    if isinstance(condition, EventCondition):
        since = None
        if condition.within is not None:
            since = (-parse_duration(condition.within)).add_to(ctx.now)
        return ctx.has_event(condition.event, since)
    if isinstance(condition, EngagedCondition):
        return ctx.engaged(condition.engaged, condition.event)
    if isinstance(condition, EngagementCondition):
        since = None
        if condition.within is not None:
            since = (-parse_duration(condition.within)).add_to(ctx.now)
        return ctx.had_engagement(
            condition.engagement, since, condition.journey, condition.step, condition.link
        )
    if isinstance(condition, JourneyCondition):
        return ctx.in_journey(condition.journey) is condition.in_
    if isinstance(condition, AllCondition):
        return all(evaluate(part, ctx) for part in condition.all_)
    if isinstance(condition, AnyCondition):
        return any(evaluate(part, ctx) for part in condition.any_)
    if isinstance(condition, NotCondition):
        return not evaluate(condition.not_, ctx)
    raise TypeError(f"not a condition: {type(condition).__name__}")


def matches_where(where: Mapping[str, Any] | None, properties: Mapping[str, Any]) -> bool:
    """True if every filtered property matches: a plain value means equality, a WhereOp
    (or a {"op", "value"} dict) applies its op. No filter matches everything."""
    for name, test in (where or {}).items():
        value = properties.get(name)
        present = value is not None
        if isinstance(test, WhereOp):
            op, expected = test.op, test.value
        elif isinstance(test, dict) and "op" in test:
            op, expected = test["op"], test.get("value")
        else:
            op, expected = "eq", test
        if not apply_op(op, present, value, expected):
            return False
    return True
