"""Typed contact attributes: reading CSV text, coercing to a declared type, inference."""

from __future__ import annotations

from typing import Any

import pytest

from services.attributes import (
    AttributeTypes,
    AttributeValueError,
    check_name,
    coerce,
    infer_type,
    read_text,
)


@pytest.mark.parametrize(
    ("cell", "value"),
    [
        ("true", True),
        (" FALSE ", False),
        ("42", 42),
        ("-7.5", -7.5),
        ("02139", "02139"),  # a number would lose the leading zero
        ("0", 0),
        ("0.5", 0.5),
        ("1234567890123456789", "1234567890123456789"),  # an identifier, not a quantity
        ("2026-01-05", "2026-01-05"),
        ("2026-01-05T09:30Z", "2026-01-05T09:30:00+00:00"),
        ("2026-02-30", "2026-02-30"),  # not a date: stays text
        ('["a", 1]', ["a", 1]),
        ("[not json", "[not json"),
        ("yes", "yes"),
        ("Jane", "Jane"),
    ],
)
def test_read_text(cell: str, value: Any) -> None:
    assert read_text(cell) == value


@pytest.mark.parametrize(
    ("value", "type_", "result"),
    [
        ("42", "number", 42),
        ("4.2e1", "number", 42.0),
        (True, "string", "true"),
        (42, "string", "42"),
        ("yes", "boolean", True),
        ("0", "boolean", False),
        ("2026-01-05", "date", "2026-01-05"),
        (" 2026-01-05T10:00:00+01:00 ", "date", "2026-01-05T10:00:00+01:00"),
        (["a", 1, True], "list", ["a", 1, True]),
    ],
)
def test_coerce(value: Any, type_: str, result: Any) -> None:
    assert coerce(value, type_) == result


def test_coerce_lists_from_text() -> None:
    assert coerce("a | b||c", "list", from_text=True) == ["a", "b", "c"]
    assert coerce('["x", 2]', "list", from_text=True) == ["x", 2]


@pytest.mark.parametrize(
    ("value", "type_", "code"),
    [
        ("abc", "number", "type_mismatch"),
        ("007", "number", "leading_zeros"),
        (True, "number", "type_mismatch"),
        ("maybe", "boolean", "type_mismatch"),
        ("2026-02-30", "date", "type_mismatch"),
        (5, "date", "type_mismatch"),
        ({"a": 1}, "string", "type_mismatch"),
        ([{"a": 1}], "list", "invalid_item"),
        ("x" * 5000, "string", "too_long"),
    ],
)
def test_coerce_refuses(value: Any, type_: str, code: str) -> None:
    with pytest.raises(AttributeValueError) as caught:
        coerce(value, type_)
    assert caught.value.code == code
    if isinstance(value, str) and len(value) > 2:
        assert value[:20] not in caught.value.message  # messages never carry the value


def test_infer_type() -> None:
    assert [infer_type(v) for v in (True, 3, 2.5, "x", "2026-01-05", [1])] == [
        "boolean", "number", "number", "string", "date", "list"
    ]
    with pytest.raises(AttributeValueError):
        infer_type({"nested": 1})


def test_names() -> None:
    check_name("zip_code")
    for bad in ("", "has space", "email", "x" * 129):
        with pytest.raises(AttributeValueError):
            check_name(bad)


def test_first_value_types_the_attribute() -> None:
    types = AttributeTypes(known={"age": "number"})
    clean, problems = types.clean({"age": "42", "zip": "02139", "vip": "true"}, from_text=True)
    assert problems == [] and clean == {"age": 42, "zip": "02139", "vip": True}
    assert types.inferred == {"zip": "string", "vip": "boolean"}
    clean, problems = types.clean({"vip": "maybe", "zip": 2139})
    assert clean == {"zip": "2139"}
    assert [(p.field, p.code) for p in problems] == [("attributes.vip", "type_mismatch")]
    # None means "remove" and is not typed.
    clean, problems = types.clean({"gone": None})
    assert clean == {"gone": None} and "gone" not in types.inferred
