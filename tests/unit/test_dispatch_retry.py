"""Pure parts of durable event delivery: the backoff, which Temporal failures are worth a
retry, and how what earlier tries did is carried into the next try."""

from __future__ import annotations

from datetime import timedelta

from temporalio.api.common.v1 import GrpcStatus
from temporalio.service import RPCError, RPCStatusCode

from services.dispatch import RETRY_MAX, Reach, retry_delay
from services.temporal_errors import misconfigured, refusal_code, run_not_found, transient


def _rpc(status: RPCStatusCode, detail: str = "") -> RPCError:
    grpc = GrpcStatus(code=int(status), message="m")
    if detail:
        grpc.details.add(type_url=f"type.googleapis.com/temporal.api.errordetails.v1.{detail}")
    return RPCError("m", status, grpc.SerializeToString())


def test_backoff_doubles_from_five_seconds_to_ten_minutes() -> None:
    assert [retry_delay(n).total_seconds() for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert retry_delay(8) == timedelta(seconds=600) == RETRY_MAX
    assert retry_delay(10_000) == RETRY_MAX  # no overflow however often it failed


def test_transient_is_about_transport_and_load_not_bugs() -> None:
    for status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
    ):
        err = _rpc(status)
        assert transient(err) and not misconfigured(err) and not run_not_found(err)
    assert transient(TimeoutError())
    assert transient(ConnectionResetError())
    assert transient(RuntimeError("Failed client connect: Server connection error"))
    assert not transient(RuntimeError("something else"))
    assert not transient(ValueError("bad input"))


def test_data_problems_are_permanent_with_a_reason_code() -> None:
    for status in (
        RPCStatusCode.INVALID_ARGUMENT,
        RPCStatusCode.FAILED_PRECONDITION,
        RPCStatusCode.UNIMPLEMENTED,
        RPCStatusCode.ALREADY_EXISTS,
    ):
        err = _rpc(status)
        # Neither retried nor an answer: the callers record it as refused, for good.
        assert not transient(err) and not misconfigured(err) and not run_not_found(err)
        assert refusal_code(err) == f"temporal_{status.name.lower()}"
    # A workflow not found is an answer (the run closed), not a failure.
    gone = _rpc(RPCStatusCode.NOT_FOUND, "NotFoundFailure")
    assert run_not_found(gone) and not transient(gone) and not misconfigured(gone)


def test_a_misconfigured_deployment_is_retried_not_final() -> None:
    """A wrong namespace or an expired credential is fixed by an operator: giving up would
    lose everything received meanwhile."""
    for status in (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED):
        err = _rpc(status)
        assert misconfigured(err) and not run_not_found(err)
        assert not transient(err)  # (told apart: logged loudly)
        assert refusal_code(err) == f"temporal_{status.name.lower()}"
    missing_ns = _rpc(RPCStatusCode.NOT_FOUND, "NamespaceNotFoundFailure")
    assert misconfigured(missing_ns) and not transient(missing_ns)
    assert not run_not_found(missing_ns)
    assert refusal_code(missing_ns) == "temporal_namespace_not_found"


def test_a_partly_failed_delivery_reports_pending_and_keeps_everything_it_did() -> None:
    reach = Reach(
        started=["a"],
        signalled=["b"],
        failed=["c", "c"],
        skipped={"d": "reentry_never"},
        refused={"e": "temporal_invalid_argument"},
        misconfigured={"f": "temporal_unauthenticated"},
    )
    reach.failed.append("f")
    out = reach.as_dict()
    assert out["dispatch"] == "pending"
    assert out["journeys"] == [
        {"journey": "a", "action": "started"},
        {"journey": "b", "action": "signalled"},
        {"journey": "d", "action": "skipped", "reason": "reentry_never"},
        {"journey": "e", "action": "failed", "reason": "temporal_invalid_argument"},
        {"journey": "c", "action": "pending"},
        {"journey": "f", "action": "pending", "reason": "temporal_unauthenticated"},
    ]
    again = Reach.resumed(out)
    assert again.started == ["a"] and again.signalled == ["b"] and again.failed == []
    assert again.skipped == {"d": "reentry_never"}
    assert again.refused == {"e": "temporal_invalid_argument"} and again.misconfigured == {}
    assert again.settled() == {"a", "b", "d", "e"}  # only `c` and `f` are tried again
    assert again.as_dict()["dispatch"] == "failed"  # nothing pending; a refusal stands
    assert Reach().as_dict()["dispatch"] == "delivered"
    assert Reach.resumed(None).settled() == set()
