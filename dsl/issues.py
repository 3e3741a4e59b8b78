"""Validation issues, and the mapping of pydantic errors onto (step, field) issues.

Pydantic puts union tags into error locations; they are removed here so that a designer
reads "steps.nudge / template" rather than "steps.nudge.send_email.template".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import ErrorDetails

from dsl.model import STEP_TYPES

_TRIGGER_TYPES = frozenset({"manual", "event", "segment_entry", "schedule"})
_REENTRY_MODES = frozenset({"never", "after_exit", "always"})
# Tags of the unions discriminated by which key an object has (see dsl.model._tag_by_key).
_KEY_TAGS = frozenset(
    {
        "AttrCondition",
        "SegmentCondition",
        "EngagedCondition",
        "EngagementCondition",
        "JourneyCondition",
        "EventCondition",
        "AllCondition",
        "AnyCondition",
        "NotCondition",
        "WhereOp",
        "WhereLiteral",
        "EventExit",
        "SegmentExit",
        "ConditionExit",
        "EventGoal",
        "ConditionGoal",
    }
)


@dataclass(frozen=True)
class Issue:
    """One problem: step is None for journey-level fields; field is a path inside the step
    (or the journey) such as "template" or "cases[0].if.value", "" for the step as a whole.
    Messages name fields and steps, never values."""

    step: str | None
    field: str
    code: str
    message: str


def issues_from_pydantic(
    errors: Iterable[ErrorDetails], prefix: Sequence[str | int] = ()
) -> list[Issue]:
    """Issues for pydantic errors; prefix is prepended to each location (used when one part
    of a definition was validated on its own)."""
    return [_issue((*prefix, *error["loc"]), error) for error in errors]


def _issue(loc: Sequence[str | int], error: ErrorDetails) -> Issue:
    step: str | None = None
    parts: list[str | int] = list(loc)
    if len(parts) >= 2 and parts[0] == "steps":
        step = str(parts[1])
        parts = parts[2:]
        if parts and parts[0] in STEP_TYPES:
            parts = parts[1:]
    elif len(parts) >= 2 and (
        (parts[0] == "trigger" and parts[1] in _TRIGGER_TYPES)
        or (parts[0] == "reentry" and parts[1] in _REENTRY_MODES)
    ):
        parts = [parts[0], *parts[2:]]
    parts = [part for part in parts if part not in _KEY_TAGS and part != "[key]"]

    code = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    message = error["msg"]
    if code in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "type")).strip("'")
        parts.append(discriminator)
        if code == "union_tag_invalid":
            message = f"{discriminator} must be one of {ctx.get('expected_tags', '')}"
        else:
            message = f"{discriminator} is required"
    elif isinstance(ctx.get("field"), str):
        parts.append(ctx["field"])
    return Issue(step, format_path(parts), code, message)


def format_path(parts: Iterable[str | int]) -> str:
    """["cases", 0, "if", "all", 1] -> "cases[0].if.all[1]"."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text
