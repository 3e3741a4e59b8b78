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
    EventCondition,
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


@dataclass(frozen=True)
class SnapshotContext:
    """A ConditionContext over plain data: event name -> occurrence times, and the
    (send_step, "open"|"click") pairs engaged with in this run."""

    attributes: Mapping[str, Any]
    segments: AbstractSet[str]
    now: datetime
    events: Mapping[str, Sequence[datetime]] = field(default_factory=dict)
    engagements: AbstractSet[tuple[str, str]] = field(default_factory=frozenset)

    def has_event(self, name: str, since: datetime | None) -> bool:
        times = self.events.get(name, ())
        return bool(times) if since is None else any(at >= since for at in times)

    def engaged(self, send_step: str, event: str) -> bool:
        return (send_step, event) in self.engagements


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
