"""Small-count suppression and rates for roles without PHI access."""

from __future__ import annotations

from typing import Any

from services.report_privacy import may_see_phi, ratio, suppress_small_counts


def test_counts_one_to_ten_are_suppressed_and_flagged() -> None:
    report: dict[str, Any] = {
        "version": 3,
        "versions": [1, 2],
        "include_automated": True,
        "runs": {"started": 120, "ended": 10, "goal": {"conversions": 0}},
        "steps": [{"step": "a", "entered": 11, "exits": [{"reason": "goal", "count": 1}]}],
    }
    assert suppress_small_counts(report) is True
    assert report["version"] == 3 and report["versions"] == [1, 2]
    assert report["include_automated"] is True  # a bool is not a count
    assert report["runs"] == {
        "started": 120,
        "ended": None,
        "suppressed": True,
        "goal": {"conversions": 0},
    }
    step = report["steps"][0]
    assert step["entered"] == 11 and "suppressed" not in step
    assert step["exits"] == [{"reason": "goal", "count": None, "suppressed": True}]


def test_nothing_to_suppress() -> None:
    report = {"a": {"b": 0, "c": 11, "d": 5000}}
    assert suppress_small_counts(report) is False
    assert report == {"a": {"b": 0, "c": 11, "d": 5000}}


def test_ratio_of_unknown_is_unknown() -> None:
    assert ratio(1, 3) == 0.3333
    assert ratio(None, 3) is None and ratio(3, None) is None and ratio(3, 0) is None


def test_phi_roles() -> None:
    assert all(may_see_phi(r) for r in ("admin", "designer", "operator"))
    assert not any(may_see_phi(r) for r in ("marketer", "auditor", "integration"))
