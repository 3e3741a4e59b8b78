from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.common import WorkflowIDReusePolicy

from core.models import JourneyVersion
from services.reentry import LastRun, refusal, reuse_policy
from services.triggers import Entry, TriggerSnapshot

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _ended(ago: timedelta) -> LastRun:
    return LastRun("r1", "completed", NOW - ago - timedelta(hours=1), NOW - ago)


def test_first_entry_is_always_allowed() -> None:
    for rule in (None, {"mode": "never"}, {"mode": "always"},
                 {"mode": "after_exit", "min_interval": "P30D"}):
        assert refusal(rule, None, NOW) is None


def test_a_running_run_blocks_every_rule() -> None:
    running = LastRun("r1", "running", NOW - timedelta(days=1), None)
    for rule in (None, {"mode": "always"}, {"mode": "after_exit", "min_interval": "PT1S"}):
        assert refusal(rule, running, NOW) == "already_running"


def test_never_is_the_default() -> None:
    assert refusal(None, _ended(timedelta(days=400)), NOW) == "reentry_never"
    assert refusal({"mode": "never"}, _ended(timedelta(days=400)), NOW) == "reentry_never"
    assert reuse_policy(None) == WorkflowIDReusePolicy.REJECT_DUPLICATE
    assert reuse_policy({"mode": "always"}) == WorkflowIDReusePolicy.ALLOW_DUPLICATE


def test_after_exit_counts_from_the_end_of_the_last_run() -> None:
    rule = {"mode": "after_exit", "min_interval": "P30D"}
    assert refusal(rule, _ended(timedelta(days=29)), NOW) == "reentry_min_interval"
    assert refusal(rule, _ended(timedelta(days=30)), NOW) is None
    # Calendar months: exited Jan 31, P1M later is Feb 28.
    monthly = {"mode": "after_exit", "min_interval": "P1M"}
    jan31 = LastRun(
        "r", "exited", datetime(2026, 1, 30, tzinfo=UTC), datetime(2026, 1, 31, tzinfo=UTC)
    )
    assert refusal(monthly, jan31, datetime(2026, 2, 27, 23, tzinfo=UTC)) == "reentry_min_interval"
    assert refusal(monthly, jan31, datetime(2026, 2, 28, tzinfo=UTC)) is None


def test_always_allows_a_new_run_once_the_last_ended() -> None:
    assert refusal({"mode": "always"}, _ended(timedelta(seconds=1)), NOW) is None


def _entry(key: str, where: dict | None = None) -> Entry:  # type: ignore[type-arg]
    return Entry(JourneyVersion(journey_key=key, version=1, definition={}), where, None)


def test_trigger_snapshot_matches_name_where_and_segment() -> None:
    snap = TriggerSnapshot(
        (3, NOW),
        by_event={
            "visit": [_entry("all-visits"), _entry("cardio", {"dept": "cardiology"}),
                      _entry("big", {"cost": {"op": "gte", "value": 100}})],
            "segment_entry": [_entry("any-segment")],
        },
        by_segment={"vip": [_entry("vip-welcome")]},
    )
    keys = lambda name, props: sorted(e.journey_key for e in snap.entries_for(name, props))  # noqa: E731
    assert keys("visit", {}) == ["all-visits"]
    assert keys("visit", {"dept": "cardiology", "cost": 150}) == ["all-visits", "big", "cardio"]
    assert keys("visit", {"dept": "oncology", "cost": 99}) == ["all-visits"]
    assert keys("segment_entry", {"segment": "vip"}) == ["any-segment", "vip-welcome"]
    assert keys("segment_entry", {"segment": "other"}) == ["any-segment"]
    assert keys("unknown", {}) == []
