from typing import Any

from pydantic import TypeAdapter

from dsl.graph import reachable, reaches, references, successors, zero_time_cycles
from dsl.model import Step, StepUnion

STEP: TypeAdapter[StepUnion] = TypeAdapter(Step)


def steps(raw: dict[str, dict[str, Any]]) -> dict[str, StepUnion]:
    return {key: STEP.validate_python(value) for key, value in raw.items()}


def goto(target: str) -> dict[str, Any]:
    return {"type": "goto", "step": target}


def test_references_name_every_outgoing_field() -> None:
    branch = STEP.validate_python(
        {
            "type": "branch",
            "default": "d",
            "cases": [{"if": {"segment": "s"}, "next": "a"}, {"if": {"segment": "t"}, "next": "a"}],
        }
    )
    assert references(branch) == [("cases[0].next", "a"), ("cases[1].next", "a"), ("default", "d")]
    assert successors(branch) == ["a", "d"]
    split = STEP.validate_python(
        {"type": "split", "paths": [{"weight": 1, "next": "p"}, {"weight": 2, "next": "q"}]}
    )
    assert references(split) == [("paths[0].next", "p"), ("paths[1].next", "q")]
    wait_event = STEP.validate_python(
        {"type": "wait_for_event", "event": "e", "timeout": "P1D", "yes": "y", "no": "n"}
    )
    assert references(wait_event) == [("yes", "y"), ("no", "n")]
    assert references(STEP.validate_python(goto("g"))) == [("step", "g")]
    assert references(STEP.validate_python({"type": "start_journey", "journey": "j"})) == []
    assert references(STEP.validate_python({"type": "exit"})) == []
    send = STEP.validate_python({"type": "send_email", "template": "t", "next": "n"})
    assert references(send) == [("next", "n")]


def test_reachable_in_breadth_first_order_ignoring_missing() -> None:
    graph = steps({"a": goto("b"), "b": goto("missing"), "c": goto("a"), "d": {"type": "exit"}})
    assert reachable(graph, "a") == ["a", "b"]
    assert reachable(graph, "c") == ["c", "a", "b"]
    assert reachable(graph, "nope") == []
    assert reaches(graph, "c", "b") and not reaches(graph, "b", "c")
    assert not reaches(graph, "a", "a")


def test_zero_time_cycles() -> None:
    graph = steps(
        {
            "a": goto("b"),
            "b": {
                "type": "branch",
                "cases": [{"if": {"segment": "s"}, "next": "c"}],
                "default": "a",
            },
            "c": {"type": "wait", "duration": "P1D", "next": "a"},  # a-c-a waits, a-b-a does not
            "self": goto("self"),
            "x": {"type": "send_email", "template": "t", "next": "y"},
            "y": {"type": "update_contact", "next": "z"},
            "z": goto("x"),
            "ok1": {
                "type": "wait_for_event",
                "event": "e",
                "timeout": "P1D",
                "yes": "ok2",
                "no": "ok2",
            },
            "ok2": goto("ok1"),
        }
    )
    assert zero_time_cycles(graph) == [["a", "b", "a"], ["self", "self"], ["x", "y", "z", "x"]]


def test_cycle_starts_at_first_declared_step() -> None:
    graph = steps({"q": goto("r"), "p": goto("q"), "r": goto("p")})
    assert zero_time_cycles(graph) == [["q", "r", "p", "q"]]


def test_long_chains_do_not_recurse() -> None:
    raw = {f"s{i}": goto(f"s{i + 1}") for i in range(5000)}
    raw["s5000"] = goto("s0")
    cycles = zero_time_cycles(steps(raw))
    assert len(cycles) == 1 and len(cycles[0]) == 5002
    assert len(reachable(steps(raw), "s0")) == 5001
