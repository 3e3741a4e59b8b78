"""Which Temporal call failures are worth trying again, and which are a data problem that
no retry will cure.

Transient: the server or the path to it is down, overloaded or restarting (UNAVAILABLE,
DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, CANCELLED), a lazily connected client
that never reached it, and INTERNAL / UNKNOWN, which a server answers for passing
persistence faults and a proxy for reset connections (giving up on those would lose
events; retrying a real bug is bounded and logged). Misconfigured: the namespace not
found, PERMISSION_DENIED, UNAUTHENTICATED: this deployment's configuration or credentials
are wrong (a wrong TEMPORAL_NAMESPACE, an expired certificate or key); an operator fixes
that, so these are retried like transient failures (giving up would lose every event
received meanwhile) and logged loudly. Everything else (INVALID_ARGUMENT,
FAILED_PRECONDITION, UNIMPLEMENTED, ...) is about the call itself and permanent. NOT_FOUND
of a workflow is neither: the run has closed, which callers handle as an answer, not a
failure.
"""

from __future__ import annotations

from typing import TypeGuard

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
# Refusals an operator cures by fixing the deployment's configuration or credentials.
MISCONFIGURED = frozenset({RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED})
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


def misconfigured(exc: BaseException) -> TypeGuard[RPCError]:
    """Temporal refused the call because this deployment is set up wrong (namespace,
    credentials): retried (with backoff) once an operator fixes it, and logged loudly."""
    return isinstance(exc, RPCError) and (exc.status in MISCONFIGURED or namespace_not_found(exc))


def refusal_code(exc: RPCError) -> str:
    """A reason code for the refusal (status only, never the message: it may hold ids)."""
    if namespace_not_found(exc):
        return "temporal_namespace_not_found"
    return f"temporal_{exc.status.name.lower()}"
