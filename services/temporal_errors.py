"""Which Temporal call failures are worth trying again, and which are a configuration or
data problem that no retry will cure.

Transient: the server or the path to it is down, overloaded or restarting (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED), a lazily connected client
that never reached it, and INTERNAL / UNKNOWN, which a server answers for passing
persistence faults and a proxy for reset connections (giving up on those would lose
events; retrying a real bug is bounded and logged). Everything else (INVALID_ARGUMENT,
PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION, UNIMPLEMENTED, the namespace not
found, ...) is permanent. NOT_FOUND of a workflow is neither: the run has closed, which
callers handle as an answer, not a failure.
"""

from __future__ import annotations

from temporalio.service import RPCError, RPCStatusCode

TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
    }
)
_NAMESPACE_NOT_FOUND = "NamespaceNotFoundFailure"


def transient(exc: BaseException) -> bool:
    """Temporal did not take the call for now (down, restarting, network): try later."""
    if isinstance(exc, RPCError):
        return exc.status in TRANSIENT
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    # A lazily connected client that has never reached the server raises this.
    return isinstance(exc, RuntimeError) and "client connect" in str(exc)


def namespace_not_found(exc: RPCError) -> bool:
    if exc.status != RPCStatusCode.NOT_FOUND:
        return False
    try:
        details = exc.grpc_status.details
    except Exception:  # an unparsable status: judge by the message
        return "namespace" in exc.message.lower()
    return any(d.type_url.endswith(_NAMESPACE_NOT_FOUND) for d in details)


def run_not_found(exc: BaseException) -> bool:
    """The workflow (or run) is gone or closed; not a namespace missing."""
    return (
        isinstance(exc, RPCError)
        and exc.status == RPCStatusCode.NOT_FOUND
        and not namespace_not_found(exc)
    )


def permanent(exc: BaseException) -> bool:
    """A Temporal refusal no retry cures (configuration or data): record, log, stop."""
    return isinstance(exc, RPCError) and not transient(exc) and not run_not_found(exc)


def refusal_code(exc: RPCError) -> str:
    """A reason code for the refusal (status only, never the message: it may hold ids)."""
    if namespace_not_found(exc):
        return "temporal_namespace_not_found"
    return f"temporal_{exc.status.name.lower()}"
