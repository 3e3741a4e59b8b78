"""Pydantic models of a journey definition (SPEC section 3).

These models check shape and field syntax only; whole-journey rules (references between
steps, reachability, cycles, known templates) live in dsl.validate. Fields whose JSON
names are Python keywords or builtins (if, not, all, any, set, max) are stored under a
trailing-underscore name and always read and written under the JSON name, so
model_dump(mode="json") round-trips through model_validate.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    StringConstraints,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dsl.cron import check_cron
from dsl.dates import load_zone, parse_datetime
from dsl.durations import parse_duration, parse_local_time, parse_time_range

Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "contains"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EngagementEvent = Literal["open", "click"]
WAIT_STEP_TYPES = frozenset({"wait", "wait_for_engagement", "wait_for_event"})


def _matching(pattern: str, code: str, message: str) -> AfterValidator:
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise _custom_error(code, message)
        return value

    return AfterValidator(check)


_SLUG = r"[a-z0-9][a-z0-9_-]{0,63}"
_SLUG_RULE = "1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
# Keys end up in workflow ids, search attributes and URLs, so they are slugs (never PHI).
JourneyKey = Annotated[str, _matching(_SLUG, "invalid_key", f"a journey key must be {_SLUG_RULE}")]
ReasonCode = Annotated[str, _matching(_SLUG, "invalid_key", f"a reason must be {_SLUG_RULE}")]
# Template, segment and category keys are defined elsewhere; keep them URL-safe.
RefKey = Annotated[
    str,
    _matching(
        r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}",
        "invalid_key",
        "a key must be 1-128 letters, digits, '-', '_', '.' or ':', starting with a letter or "
        "digit",
    ),
]
# Step keys are shown to operators (e.g. "engaged?"): visible text, no control characters.
StepKey = Annotated[
    str,
    _matching(
        r"[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]{0,62}[^\s\x00-\x1f\x7f])?",
        "invalid_step_key",
        "a step key must be 1-64 characters without control characters or surrounding spaces",
    ),
]
# Names of attributes, events and event properties.
Name = Annotated[
    str,
    _matching(
        r"[^\s\x00-\x1f\x7f]{1,128}",
        "invalid_name",
        "a name must be 1-128 characters without spaces or control characters",
    ),
]


def _custom_error(code: str, message: str, field: str | None = None) -> PydanticCustomError:
    # "field" names the offending field when the error is raised by a whole-model check.
    return PydanticCustomError(code, message, {"field": field} if field else None)


def _check_duration(value: str, *, signed: bool) -> str:
    try:
        duration = parse_duration(value)
    except ValueError as exc:
        raise _custom_error("invalid_duration", str(exc)) from None
    if not signed and (duration.is_negative or duration.is_zero):
        raise _custom_error("invalid_duration", "duration must be greater than zero")
    return value


def _positive_duration(value: str) -> str:
    return _check_duration(value, signed=False)


def _signed_duration(value: str) -> str:
    return _check_duration(value, signed=True)


def _local_time(value: str) -> str:
    try:
        parse_local_time(value)
    except ValueError as exc:
        raise _custom_error("invalid_time", str(exc)) from None
    return value


def _time_range(value: str) -> str:
    try:
        parse_time_range(value)
    except ValueError as exc:
        raise _custom_error("invalid_time", str(exc)) from None
    return value


def _iso_datetime(value: str) -> str:
    try:
        parse_datetime(value)
    except ValueError as exc:
        raise _custom_error("invalid_datetime", str(exc)) from None
    return value


def _timezone(value: str) -> str:
    if load_zone(value) is None:
        raise _custom_error("invalid_timezone", "not a known IANA time zone (e.g. Europe/Paris)")
    return value


def _cron(value: str) -> str:
    try:
        check_cron(value)
    except ValueError as exc:
        raise _custom_error("invalid_cron", str(exc)) from None
    return value


def _unique_days(days: list[Weekday]) -> list[Weekday]:
    if len(set(days)) != len(days):
        raise _custom_error("duplicate_day", "a weekday is listed twice")
    return days


DurationStr = Annotated[str, AfterValidator(_positive_duration)]
SignedDurationStr = Annotated[str, AfterValidator(_signed_duration)]
LocalTimeStr = Annotated[str, AfterValidator(_local_time)]
TimeRangeStr = Annotated[str, AfterValidator(_time_range)]
DateTimeStr = Annotated[str, AfterValidator(_iso_datetime)]
TimeZoneStr = Annotated[str, AfterValidator(_timezone)]
CronStr = Annotated[str, AfterValidator(_cron)]
Days = Annotated[list[Weekday], Field(min_length=1), AfterValidator(_unique_days)]


class DslModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        serialize_by_alias=True,
        validate_by_alias=True,
        validate_by_name=True,
    )


def _check_op_value(op: Op, value: Any, has_value: bool) -> None:
    """Shared by attribute conditions and property filters: value must suit op."""
    if op == "exists":
        if value is not None and not isinstance(value, bool):
            raise _custom_error(
                "invalid_value", "value of exists must be true, false or absent", "value"
            )
        return
    if not has_value or value is None:
        raise _custom_error("missing_value", f"op {op} needs a value", "value")
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise _custom_error("invalid_value", f"value of {op} must be a list", "value")
    elif op in ("gt", "gte", "lt", "lte"):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise _custom_error(
                "invalid_value", f"value of {op} must be a number, a date or a string", "value"
            )
    elif op == "contains" and isinstance(value, list | dict):
        raise _custom_error("invalid_value", "value of contains must be a single value", "value")


# --- conditions -------------------------------------------------------------------------


class AttrCondition(DslModel):
    """{"attr": NAME, "op": OP, "value": V}; exists takes no value (or true/false)."""

    attr: Name
    op: Op
    value: JsonValue = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> AttrCondition:
        _check_op_value(self.op, self.value, "value" in self.model_fields_set)
        return self


class SegmentCondition(DslModel):
    segment: RefKey


class EventCondition(DslModel):
    """The contact had the event (within the duration before now, or ever)."""

    event: Name
    within: DurationStr | None = None


class EngagedCondition(DslModel):
    """A human open/click on the message sent by a send_email step of this run."""

    engaged: StepKey
    event: EngagementEvent


class EngagementCondition(DslModel):
    """A human open/click by the contact, on any message or on the sends of one journey
    (optionally one of its send steps, and for clicks one named link), within the duration
    before now or ever. Machine (automated/unknown) events never count."""

    engagement: EngagementEvent
    journey: JourneyKey | None = None
    step: StepKey | None = None
    link: Name | None = None
    within: DurationStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> EngagementCondition:
        if self.step is not None and self.journey is None:
            raise _custom_error(
                "step_requires_journey", "step can only be given with journey", "step"
            )
        if self.link is not None and self.engagement != "click":
            raise _custom_error("link_requires_click", "link can only be given for click", "link")
        return self


class JourneyCondition(DslModel):
    """The contact is (in: true) or is not (in: false) in a running run of the journey."""

    journey: JourneyKey
    in_: bool = Field(default=True, alias="in")


class AllCondition(DslModel):
    all_: list[Condition] = Field(alias="all", min_length=1)


class AnyCondition(DslModel):
    any_: list[Condition] = Field(alias="any", min_length=1)


class NotCondition(DslModel):
    not_: Condition = Field(alias="not")


_CONDITION_KEYS: tuple[tuple[str, type[DslModel]], ...] = (
    ("attr", AttrCondition),
    ("segment", SegmentCondition),
    ("engaged", EngagedCondition),  # before "event": an engaged condition also has one
    ("engagement", EngagementCondition),  # before "journey": it may have one too
    ("journey", JourneyCondition),
    ("event", EventCondition),
    ("all", AllCondition),
    ("any", AnyCondition),
    ("not", NotCondition),
)


def _tag_by_key(options: tuple[tuple[str, type[DslModel]], ...]) -> Any:
    """A discriminator that picks the union member by which key the JSON object has."""

    def tag(value: Any) -> str | None:
        if isinstance(value, dict):
            for key, model in options:
                if key in value:
                    return model.__name__
            return None
        for _, model in options:
            if isinstance(value, model):
                return model.__name__
        return None

    return tag


CONDITION_FORMS = "attr, segment, event, engaged, engagement, journey, all, any or not"

Condition = Annotated[
    Annotated[AttrCondition, Tag("AttrCondition")]
    | Annotated[SegmentCondition, Tag("SegmentCondition")]
    | Annotated[EngagedCondition, Tag("EngagedCondition")]
    | Annotated[EngagementCondition, Tag("EngagementCondition")]
    | Annotated[JourneyCondition, Tag("JourneyCondition")]
    | Annotated[EventCondition, Tag("EventCondition")]
    | Annotated[AllCondition, Tag("AllCondition")]
    | Annotated[AnyCondition, Tag("AnyCondition")]
    | Annotated[NotCondition, Tag("NotCondition")],
    Discriminator(
        _tag_by_key(_CONDITION_KEYS),
        custom_error_type="invalid_condition",
        custom_error_message=f"a condition must have one of the keys {CONDITION_FORMS}",
    ),
]


# --- property filters ("where") ---------------------------------------------------------


class WhereOp(DslModel):
    """{"op": OP, "value": V} for one event property."""

    op: Op
    value: JsonValue = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> WhereOp:
        _check_op_value(self.op, self.value, "value" in self.model_fields_set)
        return self


def _where_tag(value: Any) -> str:
    if isinstance(value, WhereOp) or (isinstance(value, dict) and "op" in value):
        return "WhereOp"
    return "WhereLiteral"


# A plain value means equality; an object with "op" is an operator test.
WhereValue = Annotated[
    Annotated[WhereOp, Tag("WhereOp")] | Annotated[JsonValue, Tag("WhereLiteral")],
    Discriminator(_where_tag),
]
Where = dict[Name, WhereValue]


# --- steps ------------------------------------------------------------------------------


class StepBase(DslModel):
    max_visits: int = Field(default=1, ge=1)


class SendEmailStep(StepBase):
    type: Literal["send_email"] = "send_email"
    template: RefKey
    category: RefKey | None = None  # None: the journey's category
    next: StepKey


class WaitStep(StepBase):
    """Exactly one of duration, until (naive = contact's local time) and until_attribute
    (+ signed offset, e.g. "-P1D" for the day before); then at_local_time/days
    (see dsl.timing.wait_until for the exact rules)."""

    type: Literal["wait"] = "wait"
    duration: DurationStr | None = None
    until: DateTimeStr | None = None
    until_attribute: Name | None = None
    offset: SignedDurationStr | None = None
    at_local_time: LocalTimeStr | None = None
    days: Days | None = None
    next: StepKey

    @model_validator(mode="after")
    def _one_mode(self) -> WaitStep:
        modes = [self.duration, self.until, self.until_attribute]
        if sum(mode is not None for mode in modes) != 1:
            raise _custom_error(
                "wait_mode",
                "wait needs exactly one of duration, until and until_attribute",
                "duration",
            )
        if self.offset is not None and self.until_attribute is None:
            raise _custom_error(
                "offset_without_attribute", "offset needs until_attribute", "offset"
            )
        return self


class WaitForEngagementStep(StepBase):
    type: Literal["wait_for_engagement"] = "wait_for_engagement"
    send_step: StepKey
    event: EngagementEvent
    link: Name | None = None
    timeout: DurationStr
    yes: StepKey
    no: StepKey

    @model_validator(mode="after")
    def _link_needs_click(self) -> WaitForEngagementStep:
        if self.link is not None and self.event != "click":
            raise _custom_error("link_requires_click", "link can only be given for click", "link")
        return self


class WaitForEventStep(StepBase):
    type: Literal["wait_for_event"] = "wait_for_event"
    event: Name
    where: Where | None = None
    timeout: DurationStr
    yes: StepKey
    no: StepKey


class BranchCase(DslModel):
    if_: Condition = Field(alias="if")
    next: StepKey


class BranchStep(StepBase):
    type: Literal["branch"] = "branch"
    cases: list[BranchCase] = Field(min_length=1)
    default: StepKey


class SplitPath(DslModel):
    weight: float = Field(gt=0, allow_inf_nan=False)
    next: StepKey


class SplitStep(StepBase):
    type: Literal["split"] = "split"
    paths: list[SplitPath] = Field(min_length=1)


class UpdateContactStep(StepBase):
    type: Literal["update_contact"] = "update_contact"
    set_: dict[Name, JsonValue] | None = Field(default=None, alias="set")
    unset: list[Name] | None = None
    add_segments: list[RefKey] | None = None
    remove_segments: list[RefKey] | None = None
    next: StepKey


class GotoStep(StepBase):
    type: Literal["goto"] = "goto"
    step: StepKey


class StartJourneyStep(StepBase):
    type: Literal["start_journey"] = "start_journey"
    journey: JourneyKey
    next: StepKey | None = None  # None: this run completes after enrolling


class ExitStep(StepBase):
    type: Literal["exit"] = "exit"
    reason: ReasonCode | None = None


StepUnion = (
    SendEmailStep
    | WaitStep
    | WaitForEngagementStep
    | WaitForEventStep
    | BranchStep
    | SplitStep
    | UpdateContactStep
    | GotoStep
    | StartJourneyStep
    | ExitStep
)
Step = Annotated[StepUnion, Field(discriminator="type")]
STEP_TYPES = (
    "send_email",
    "wait",
    "wait_for_engagement",
    "wait_for_event",
    "branch",
    "split",
    "update_contact",
    "goto",
    "start_journey",
    "exit",
)


# --- journey-level ----------------------------------------------------------------------


class ManualTrigger(DslModel):
    type: Literal["manual"] = "manual"


class EventTrigger(DslModel):
    type: Literal["event"] = "event"
    event: Name
    where: Where | None = None


class SegmentEntryTrigger(DslModel):
    type: Literal["segment_entry"] = "segment_entry"
    segment: RefKey


class ScheduleTrigger(DslModel):
    """Either a cron (in timezone, default UTC) or a date attribute of each contact (such
    as a birthday), optionally shifted by offset and sent at the contact's local time.
    segment narrows the audience (default: every contact)."""

    type: Literal["schedule"] = "schedule"
    cron: CronStr | None = None
    segment: RefKey | None = None
    timezone: TimeZoneStr | None = None
    attribute: Name | None = None
    offset: SignedDurationStr | None = None
    at_local_time: LocalTimeStr | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ScheduleTrigger:
        if (self.cron is None) == (self.attribute is None):
            raise _custom_error(
                "schedule_form", "schedule needs exactly one of cron and attribute", "cron"
            )
        if self.cron is not None and (self.offset is not None or self.at_local_time is not None):
            field = "offset" if self.offset is not None else "at_local_time"
            raise _custom_error("schedule_form", f"{field} goes with attribute, not cron", field)
        if self.attribute is not None and self.timezone is not None:
            raise _custom_error(
                "schedule_form",
                "timezone goes with cron; attribute uses the contact's zone",
                "timezone",
            )
        return self


Trigger = Annotated[
    ManualTrigger | EventTrigger | SegmentEntryTrigger | ScheduleTrigger,
    Field(discriminator="type"),
]


class NeverReentry(DslModel):
    mode: Literal["never"] = "never"


class AfterExitReentry(DslModel):
    mode: Literal["after_exit"] = "after_exit"
    min_interval: DurationStr


class AlwaysReentry(DslModel):
    mode: Literal["always"] = "always"


Reentry = Annotated[NeverReentry | AfterExitReentry | AlwaysReentry, Field(discriminator="mode")]


class EventExit(DslModel):
    event: Name
    where: Where | None = None


class SegmentExit(DslModel):
    segment_exit: RefKey


class ConditionExit(DslModel):
    condition: Condition


_EXIT_KEYS: tuple[tuple[str, type[DslModel]], ...] = (
    ("event", EventExit),
    ("segment_exit", SegmentExit),
    ("condition", ConditionExit),
)
ExitRule = Annotated[
    Annotated[EventExit, Tag("EventExit")]
    | Annotated[SegmentExit, Tag("SegmentExit")]
    | Annotated[ConditionExit, Tag("ConditionExit")],
    Discriminator(
        _tag_by_key(_EXIT_KEYS),
        custom_error_type="invalid_exit_rule",
        custom_error_message="an exit_when entry needs one of the keys event, segment_exit "
        "or condition",
    ),
]


class EventGoal(DslModel):
    event: Name
    where: Where | None = None
    exit: bool = True


class ConditionGoal(DslModel):
    condition: Condition
    exit: bool = True


_GOAL_KEYS: tuple[tuple[str, type[DslModel]], ...] = (
    ("event", EventGoal),
    ("condition", ConditionGoal),
)
Goal = Annotated[
    Annotated[EventGoal, Tag("EventGoal")] | Annotated[ConditionGoal, Tag("ConditionGoal")],
    Discriminator(
        _tag_by_key(_GOAL_KEYS),
        custom_error_type="invalid_goal",
        custom_error_message="goal needs one of the keys event or condition",
    ),
]


class SendWindow(DslModel):
    """Quiet hours: sends happen only within hours (local time) on days; the days are
    those on which the window opens, so "20:00-08:00" on fri runs into Saturday morning."""

    hours: TimeRangeStr
    days: Days = Field(default_factory=lambda: list(WEEKDAYS))


class FrequencyCap(DslModel):
    max_: int = Field(alias="max", ge=1)
    period: DurationStr
    action: Literal["defer", "skip"] = "defer"


class JourneyDefinition(DslModel):
    key: JourneyKey
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=2000)] | None = None
    category: RefKey
    trigger: Trigger = Field(default_factory=ManualTrigger)
    reentry: Reentry = Field(default_factory=NeverReentry)
    exit_when: list[ExitRule] = Field(default_factory=list)
    goal: Goal | None = None
    start: StepKey
    steps: dict[StepKey, Step] = Field(min_length=1)
    send_window: SendWindow | None = None
    frequency_cap: FrequencyCap | None = None

    def step(self, key: str) -> StepUnion:
        """The step called key (KeyError if there is none)."""
        return self.steps[key]


ConditionUnion = (
    AttrCondition
    | SegmentCondition
    | EventCondition
    | EngagedCondition
    | EngagementCondition
    | JourneyCondition
    | AllCondition
    | AnyCondition
    | NotCondition
)

AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()
