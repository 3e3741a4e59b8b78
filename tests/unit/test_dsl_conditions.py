from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter

from dsl.conditions import SnapshotContext, evaluate, matches_where
from dsl.model import Condition, ConditionUnion, WhereOp

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)
CONDITION: TypeAdapter[ConditionUnion] = TypeAdapter(Condition)

ATTRIBUTES: dict[str, Any] = {
    "age": 42,
    "age_text": "42",
    "score": 7.5,
    "stage": "engaged",
    "plan": "gold",
    "dob": "1980-05-01",
    "last_visit": "2026-01-08T09:00:00Z",
    "tags": ["diabetes", "asthma"],
    "opted_in": True,
    "opted_in_text": "TRUE",
    "note": "needs follow-up call",
    "empty": None,
}


def ctx(**overrides: Any) -> SnapshotContext:
    fields: dict[str, Any] = {
        "attributes": ATTRIBUTES,
        "segments": frozenset({"vip"}),
        "now": NOW,
        "events": {"visit_completed": [datetime(2026, 1, 8, tzinfo=UTC)]},
        "engagements": frozenset({("thanks", "click")}),
    }
    fields.update(overrides)
    return SnapshotContext(**fields)


def check(raw: dict[str, Any], context: SnapshotContext | None = None) -> bool:
    return evaluate(CONDITION.validate_python(raw), context or ctx())


@pytest.mark.parametrize(
    ("attr", "op", "value", "expected"),
    [
        ("age", "eq", 42, True),
        ("age", "eq", 42.0, True),
        ("age", "eq", "42", True),
        ("age_text", "eq", 42, True),
        ("age", "eq", 41, False),
        ("age", "ne", 41, True),
        ("age", "ne", 42, False),
        ("stage", "eq", "engaged", True),
        ("stage", "eq", "Engaged", False),
        ("stage", "ne", "new", True),
        ("opted_in", "eq", True, True),
        ("opted_in_text", "eq", True, True),
        ("opted_in", "eq", "yes", False),
        ("age", "eq", True, False),
        ("age", "gt", 41, True),
        ("age", "gt", 42, False),
        ("age", "gte", 42, True),
        ("age", "lt", 43, True),
        ("age", "lt", 42, False),
        ("age", "lte", 42, True),
        ("age_text", "gt", 9, True),  # numeric, not lexical
        ("age_text", "lt", "100", True),  # two numeric strings compare as numbers
        ("score", "gt", 7, True),
        ("score", "lte", 7.5, True),
        ("stage", "gt", "a", True),  # plain strings: lexical
        ("stage", "gt", 3, False),  # a word and a number cannot be ordered
        ("opted_in", "gt", 0, False),
        ("dob", "lt", "1990-01-01", True),
        ("dob", "gt", "1990-01-01", False),
        ("dob", "eq", "1980-05-01", True),
        ("last_visit", "gt", "2026-01-08T08:59:59Z", True),
        ("last_visit", "lt", "2026-01-08T04:00:00-05:00", False),  # same instant
        ("last_visit", "eq", "2026-01-08T04:00:00-05:00", True),
        ("last_visit", "gte", "2026-01-08T04:00:00-05:00", True),
        ("last_visit", "eq", "2026-01-08", True),  # date vs datetime: same calendar day
        ("last_visit", "gt", "2026-01-07", True),
        ("plan", "in", ["gold", "silver"], True),
        ("plan", "in", ["bronze"], False),
        ("age", "in", [41, "42"], True),
        ("plan", "not_in", ["bronze"], True),
        ("plan", "not_in", ["gold"], False),
        ("tags", "in", ["asthma", "copd"], True),  # list attribute: any overlap
        ("tags", "not_in", ["copd"], True),
        ("tags", "contains", "asthma", True),
        ("tags", "contains", "copd", False),
        ("note", "contains", "follow-up", True),
        ("note", "contains", "Follow", False),
        ("age", "contains", 4, False),
        ("stage", "exists", None, True),
        ("stage", "exists", True, True),
        ("stage", "exists", False, False),
    ],
)
def test_attribute_ops(attr: str, op: str, value: Any, expected: bool) -> None:
    raw: dict[str, Any] = {"attr": attr, "op": op}
    if value is not None:
        raw["value"] = value
    assert check(raw) is expected


@pytest.mark.parametrize("name", ["missing", "empty"])
@pytest.mark.parametrize(
    ("op", "value"),
    [
        ("eq", 1),
        ("ne", 1),
        ("gt", 1),
        ("gte", 1),
        ("lt", 1),
        ("lte", 1),
        ("in", [1]),
        ("not_in", [1]),
        ("contains", 1),
        ("exists", None),
    ],
)
def test_missing_attribute_is_false_for_every_op(name: str, op: str, value: Any) -> None:
    raw: dict[str, Any] = {"attr": name, "op": op}
    if value is not None:
        raw["value"] = value
    assert check(raw) is False
    assert check({"not": raw}) is True


def test_exists_false_is_true_for_missing() -> None:
    assert check({"attr": "missing", "op": "exists", "value": False}) is True


def test_segment() -> None:
    assert check({"segment": "vip"}) is True
    assert check({"segment": "other"}) is False


def test_event_within_and_ever() -> None:
    assert check({"event": "visit_completed"}) is True
    assert check({"event": "visit_completed", "within": "P3D"}) is True
    assert check({"event": "visit_completed", "within": "P1D"}) is False
    assert check({"event": "appointment_booked"}) is False


def test_event_within_calendar_month() -> None:
    context = ctx(
        now=datetime(2026, 3, 31, tzinfo=UTC),
        events={"visit_completed": [datetime(2026, 2, 28, tzinfo=UTC)]},
    )
    assert check({"event": "visit_completed", "within": "P1M"}, context) is True
    assert check({"event": "visit_completed", "within": "P4W"}, context) is False


def test_engaged() -> None:
    assert check({"engaged": "thanks", "event": "click"}) is True
    assert check({"engaged": "thanks", "event": "open"}) is False
    assert check({"engaged": "nudge", "event": "click"}) is False


def test_all_any_not() -> None:
    yes, no = {"segment": "vip"}, {"segment": "other"}
    assert check({"all": [yes, yes]}) is True
    assert check({"all": [yes, no]}) is False
    assert check({"any": [no, yes]}) is True
    assert check({"any": [no, no]}) is False
    assert check({"not": no}) is True
    assert check({"not": {"all": [yes, {"any": [no, {"not": no}]}]}}) is False


def test_python_dates_in_attributes() -> None:
    context = ctx(attributes={"dob": date(1980, 5, 1), "seen": datetime(2026, 1, 1, tzinfo=UTC)})
    assert check({"attr": "dob", "op": "lt", "value": "1990-01-01"}, context) is True
    assert check({"attr": "seen", "op": "gte", "value": "2026-01-01T00:00:00Z"}, context) is True


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (None, True),
        ({}, True),
        ({"clinic": "north"}, True),
        ({"clinic": "south"}, False),
        ({"clinic": "north", "visits": 3}, True),
        ({"visits": {"op": "gte", "value": 2}}, True),
        ({"visits": {"op": "gt", "value": 3}}, False),
        ({"kind": {"op": "in", "value": ["checkup", "followup"]}}, True),
        ({"kind": {"op": "not_in", "value": ["checkup"]}}, False),
        ({"clinic": {"op": "exists"}}, True),
        ({"doctor": {"op": "exists", "value": False}}, True),
        ({"doctor": "x"}, False),
        ({"doctor": {"op": "ne", "value": "x"}}, False),
        ({"codes": {"op": "contains", "value": "A1"}}, True),
        ({"at": {"op": "lt", "value": "2026-02-01"}}, True),
        ({"clinic": "north", "visits": {"op": "lt", "value": 3}}, False),
    ],
)
def test_matches_where(where: dict[str, Any] | None, expected: bool) -> None:
    properties = {
        "clinic": "north",
        "visits": 3,
        "kind": "checkup",
        "codes": ["A1", "B2"],
        "at": "2026-01-05T10:00:00Z",
    }
    assert matches_where(where, properties) is expected


def test_matches_where_with_parsed_filter() -> None:
    assert matches_where({"visits": WhereOp(op="gt", value=1)}, {"visits": 2}) is True
    assert matches_where({"visits": WhereOp(op="gt", value=5)}, {"visits": 2}) is False
