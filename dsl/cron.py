"""Syntax check for the 5-field cron expressions of scheduled triggers.

Only validation lives here; the schedule itself is run by Temporal, which accepts this
subset (numbers, names, ranges, lists, steps and the @macros).
"""

from __future__ import annotations

import re

MACROS = frozenset(
    {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
)

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")

# (field name, lowest, highest, names mapped to numbers)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {name: i for i, name in enumerate(_WEEKDAYS)}),
)
_ITEM_RE = re.compile(r"(\*|[0-9a-z]+(?:-[0-9a-z]+)?)(?:/([0-9]+))?")


def check_cron(expression: str) -> None:
    """Raise ValueError naming the offending cron field if expression is not valid."""
    text = expression.strip().lower()
    if text in MACROS:
        return
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(
            "cron needs 5 fields (minute hour day-of-month month day-of-week) or an @macro"
        )
    for value, (name, low, high, names) in zip(fields, _FIELDS, strict=True):
        for item in value.split(","):
            _check_item(item, name, low, high, names)


def _check_item(item: str, name: str, low: int, high: int, names: dict[str, int]) -> None:
    match = _ITEM_RE.fullmatch(item)
    if match is None:
        raise ValueError(f"cron {name} field is not valid")
    span, step = match.group(1), match.group(2)
    if step is not None and int(step) == 0:
        raise ValueError(f"cron {name} field has a step of 0")
    if span == "*":
        return
    bounds = [_number(part, name, low, high, names) for part in span.split("-")]
    if len(bounds) == 2 and bounds[0] > bounds[1]:
        raise ValueError(f"cron {name} field has a range that runs backwards")


def _number(part: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    if part.isdigit():
        number = int(part)
    elif part in names:
        number = names[part]
    else:
        raise ValueError(f"cron {name} field is not valid")
    if not low <= number <= high:
        raise ValueError(f"cron {name} field must be between {low} and {high}")
    return number
