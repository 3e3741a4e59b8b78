"""The segment condition forms (engagement, journey) in the DSL and the evaluator, and what
the SQL compiler records a rule as reading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from dsl.conditions import EngagementFact, SnapshotContext, evaluate
from dsl.model import Condition, ConditionUnion, EngagementCondition, JourneyCondition
from services.segment_sql import RuleNotSupported, compile_rule

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
CONDITION: TypeAdapter[ConditionUnion] = TypeAdapter(Condition)


def ctx(**kw: Any) -> SnapshotContext:
    facts = [
        EngagementFact("click", NOW - timedelta(days=10), "screening", "invite", "book"),
        EngagementFact("open", NOW - timedelta(days=100), "newsletter", "send"),
    ]
    return SnapshotContext(attributes={}, segments=set(), now=NOW, human_engagements=facts,
                           journeys=frozenset({"onboarding"}), **kw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"engagement": "click"}, True),
        ({"engagement": "click", "within": "P30D"}, True),
        ({"engagement": "click", "within": "P7D"}, False),
        ({"engagement": "click", "journey": "screening", "step": "invite", "link": "book"}, True),
        ({"engagement": "click", "journey": "screening", "link": "other"}, False),
        ({"engagement": "click", "journey": "newsletter"}, False),
        ({"engagement": "open", "within": "P90D"}, False),
        ({"engagement": "open"}, True),
        ({"journey": "onboarding"}, True),
        ({"journey": "onboarding", "in": False}, False),
        ({"journey": "screening", "in": False}, True),
        ({"not": {"engagement": "open", "within": "P90D"}}, True),
    ],
)
def test_evaluate(raw: dict[str, Any], expected: bool) -> None:
    assert evaluate(CONDITION.validate_python(raw), ctx()) is expected


def test_parsing_picks_the_form_and_checks_fields() -> None:
    assert isinstance(CONDITION.validate_python({"engagement": "open", "journey": "j"}),
                      EngagementCondition)
    assert isinstance(CONDITION.validate_python({"journey": "j"}), JourneyCondition)
    for bad in ({"engagement": "open", "step": "s"}, {"engagement": "open", "link": "l"},
                {"engagement": "view"}, {"journey": "Bad Key"}):
        with pytest.raises(ValidationError):
            CONDITION.validate_python(bad)
    dumped = CONDITION.validate_python({"journey": "j", "in": False}).model_dump(mode="json")
    assert dumped == {"journey": "j", "in": False}


def test_compiled_rules_say_what_they_read() -> None:
    rule = CONDITION.validate_python(
        {"all": [{"attr": "age", "op": "gte", "value": 50},
                 {"any": [{"segment": "vip"}, {"event": "visit", "within": "P90D"}]},
                 {"not": {"engagement": "open", "within": "P30D"}},
                 {"journey": "onboarding", "in": False}]}
    )
    compiled = compile_rule(rule)
    assert compiled.deps == ["attr:age", "engagement", "event:visit", "journey:onboarding",
                             "segment:vip"]
    assert compiled.recheck is not None and compiled.recheck.startswith("LEAST(")
    assert len(compiled.windows) == 2
    params = compiled.bind(NOW)
    assert sorted(v for k, v in params.items() if k in compiled.windows) == [
        NOW - timedelta(days=90), NOW - timedelta(days=30)
    ]
    plain = compile_rule(CONDITION.validate_python({"attr": "state", "op": "eq", "value": "MA"}))
    assert plain.recheck is None and "@>" in plain.predicate  # GIN-indexable containment


def test_run_scoped_engaged_is_not_a_segment_rule() -> None:
    with pytest.raises(RuleNotSupported) as caught:
        compile_rule(CONDITION.validate_python({"not": {"engaged": "thanks", "event": "open"}}))
    assert caught.value.path == "rule.not.engaged"
