import json
from typing import Any

import pytest
from pydantic import ValidationError

from dsl.cron import check_cron
from dsl.model import (
    AttrCondition,
    BranchStep,
    FrequencyCap,
    JourneyDefinition,
    NeverReentry,
    NotCondition,
    SendEmailStep,
    UpdateContactStep,
    WaitStep,
    WhereOp,
)


def every_feature() -> dict[str, Any]:
    """A journey using every step type, condition form and journey-level field."""
    return {
        "key": "everything_1",
        "name": "Every feature",
        "description": "exercise",
        "category": "care_reminders",
        "trigger": {
            "type": "event",
            "event": "visit_completed",
            "where": {"clinic": "north", "visits": {"op": "gte", "value": 2}},
        },
        "reentry": {"mode": "after_exit", "min_interval": "P30D"},
        "exit_when": [
            {"event": "appointment_booked", "where": {"kind": {"op": "in", "value": ["a", "b"]}}},
            {"segment_exit": "active"},
            {"condition": {"attr": "deceased", "op": "eq", "value": True}},
        ],
        "goal": {"condition": {"event": "appointment_booked", "within": "P7D"}, "exit": False},
        "start": "hello",
        "send_window": {"hours": "08:00-20:00", "days": ["mon", "tue", "wed", "thu", "fri"]},
        "frequency_cap": {"max": 3, "period": "P7D", "action": "skip"},
        "steps": {
            "hello": {
                "type": "send_email",
                "template": "hello",
                "category": "news",
                "next": "opened?",
                "max_visits": 2,
            },
            "opened?": {
                "type": "wait_for_engagement",
                "send_step": "hello",
                "event": "open",
                "timeout": "P2D",
                "yes": "route",
                "no": "ping",
            },
            "ping": {
                "type": "wait_for_event",
                "event": "form_submitted",
                "where": {"form": "intake"},
                "timeout": "PT36H",
                "yes": "route",
                "no": "ab",
            },
            "ab": {
                "type": "split",
                "paths": [{"weight": 90, "next": "route"}, {"weight": 10.5, "next": "holdout"}],
            },
            "route": {
                "type": "branch",
                "default": "pause",
                "cases": [
                    {
                        "if": {
                            "all": [
                                {"attr": "age", "op": "gte", "value": 65},
                                {
                                    "any": [
                                        {"segment": "vip"},
                                        {"engaged": "hello", "event": "open"},
                                    ]
                                },
                                {"not": {"attr": "email_bounced", "op": "exists"}},
                            ]
                        },
                        "next": "tag",
                    },
                    {"if": {"attr": "plan", "op": "not_in", "value": ["free"]}, "next": "other"},
                ],
            },
            "pause": {
                "type": "wait",
                "until_attribute": "appointment_at",
                "offset": "-P1D",
                "at_local_time": "09:00",
                "days": ["mon", "fri"],
                "next": "until",
            },
            "until": {"type": "wait", "until": "2026-06-01T09:00:00", "next": "tag"},
            "tag": {
                "type": "update_contact",
                "set": {"stage": "engaged", "score": 3, "flags": {"a": [1, None]}},
                "unset": ["old"],
                "add_segments": ["engaged"],
                "remove_segments": ["new"],
                "next": "loop",
            },
            "loop": {"type": "goto", "step": "done", "max_visits": 3},
            "other": {"type": "start_journey", "journey": "other-journey", "next": "done"},
            "handoff": {"type": "start_journey", "journey": "other-journey"},
            "holdout": {"type": "exit", "reason": "holdout"},
            "done": {"type": "exit"},
        },
    }


def test_every_feature_round_trips_through_json() -> None:
    definition = JourneyDefinition.model_validate(every_feature())
    dumped = definition.model_dump(mode="json")
    again = JourneyDefinition.model_validate(json.loads(json.dumps(dumped)))
    assert again == definition
    assert again.model_dump(mode="json") == dumped


def test_json_names_are_used_for_keyword_fields() -> None:
    dumped = JourneyDefinition.model_validate(every_feature()).model_dump(mode="json")
    route = dumped["steps"]["route"]
    assert set(route["cases"][0]) == {"if", "next"}
    condition = route["cases"][0]["if"]
    assert "all" in condition and "any" in condition["all"][1]
    assert "not" in condition["all"][2]
    assert dumped["steps"]["tag"]["set"]["stage"] == "engaged"
    assert dumped["frequency_cap"]["max"] == 3


def test_parsed_types_and_defaults() -> None:
    definition = JourneyDefinition.model_validate(every_feature())
    assert isinstance(definition.step("tag"), UpdateContactStep)
    route = definition.step("route")
    assert isinstance(route, BranchStep)
    assert isinstance(route.cases[0].if_.all_[2], NotCondition)  # type: ignore[union-attr]
    assert definition.step("done").max_visits == 1
    assert definition.step("hello").max_visits == 2
    assert definition.trigger.where["visits"] == WhereOp(op="gte", value=2)  # type: ignore[union-attr,index]
    assert definition.trigger.where["clinic"] == "north"  # type: ignore[union-attr,index]

    minimal = JourneyDefinition.model_validate(
        {"key": "m", "name": "M", "category": "c", "start": "x", "steps": {"x": {"type": "exit"}}}
    )
    assert minimal.trigger.type == "manual"
    assert minimal.reentry == NeverReentry()
    assert minimal.exit_when == [] and minimal.goal is None
    cap = FrequencyCap.model_validate({"max": 1, "period": "P1D"})
    assert cap.action == "defer"


def test_models_can_be_built_by_field_name() -> None:
    step = SendEmailStep(template="t", next="n")
    assert step.type == "send_email"
    condition = AttrCondition(attr="a", op="exists")
    assert condition.value is None
    with pytest.raises(ValidationError):
        step.template = "other"  # frozen


def errors(model: Any, raw: Any) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(raw)
    return [(tuple(e["loc"]), e["type"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"attr": "a", "op": "eq"}, "missing_value"),
        ({"attr": "a", "op": "eq", "value": None}, "missing_value"),
        ({"attr": "a", "op": "in", "value": "x"}, "invalid_value"),
        ({"attr": "a", "op": "not_in", "value": 3}, "invalid_value"),
        ({"attr": "a", "op": "gt", "value": [1]}, "invalid_value"),
        ({"attr": "a", "op": "lt", "value": True}, "invalid_value"),
        ({"attr": "a", "op": "exists", "value": "x"}, "invalid_value"),
        ({"attr": "a", "op": "contains", "value": ["x"]}, "invalid_value"),
        ({"attr": "a", "op": "like", "value": "x"}, "literal_error"),
        ({"attr": "has space", "op": "exists"}, "invalid_name"),
    ],
)
def test_attr_condition_value_must_suit_op(raw: dict[str, Any], code: str) -> None:
    assert [c for _, c in errors(AttrCondition, raw)] == [code]


def wait_raw(**fields: Any) -> dict[str, Any]:
    return {"type": "wait", "next": "n", **fields}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (wait_raw(), "wait_mode"),
        (wait_raw(duration="P1D", until="2026-01-01T00:00:00Z"), "wait_mode"),
        (wait_raw(duration="P1D", until_attribute="x"), "wait_mode"),
        (wait_raw(duration="P1D", offset="P1D"), "offset_without_attribute"),
        (wait_raw(duration="PT0S"), "invalid_duration"),
        (wait_raw(duration="-P1D"), "invalid_duration"),
        (wait_raw(duration="1 day"), "invalid_duration"),
        (wait_raw(until="tomorrow"), "invalid_datetime"),
        (wait_raw(until="2026-01-01"), "invalid_datetime"),
        (wait_raw(duration="P1D", at_local_time="9am"), "invalid_time"),
        (wait_raw(duration="P1D", days=[]), "too_short"),
        (wait_raw(duration="P1D", days=["mon", "mon"]), "duplicate_day"),
        (wait_raw(duration="P1D", days=["monday"]), "literal_error"),
        (wait_raw(duration="P1D", max_visits=0), "greater_than_equal"),
        (wait_raw(duration="P1D", colour="red"), "extra_forbidden"),
    ],
)
def test_wait_step_rules(raw: dict[str, Any], code: str) -> None:
    assert code in [c for _, c in errors(WaitStep, raw)]


def test_wait_offset_may_be_negative() -> None:
    step = WaitStep.model_validate(wait_raw(until_attribute="appt", offset="-PT2H"))
    assert step.offset == "-PT2H"


def journey(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "key": "j",
        "name": "J",
        "category": "c",
        "start": "x",
        "steps": {"x": {"type": "exit"}},
    }
    raw.update(overrides)
    return raw


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"key": "Post Visit"}, "invalid_key"),
        ({"key": "a/b"}, "invalid_key"),
        ({"name": ""}, "string_too_short"),
        ({"steps": {}}, "too_short"),
        ({"steps": {"bad\nkey": {"type": "exit"}}}, "invalid_step_key"),
        ({"trigger": {"type": "webhook"}}, "union_tag_invalid"),
        ({"trigger": {"type": "schedule"}}, "schedule_form"),
        ({"trigger": {"type": "schedule", "cron": "@daily", "attribute": "dob"}}, "schedule_form"),
        ({"trigger": {"type": "schedule", "cron": "@daily", "offset": "P1D"}}, "schedule_form"),
        ({"trigger": {"type": "schedule", "attribute": "dob", "timezone": "UTC"}}, "schedule_form"),
        (
            {"trigger": {"type": "schedule", "cron": "@daily", "timezone": "Mars/Base"}},
            "invalid_timezone",
        ),
        ({"trigger": {"type": "schedule", "cron": "61 * * * *"}}, "invalid_cron"),
        ({"trigger": {"type": "segment_entry"}}, "missing"),
        ({"reentry": {"mode": "after_exit"}}, "missing"),
        ({"reentry": {"mode": "sometimes"}}, "union_tag_invalid"),
        ({"exit_when": [{"foo": 1}]}, "invalid_exit_rule"),
        ({"exit_when": [{"condition": {"bogus": 1}}]}, "invalid_condition"),
        ({"goal": {"exit": True}}, "invalid_goal"),
        ({"send_window": {"hours": "20:00-20:00"}}, "invalid_time"),
        ({"send_window": {"hours": "8-20"}}, "invalid_time"),
        ({"frequency_cap": {"max": 0, "period": "P1D"}}, "greater_than_equal"),
        ({"frequency_cap": {"max": 1, "period": "P1D", "action": "drop"}}, "literal_error"),
        ({"frequency_cap": {"max": 1, "period": "soon"}}, "invalid_duration"),
        ({"colour": "red"}, "extra_forbidden"),
    ],
)
def test_journey_level_rules(overrides: dict[str, Any], code: str) -> None:
    assert code in [c for _, c in errors(JourneyDefinition, journey(**overrides))]


@pytest.mark.parametrize(
    "step",
    [
        {
            "type": "wait_for_engagement",
            "send_step": "s",
            "event": "open",
            "link": "book",
            "timeout": "P1D",
            "yes": "a",
            "no": "b",
        },
        {"type": "split", "paths": [{"weight": 0, "next": "a"}]},
        {"type": "split", "paths": []},
        {"type": "branch", "cases": [], "default": "a"},
        {"type": "start_journey", "journey": "Not A Slug"},
        {"type": "exit", "reason": "Has PHI?"},
    ],
)
def test_step_shape_rules(step: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        JourneyDefinition.model_validate(journey(steps={"x": step}))


def test_schedule_forms() -> None:
    cron = JourneyDefinition.model_validate(
        journey(trigger={"type": "schedule", "cron": "0 9 * * mon-fri", "timezone": "Europe/Paris"})
    )
    assert cron.trigger.type == "schedule"
    birthday = JourneyDefinition.model_validate(
        journey(
            trigger={
                "type": "schedule",
                "attribute": "birthday",
                "offset": "-P7D",
                "at_local_time": "10:00",
            }
        )
    )
    assert birthday.trigger.attribute == "birthday"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "expression",
    [
        "0 9 * * 1-5",
        "*/15 * * * *",
        "0 0 1 jan,jul *",
        "@daily",
        "@HOURLY",
        "30 8 * * mon-fri",
        "0 9 1-7 * 0",
        "0 9 * * 7",
        "0-30/10 0,12 * * *",
    ],
)
def test_cron_accepts(expression: str) -> None:
    check_cron(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "5-1 * * * *",
        "a b c d e",
        "* * * * * *",
        "* * * *",
        "@sometimes",
        "",
        "1,,2 * * * *",
        "* * * foo *",
    ],
)
def test_cron_rejects(expression: str) -> None:
    with pytest.raises(ValueError):
        check_cron(expression)
