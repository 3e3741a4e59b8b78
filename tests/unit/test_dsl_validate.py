import copy
from typing import Any

import pytest

from dsl.validate import Issue, KnownRefs, validate


def spec_example() -> dict[str, Any]:
    """The example of SPEC section 3, verbatim."""
    return {
        "key": "post-visit",
        "name": "Post-visit follow-up",
        "category": "care_reminders",
        "trigger": {"type": "event", "event": "visit_completed"},
        "reentry": {"mode": "after_exit", "min_interval": "P30D"},
        "exit_when": [{"event": "appointment_booked"}],
        "goal": {"event": "appointment_booked"},
        "start": "thanks",
        "steps": {
            "thanks": {"type": "send_email", "template": "visit-thanks", "next": "engaged?"},
            "engaged?": {
                "type": "wait_for_engagement",
                "send_step": "thanks",
                "event": "click",
                "link": "book",
                "timeout": "P3D",
                "yes": "tag",
                "no": "nudge",
            },
            "nudge": {"type": "send_email", "template": "visit-nudge", "next": "pause"},
            "pause": {"type": "wait", "duration": "P7D", "next": "engaged?"},
            "tag": {
                "type": "update_contact",
                "set": {"stage": "engaged"},
                "add_segments": ["engaged"],
                "next": "done",
            },
            "done": {"type": "exit"},
        },
    }


REFS = KnownRefs(
    templates={"visit-thanks", "visit-nudge"},
    segments={"engaged", "vip"},
    journeys={"post-visit", "other"},
    links={"visit-thanks": {"book", "unsubscribe"}},
)


def codes(result_errors: list[Issue]) -> list[tuple[str | None, str, str]]:
    return [(e.step, e.field, e.code) for e in result_errors]


def with_steps(**steps: Any) -> dict[str, Any]:
    raw = spec_example()
    for key, value in steps.items():
        if value is None:
            del raw["steps"][key]
        else:
            raw["steps"][key] = value
    return raw


def test_spec_example_is_valid() -> None:
    result = validate(spec_example())
    assert result.ok and result.errors == []
    assert result.definition is not None
    assert result.definition.step("engaged?").type == "wait_for_engagement"
    assert validate(spec_example(), REFS).ok


def test_not_an_object() -> None:
    result = validate(["not", "a", "journey"])
    assert codes(result.errors) == [(None, "", "invalid_type")]
    assert result.definition is None


def test_shape_errors_name_step_and_field() -> None:
    raw = with_steps(nudge={"type": "send_email", "next": "pause"})
    result = validate(raw)
    assert result.definition is None
    assert codes(result.errors) == [("nudge", "template", "missing")]


def test_unknown_step_type_and_missing_type() -> None:
    raw = with_steps(x={"type": "sendmail"}, y={"next": "done"}, z="text")
    assert codes(validate(raw).errors) == [
        ("x", "type", "union_tag_invalid"),
        ("y", "type", "union_tag_not_found"),
        ("z", "", "model_attributes_type"),
    ]


def test_start_must_exist() -> None:
    raw = spec_example()
    raw["start"] = "hello"
    errors = codes(validate(raw).errors)
    assert errors[0] == (None, "start", "unknown_step")


@pytest.mark.parametrize(
    ("step", "field"),
    [
        ({"type": "send_email", "template": "visit-thanks", "next": "nope"}, "next"),
        ({"type": "wait", "duration": "P1D", "next": "nope"}, "next"),
        (
            {"type": "wait_for_event", "event": "e", "timeout": "P1D", "yes": "done", "no": "nope"},
            "no",
        ),
        (
            {
                "type": "wait_for_engagement",
                "send_step": "thanks",
                "event": "open",
                "timeout": "P1D",
                "yes": "nope",
                "no": "done",
            },
            "yes",
        ),
        (
            {
                "type": "branch",
                "cases": [
                    {"if": {"segment": "vip"}, "next": "done"},
                    {"if": {"segment": "vip"}, "next": "nope"},
                ],
                "default": "done",
            },
            "cases[1].next",
        ),
        (
            {
                "type": "branch",
                "cases": [{"if": {"segment": "vip"}, "next": "done"}],
                "default": "nope",
            },
            "default",
        ),
        (
            {
                "type": "split",
                "paths": [{"weight": 1, "next": "done"}, {"weight": 1, "next": "nope"}],
            },
            "paths[1].next",
        ),
        ({"type": "update_contact", "next": "nope"}, "next"),
        ({"type": "goto", "step": "nope"}, "step"),
        ({"type": "start_journey", "journey": "other", "next": "nope"}, "next"),
        (
            {
                "type": "branch",
                "cases": [
                    {
                        "if": {"all": [{"segment": "vip"}, {"engaged": "nope", "event": "open"}]},
                        "next": "done",
                    }
                ],
                "default": "done",
            },
            "cases[0].if.all[1].engaged",
        ),
    ],
)
def test_references_to_missing_steps(step: dict[str, Any], field: str) -> None:
    raw = spec_example()
    raw["steps"]["tag"]["next"] = "extra"
    raw["steps"]["extra"] = step
    result = validate(raw, REFS)
    missing = [e for e in result.errors if e.code == "unknown_step"]
    assert codes(missing) == [("extra", field, "unknown_step")]
    assert "'nope'" in missing[0].message
    # Anything else is only "done" becoming unreachable when extra no longer leads there.
    assert {e.code for e in result.errors} - {"unknown_step"} <= {"unreachable_step"}


def test_unreachable_steps() -> None:
    raw = with_steps(
        orphan={"type": "goto", "step": "orphan2"}, orphan2={"type": "exit", "reason": "lost"}
    )
    assert codes(validate(raw).errors) == [
        ("orphan", "", "unreachable_step"),
        ("orphan2", "", "unreachable_step"),
    ]


def test_zero_time_cycle_names_the_steps_in_order() -> None:
    raw = with_steps(
        pause={"type": "update_contact", "set": {"nudged": True}, "next": "again"},
        again={"type": "goto", "step": "nudge"},
    )
    # nudge -> pause -> again -> nudge has no wait (engaged? is not on it).
    result = validate(raw)
    assert codes(result.errors) == [("nudge", "", "zero_time_cycle")]
    assert "nudge -> pause -> again -> nudge" in result.errors[0].message


def test_cycle_through_a_wait_is_fine_and_self_goto_is_not() -> None:
    assert validate(spec_example()).ok  # engaged? -> nudge -> pause -> engaged? has waits
    raw = with_steps(done={"type": "goto", "step": "done"})
    result = validate(raw)
    assert codes(result.errors) == [("done", "", "zero_time_cycle")]
    assert "done -> done" in result.errors[0].message


def test_cycles_reported_even_when_other_steps_are_broken() -> None:
    raw = with_steps(
        done={"type": "goto", "step": "done"}, nudge={"type": "send_email", "next": "pause"}
    )
    assert codes(validate(raw).errors) == [
        ("nudge", "template", "missing"),
        ("done", "", "zero_time_cycle"),
    ]


def test_send_step_must_be_a_send_email_that_runs_before() -> None:
    raw = spec_example()
    raw["steps"]["engaged?"]["send_step"] = "pause"
    assert codes(validate(raw).errors) == [("engaged?", "send_step", "not_a_send_step")]

    raw = spec_example()
    raw["steps"]["engaged?"]["send_step"] = "missing"
    assert codes(validate(raw).errors) == [("engaged?", "send_step", "unknown_step")]

    # A send that only happens after the wait (and never loops back to it).
    raw = with_steps(
        thanks={
            "type": "wait_for_engagement",
            "send_step": "later",
            "event": "open",
            "timeout": "P1D",
            "yes": "later",
            "no": "done",
        },
        later={"type": "send_email", "template": "visit-thanks", "next": "done"},
        **{"engaged?": None, "nudge": None, "pause": None, "tag": None},
    )
    assert codes(validate(raw).errors) == [("thanks", "send_step", "send_step_not_before")]


def test_send_step_before_via_a_loop_counts() -> None:
    # nudge is sent after engaged? but the loop pause -> engaged? brings the run back.
    raw = spec_example()
    raw["steps"]["engaged?"]["send_step"] = "nudge"
    raw["steps"]["engaged?"]["link"] = None
    assert validate(raw).ok


def test_unknown_references_when_refs_are_given() -> None:
    raw = spec_example()
    raw["trigger"] = {"type": "segment_entry", "segment": "ghost-segment"}
    raw["exit_when"] = [
        {"segment_exit": "ghost-exit"},
        {"condition": {"not": {"segment": "ghost-cond"}}},
    ]
    raw["goal"] = {"condition": {"any": [{"segment": "vip"}, {"segment": "ghost-goal"}]}}
    raw["steps"]["thanks"]["template"] = "ghost-template"
    raw["steps"]["tag"]["add_segments"] = ["engaged", "ghost-add"]
    raw["steps"]["tag"]["next"] = "chain"
    raw["steps"]["chain"] = {"type": "start_journey", "journey": "ghost-journey", "next": "done"}
    assert codes(validate(raw, REFS).errors) == [
        (None, "trigger.segment", "unknown_segment"),
        (None, "exit_when[0].segment_exit", "unknown_segment"),
        (None, "exit_when[1].condition.not.segment", "unknown_segment"),
        (None, "goal.condition.any[1].segment", "unknown_segment"),
        ("thanks", "template", "unknown_template"),
        ("tag", "add_segments[1]", "unknown_segment"),
        ("chain", "journey", "unknown_journey"),
    ]
    # Without refs those keys are not checked.
    assert validate(raw).ok


def test_links_are_checked_only_when_known() -> None:
    raw = spec_example()
    raw["steps"]["engaged?"]["link"] = "ghost-link"
    assert codes(validate(raw, REFS).errors) == [("engaged?", "link", "unknown_link")]
    unknown_links = KnownRefs(templates=REFS.templates, links={"visit-nudge": {"x"}})
    assert validate(raw, unknown_links).ok


def test_link_needs_click() -> None:
    raw = spec_example()
    raw["steps"]["engaged?"]["event"] = "open"
    assert codes(validate(raw).errors) == [("engaged?", "link", "link_requires_click")]


def test_split_weights_must_be_positive() -> None:
    raw = spec_example()
    raw["steps"]["thanks"]["next"] = "ab"
    raw["steps"]["ab"] = {
        "type": "split",
        "paths": [
            {"weight": 1, "next": "engaged?"},
            {"weight": 0, "next": "done"},
            {"weight": -2, "next": "done"},
        ],
    }
    assert codes(validate(raw).errors) == [
        ("ab", "paths[1].weight", "greater_than"),
        ("ab", "paths[2].weight", "greater_than"),
    ]


@pytest.mark.parametrize(
    ("pause", "field", "code"),
    [
        ({"type": "wait", "next": "engaged?"}, "duration", "wait_mode"),
        (
            {"type": "wait", "duration": "P1D", "until_attribute": "appt", "next": "engaged?"},
            "duration",
            "wait_mode",
        ),
        (
            {"type": "wait", "duration": "seven days", "next": "engaged?"},
            "duration",
            "invalid_duration",
        ),
        (
            {"type": "wait", "until": "next tuesday", "next": "engaged?"},
            "until",
            "invalid_datetime",
        ),
        (
            {"type": "wait", "duration": "P1D", "at_local_time": "25:00", "next": "engaged?"},
            "at_local_time",
            "invalid_time",
        ),
        (
            {"type": "wait", "duration": "P1D", "days": ["mon", "funday"], "next": "engaged?"},
            "days[1]",
            "literal_error",
        ),
    ],
)
def test_wait_errors(pause: dict[str, Any], field: str, code: str) -> None:
    assert codes(validate(with_steps(pause=pause)).errors) == [("pause", field, code)]


def test_journey_level_time_errors() -> None:
    raw = spec_example()
    raw["reentry"] = {"mode": "after_exit", "min_interval": "30 days"}
    raw["trigger"] = {"type": "schedule", "cron": "0 9 * * *", "timezone": "Mars/Olympus"}
    raw["send_window"] = {"hours": "08:00-25:00"}
    raw["frequency_cap"] = {"max": 2, "period": "P0D"}
    assert codes(validate(raw).errors) == [
        (None, "trigger.timezone", "invalid_timezone"),
        (None, "reentry.min_interval", "invalid_duration"),
        (None, "send_window.hours", "invalid_time"),
        (None, "frequency_cap.period", "invalid_duration"),
    ]


def test_start_journey_cannot_start_itself() -> None:
    raw = spec_example()
    raw["steps"]["tag"]["next"] = "again"
    raw["steps"]["again"] = {"type": "start_journey", "journey": "post-visit", "next": "done"}
    assert codes(validate(raw, REFS).errors) == [("again", "journey", "start_journey_self")]


def test_conflicting_updates() -> None:
    raw = spec_example()
    raw["steps"]["tag"].update(unset=["stage"], remove_segments=["engaged"])
    assert codes(validate(raw).errors) == [
        ("tag", "remove_segments", "conflicting_update"),
        ("tag", "unset", "conflicting_update"),
    ]


def test_engaged_condition_must_name_a_send_step() -> None:
    raw = spec_example()
    raw["goal"] = {"condition": {"engaged": "pause", "event": "click"}}
    assert codes(validate(raw).errors) == [(None, "goal.condition.engaged", "not_a_send_step")]


def test_every_error_is_collected_in_declaration_order() -> None:
    raw = spec_example()
    raw["key"] = "Post Visit"
    raw["steps"] = {
        "done": {"type": "exit", "reason": "Bad Reason"},
        "thanks": {"type": "send_email", "template": "ghost", "next": "engaged?"},
        "engaged?": {
            "type": "wait_for_engagement",
            "send_step": "thanks",
            "event": "click",
            "timeout": "soon",
            "yes": "tag",
            "no": "nudge",
        },
        "nudge": {"type": "send_email", "next": "nowhere"},
        "tag": {
            "type": "update_contact",
            "set": {"stage": "x"},
            "add_segments": ["ghost"],
            "next": "missing",
        },
    }
    first = validate(raw, REFS)
    assert codes(first.errors) == [
        (None, "key", "invalid_key"),
        ("done", "reason", "invalid_key"),
        ("thanks", "template", "unknown_template"),
        ("engaged?", "timeout", "invalid_duration"),
        ("nudge", "template", "missing"),
        ("tag", "next", "unknown_step"),
        ("tag", "add_segments[0]", "unknown_segment"),
    ]
    assert validate(copy.deepcopy(raw), REFS).errors == first.errors


def test_messages_never_contain_values() -> None:
    secret = "jane.doe@example.com"
    raw = spec_example()
    raw["exit_when"] = [{"condition": {"attr": "email", "op": "in", "value": secret}}]
    raw["trigger"] = {
        "type": "event",
        "event": "visit",
        "where": {"email": {"op": "gt", "value": [secret]}},
    }
    raw["steps"]["tag"]["set"] = {"email": secret, "bad name": secret}
    raw["steps"]["thanks"]["template"] = secret
    result = validate(raw)
    assert len(result.errors) == 4
    assert all(secret not in e.message and secret not in e.field for e in result.errors)
