"""Pure parts of durable event delivery: the backoff, what counts as 'Temporal did not take
it', and how a partly failed delivery is carried into the next try."""

from __future__ import annotations

from datetime import timedelta

from temporalio.service import RPCError, RPCStatusCode

from services.dispatch import RETRY_MAX, Reach, retry_delay, unreachable


def test_backoff_doubles_from_five_seconds_to_ten_minutes() -> None:
    assert [retry_delay(n).total_seconds() for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert retry_delay(8) == timedelta(seconds=600) == RETRY_MAX
    assert retry_delay(10_000) == RETRY_MAX  # no overflow however often it failed


def test_unreachable_is_about_transport_not_bugs() -> None:
    assert unreachable(RPCError("gone", RPCStatusCode.UNAVAILABLE, b""))
    assert unreachable(TimeoutError())
    assert unreachable(RuntimeError("Failed client connect: Server connection error"))
    assert not unreachable(RuntimeError("something else"))
    assert not unreachable(ValueError("bad input"))


def test_a_partly_failed_delivery_reports_pending_and_keeps_its_starts() -> None:
    reach = Reach(started=["a"], signalled=["b"], failed=["c", "c"])
    out = reach.as_dict()
    assert out["dispatch"] == "pending"
    assert out["journeys"] == [
        {"journey": "a", "action": "started"},
        {"journey": "b", "action": "signalled"},
        {"journey": "c", "action": "pending"},
    ]
    again = Reach.resumed(out)
    assert again.started == ["a"] and again.signalled == [] and again.failed == []
    assert Reach().as_dict()["dispatch"] == "delivered"
    assert Reach.resumed(None).started == []
