"""Pure helpers of the interpreter and its activities."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.contact_updates import changed_fields
from activities.lookups import normalised_date, parse_conditions
from dsl.model import WaitForEngagementStep, WaitStep
from workflows.definitions import condition_json, load_definition, parse_definition, where_json
from workflows.steps import engagement_matches, needs_contact_clock
from workflows.types import EngagementSignal

DEFINITION: dict[str, Any] = {
    "key": "k", "name": "n", "category": "c", "start": "a",
    "goal": {"condition": {"all": [{"attr": "x", "op": "exists"},
                                   {"not": {"segment": "s"}},
                                   {"event": "e", "within": "P1D"}]}},
    "exit_when": [{"event": "e", "where": {"p": {"op": "gt", "value": 3}, "q": "v"}}],
    "steps": {"a": {"type": "exit"}},
}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"duration": "PT5M"}, False),
        ({"duration": "P1D"}, True),  # calendar days follow the local clock across DST
        ({"duration": "P1M"}, True),
        ({"duration": "PT1H", "at_local_time": "09:00"}, True),
        ({"duration": "PT1H", "days": ["mon"]}, True),
        ({"until": "2030-01-01T09:00:00Z"}, False),
        ({"until": "2030-01-01T09:00:00+02:00"}, False),
        ({"until": "2030-01-01T09:00:00"}, True),  # naive: the contact's local time
        ({"until_attribute": "birthday"}, True),
    ],
)
def test_needs_contact_clock(fields: dict[str, Any], expected: bool) -> None:
    assert needs_contact_clock(WaitStep(next="x", **fields)) is expected


def _sig(kind: str, link: str | None = None, send_id: str = "s1") -> EngagementSignal:
    return EngagementSignal("te", send_id, "mail", kind, link, datetime(2026, 1, 1, tzinfo=UTC))


def test_engagement_matches() -> None:
    click_book = WaitForEngagementStep(send_step="mail", event="click", link="book",
                                       timeout="P1D", yes="y", no="n")
    any_open = WaitForEngagementStep(send_step="mail", event="open", timeout="P1D",
                                     yes="y", no="n")
    assert engagement_matches(_sig("click", "book"), click_book, "s1")
    assert not engagement_matches(_sig("click", "other"), click_book, "s1")
    assert not engagement_matches(_sig("open"), click_book, "s1")
    assert not engagement_matches(_sig("click", "book", send_id="old"), click_book, "s1")
    assert engagement_matches(_sig("open"), any_open, "s1")
    assert engagement_matches(_sig("click", "x"), any_open, "s1")  # a click proves an open


def test_parse_definition_is_cached_per_content() -> None:
    first = parse_definition("k", 1, DEFINITION)
    assert parse_definition("k", 1, dict(DEFINITION)) is first
    changed = {**DEFINITION, "name": "other"}
    assert parse_definition("k", 1, changed) is not first


def test_load_definition_shares_one_copy_per_content() -> None:
    # Runs of one version hold the same JSON and parsed objects, not a copy each.
    raw_a, parsed_a = load_definition("shared", 3, json.loads(json.dumps(DEFINITION)))
    raw_b, parsed_b = load_definition("shared", 3, json.loads(json.dumps(DEFINITION)))
    assert raw_b is raw_a and parsed_b is parsed_a
    assert raw_a == DEFINITION
    raw_c, parsed_c = load_definition("shared", 4, json.loads(json.dumps(DEFINITION)))
    assert raw_c is not raw_a and parsed_c is not parsed_a


def test_condition_and_where_json_round_trip() -> None:
    d = parse_definition("k", 1, DEFINITION)
    assert d.goal is not None
    raw_goal = DEFINITION["goal"]["condition"]
    assert condition_json(d.goal.condition) == raw_goal  # type: ignore[union-attr]
    [parsed] = parse_conditions([raw_goal])
    assert condition_json(parsed) == raw_goal
    assert where_json(d.exit_when[0].where) == DEFINITION["exit_when"][0]["where"]  # type: ignore[union-attr]
    assert where_json(None) == {}


def test_parse_conditions_rejects_garbage_as_a_definition_error() -> None:
    with pytest.raises(ApplicationError) as err:
        parse_conditions([{"nope": 1}])
    assert err.value.type == "DefinitionError" and err.value.non_retryable


def test_changed_fields() -> None:
    assert changed_fields({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}) == ["b", "c", "d"]
    assert changed_fields({"a": 1}, {"a": 1}) == []


def test_normalised_date_keeps_only_dates() -> None:
    assert normalised_date("2026-03-01") == "2026-03-01"
    assert normalised_date("2026-03-01T09:30:00Z") == "2026-03-01T09:30:00+00:00"
    assert normalised_date("next tuesday") is None
    assert normalised_date(20260301) is None
