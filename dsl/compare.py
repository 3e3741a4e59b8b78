"""Typed comparison of a stored value with a condition's value, shared by attribute
conditions and event property filters.

Values usually come from JSON or CSV imports, so a number may arrive as "42" and a date
as "2026-01-05": a side is read as a number or a date when the other side is one.
Mismatched types are simply unequal and unordered (never an error).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime
from typing import Any

from dsl.dates import parse_date_or_datetime

_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def apply_op(op: str, present: bool, actual: Any, expected: Any) -> bool:
    """Evaluate `actual OP expected`; present says whether the value exists at all.

    A missing value is false for every op except exists with expected False.
    """
    if op == "exists":
        return present if expected is not False else not present
    if not present:
        return False
    if op == "eq":
        return equal(actual, expected)
    if op == "ne":
        return not equal(actual, expected)
    if op in ("gt", "gte", "lt", "lte"):
        order = compare(actual, expected)
        if order is None:
            return False
        return {"gt": order > 0, "gte": order >= 0, "lt": order < 0, "lte": order <= 0}[op]
    if op in ("in", "not_in"):
        options = expected if isinstance(expected, list) else [expected]
        items = actual if isinstance(actual, list) else [actual]
        found = any(equal(item, option) for item in items for option in options)
        return found if op == "in" else not found
    if op == "contains":
        if isinstance(actual, list):
            return any(equal(item, expected) for item in actual)
        if isinstance(actual, str) and isinstance(expected, str):
            return expected in actual
        return False
    raise ValueError(f"unknown op {op!r}")


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return _as_bool(a) is not None and _as_bool(a) == _as_bool(b)
    numbers = _as_numbers(a, b)
    if numbers is not None:
        return numbers[0] == numbers[1]
    order = _compare_temporal(a, b)
    if order is not None:
        return order == 0
    return bool(type(a) is type(b) and a == b)


def compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1 for a <, =, > b; None when the two cannot be ordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return None
    numbers = _as_numbers(a, b)
    if numbers is None and isinstance(a, str) and isinstance(b, str):
        numbers = _as_numbers(_number(a), _number(b))
    if numbers is not None:
        return (numbers[0] > numbers[1]) - (numbers[0] < numbers[1])
    order = _compare_temporal(a, b)
    if order is not None:
        return order
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    return None


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value.strip()):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def _as_numbers(a: Any, b: Any) -> tuple[float | int, float | int] | None:
    """Both as numbers if at least one side already is a number and the other reads as one."""
    if not (_is_number(a) or _is_number(b)):
        return None
    x, y = _number(a), _number(b)
    return (x, y) if x is not None and y is not None else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _temporal(value: Any) -> date | datetime | None:
    if isinstance(value, date):  # datetime is a date too
        return value
    if isinstance(value, str):
        try:
            return parse_date_or_datetime(value)
        except ValueError:
            return None
    return None


def _compare_temporal(a: Any, b: Any) -> int | None:
    x, y = _temporal(a), _temporal(b)
    if x is None or y is None:
        return None
    if isinstance(x, datetime) and isinstance(y, datetime):
        return _sign(_utc(x), _utc(y))
    # At least one side is a bare date: compare calendar days.
    left = _utc(x).date() if isinstance(x, datetime) else x
    right = _utc(y).date() if isinstance(y, datetime) else y
    return _sign(left, right)


def _sign(left: date, right: date) -> int:
    return (left > right) - (left < right)


def _utc(value: datetime) -> datetime:
    # A datetime without an offset is taken as UTC, as stored attributes are.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
