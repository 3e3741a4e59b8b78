"""Full validation of a journey definition: shape errors from the models plus the rules
that need the whole journey (references, reachability, cycles, known templates...).

Every problem is collected, not just the first. Steps are also validated one by one so a
broken step does not hide the others' problems; the checks that need the whole graph
(unreachable steps, cycles, send-before-wait order) run only once every step parses.
Issues come out in a stable order: journey-level ones first, then by step declaration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from dsl.graph import reachable, reaches, references, zero_time_cycles
from dsl.issues import Issue, format_path, issues_from_pydantic
from dsl.model import (
    AllCondition,
    AnyCondition,
    BranchStep,
    ConditionExit,
    ConditionGoal,
    ConditionUnion,
    EngagedCondition,
    EngagementCondition,
    ExitRule,
    Goal,
    JourneyCondition,
    JourneyDefinition,
    NotCondition,
    ScheduleTrigger,
    SegmentCondition,
    SegmentEntryTrigger,
    SegmentExit,
    SendEmailStep,
    StartJourneyStep,
    Step,
    StepKey,
    StepUnion,
    Trigger,
    UpdateContactStep,
    WaitForEngagementStep,
)

__all__ = ["Issue", "KnownRefs", "ValidationResult", "validate"]


@dataclass(frozen=True)
class KnownRefs:
    """Keys that exist in the account. None means "not known": that check is skipped.
    links maps a template key to its named links; templates missing from it are not checked.
    """

    templates: AbstractSet[str] | None = None
    segments: AbstractSet[str] | None = None
    journeys: AbstractSet[str] | None = None
    links: Mapping[str, AbstractSet[str]] | None = None


@dataclass(frozen=True)
class ValidationResult:
    definition: JourneyDefinition | None  # set only when there are no errors
    errors: list[Issue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _Parts:
    """Whatever parsed of a definition that may have errors elsewhere."""

    key: str | None = None
    start: str | None = None
    step_keys: list[str] = field(default_factory=list)
    steps: dict[str, StepUnion] = field(default_factory=dict)
    all_steps_parsed: bool = False
    trigger: Any = None
    exit_when: list[Any] = field(default_factory=list)
    goal: Any = None


def validate(raw: Any, refs: KnownRefs | None = None) -> ValidationResult:
    if not isinstance(raw, dict):
        issue = Issue(None, "", "invalid_type", "a journey definition must be a JSON object")
        return ValidationResult(None, [issue])
    issues: list[Issue] = []
    definition: JourneyDefinition | None = None
    try:
        definition = JourneyDefinition.model_validate(raw)
    except ValidationError as exc:
        issues.extend(issues_from_pydantic(exc.errors()))
    parts = _parts_of(definition) if definition is not None else _parse_parts(raw)
    issues.extend(_semantic_issues(parts, refs or KnownRefs()))
    issues = _ordered(issues, parts.step_keys)
    return ValidationResult(definition if not issues else None, issues)


# --- collecting what parsed ---------------------------------------------------------------


@cache
def _adapters() -> dict[str, TypeAdapter[Any]]:
    return {
        "step": TypeAdapter(Step),
        "step_key": TypeAdapter(StepKey),
        "trigger": TypeAdapter(Trigger),
        "exit_when": TypeAdapter(list[ExitRule]),
        "goal": TypeAdapter(Goal),
    }


def _parts_of(definition: JourneyDefinition) -> _Parts:
    return _Parts(
        key=definition.key,
        start=definition.start,
        step_keys=list(definition.steps),
        steps=dict(definition.steps),
        all_steps_parsed=True,
        trigger=definition.trigger,
        exit_when=list(definition.exit_when),
        goal=definition.goal,
    )


def _parse_parts(raw: dict[str, Any]) -> _Parts:
    adapters = _adapters()
    parts = _Parts()
    parts.key = raw.get("key") if isinstance(raw.get("key"), str) else None
    parts.start = raw.get("start") if isinstance(raw.get("start"), str) else None
    raw_steps = raw.get("steps")
    if isinstance(raw_steps, dict):
        parts.step_keys = [str(key) for key in raw_steps]
        bad_keys = 0
        for key, value in raw_steps.items():
            try:
                adapters["step_key"].validate_python(key)
            except ValidationError:
                bad_keys += 1
            try:
                parts.steps[str(key)] = adapters["step"].validate_python(value)
            except ValidationError:
                pass
        parts.all_steps_parsed = (
            bool(raw_steps) and not bad_keys and len(parts.steps) == len(raw_steps)
        )
    for name in ("trigger", "exit_when", "goal"):
        if raw.get(name) is None:
            continue
        try:
            setattr(parts, name, adapters[name].validate_python(raw[name]))
        except ValidationError:
            pass
    return parts


# --- semantic checks ----------------------------------------------------------------------


def _semantic_issues(parts: _Parts, refs: KnownRefs) -> Iterator[Issue]:
    known_steps = set(parts.step_keys)
    start_ok = parts.start is not None and parts.start in known_steps
    if parts.start is not None and parts.step_keys and not start_ok:
        yield Issue(None, "start", "unknown_step", f"start step '{parts.start}' does not exist")

    yield from _journey_level_refs(parts, refs)
    for key in parts.step_keys:
        step = parts.steps.get(key)
        if step is not None:
            yield from _step_issues(key, step, parts, refs)

    # Parsed steps' edges are certain, so their cycles are real even if other steps failed.
    for cycle in zero_time_cycles(parts.steps):
        yield Issue(
            cycle[0],
            "",
            "zero_time_cycle",
            f"cycle {' -> '.join(cycle)} has no wait, wait_for_engagement or "
            "wait_for_event step, so it could loop without time passing",
        )
    # Reachability needs every edge: a step that failed to parse could lead anywhere.
    if not parts.all_steps_parsed:
        return
    if start_ok and parts.start is not None:
        order = reachable(parts.steps, parts.start)
        reached = set(order)
        for key in parts.step_keys:
            if key not in reached:
                yield Issue(key, "", "unreachable_step", "step cannot be reached from start")
        for key, step in parts.steps.items():
            if isinstance(step, WaitForEngagementStep) and key in reached:
                yield from _send_runs_before(key, step, parts, reached)


def _journey_level_refs(parts: _Parts, refs: KnownRefs) -> Iterator[Issue]:
    if isinstance(parts.trigger, SegmentEntryTrigger):
        yield from _segment_ref(None, "trigger.segment", parts.trigger.segment, refs)
    if isinstance(parts.trigger, ScheduleTrigger) and parts.trigger.segment is not None:
        yield from _segment_ref(None, "trigger.segment", parts.trigger.segment, refs)
    for i, rule in enumerate(parts.exit_when):
        if isinstance(rule, SegmentExit):
            yield from _segment_ref(None, f"exit_when[{i}].segment_exit", rule.segment_exit, refs)
        elif isinstance(rule, ConditionExit):
            yield from _condition_refs(
                None, f"exit_when[{i}].condition", rule.condition, parts, refs
            )
    if isinstance(parts.goal, ConditionGoal):
        yield from _condition_refs(None, "goal.condition", parts.goal.condition, parts, refs)


def _step_issues(key: str, step: StepUnion, parts: _Parts, refs: KnownRefs) -> Iterator[Issue]:
    known_steps = set(parts.step_keys)
    for path, target in references(step):
        if target not in known_steps:
            yield Issue(key, path, "unknown_step", f"step '{target}' does not exist")

    if isinstance(step, SendEmailStep):
        if refs.templates is not None and step.template not in refs.templates:
            yield Issue(key, "template", "unknown_template", "template does not exist")
    elif isinstance(step, WaitForEngagementStep):
        yield from _engagement_target(key, step, parts, refs)
    elif isinstance(step, BranchStep):
        for i, case in enumerate(step.cases):
            yield from _condition_refs(key, f"cases[{i}].if", case.if_, parts, refs)
    elif isinstance(step, UpdateContactStep):
        yield from _update_issues(key, step, refs)
    elif isinstance(step, StartJourneyStep):
        if parts.key is not None and step.journey == parts.key:
            yield Issue(
                key,
                "journey",
                "start_journey_self",
                "a journey cannot start itself (the run would end with loop_guard)",
            )
        elif refs.journeys is not None and step.journey not in refs.journeys:
            yield Issue(key, "journey", "unknown_journey", "journey does not exist")


def _engagement_target(
    key: str, step: WaitForEngagementStep, parts: _Parts, refs: KnownRefs
) -> Iterator[Issue]:
    if step.send_step not in parts.step_keys:
        yield Issue(key, "send_step", "unknown_step", f"step '{step.send_step}' does not exist")
        return
    send = parts.steps.get(step.send_step)
    if send is None:
        return  # that step has its own errors
    if not isinstance(send, SendEmailStep):
        yield Issue(
            key, "send_step", "not_a_send_step", f"step '{step.send_step}' is not a send_email step"
        )
        return
    known_links = (refs.links or {}).get(send.template)
    if step.link is not None and known_links is not None and step.link not in known_links:
        yield Issue(key, "link", "unknown_link", "the template has no link with this name")


def _send_runs_before(
    key: str, step: WaitForEngagementStep, parts: _Parts, reached: set[str]
) -> Iterator[Issue]:
    send = parts.steps.get(step.send_step)
    if not isinstance(send, SendEmailStep):
        return  # reported by _engagement_target
    if step.send_step not in reached or not reaches(parts.steps, step.send_step, key):
        yield Issue(
            key,
            "send_step",
            "send_step_not_before",
            f"step '{step.send_step}' cannot run before this step on any path from start",
        )


def _update_issues(key: str, step: UpdateContactStep, refs: KnownRefs) -> Iterator[Issue]:
    for name in ("add_segments", "remove_segments"):
        for i, segment in enumerate(getattr(step, name) or []):
            yield from _segment_ref(key, f"{name}[{i}]", segment, refs)
    if set(step.add_segments or ()) & set(step.remove_segments or ()):
        yield Issue(
            key, "remove_segments", "conflicting_update", "a segment is both added and removed"
        )
    if set(step.set_ or {}) & set(step.unset or ()):
        yield Issue(key, "unset", "conflicting_update", "an attribute is both set and unset")


def _segment_ref(step: str | None, path: str, segment: str, refs: KnownRefs) -> Iterator[Issue]:
    if refs.segments is not None and segment not in refs.segments:
        yield Issue(step, path, "unknown_segment", "segment does not exist")


def _condition_refs(
    step: str | None, path: str, condition: ConditionUnion, parts: _Parts, refs: KnownRefs
) -> Iterator[Issue]:
    for sub_path, node in _walk(condition, path):
        if isinstance(node, SegmentCondition):
            yield from _segment_ref(step, f"{sub_path}.segment", node.segment, refs)
        elif isinstance(node, EngagedCondition):
            target = parts.steps.get(node.engaged)
            field_path = f"{sub_path}.engaged"
            if node.engaged not in parts.step_keys:
                message = f"step '{node.engaged}' does not exist"
                yield Issue(step, field_path, "unknown_step", message)
            elif target is not None and not isinstance(target, SendEmailStep):
                message = f"step '{node.engaged}' is not a send_email step"
                yield Issue(step, field_path, "not_a_send_step", message)
        elif isinstance(node, EngagementCondition | JourneyCondition):
            journey = node.journey
            if journey is not None and refs.journeys is not None and journey not in refs.journeys:
                message = "journey does not exist"
                yield Issue(step, f"{sub_path}.journey", "unknown_journey", message)


def _walk(condition: ConditionUnion, path: str) -> Iterator[tuple[str, ConditionUnion]]:
    yield path, condition
    if isinstance(condition, AllCondition | AnyCondition):
        name = "all" if isinstance(condition, AllCondition) else "any"
        children = condition.all_ if isinstance(condition, AllCondition) else condition.any_
        for i, child in enumerate(children):
            yield from _walk(child, format_path([path, name, i]))
    elif isinstance(condition, NotCondition):
        yield from _walk(condition.not_, f"{path}.not")


def _ordered(issues: list[Issue], step_keys: list[str]) -> list[Issue]:
    """Journey-level issues first, then by step declaration order; duplicates dropped."""
    position = {key: i for i, key in enumerate(step_keys)}
    unique = list(dict.fromkeys(issues))
    return sorted(
        unique, key=lambda issue: -1 if issue.step is None else position.get(issue.step, -1)
    )
