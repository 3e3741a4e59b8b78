"""Heartbeats that are safe in local activities too (journey steps run as local
activities from the `local-step-activities` patch on; older runs as activity tasks)."""

from __future__ import annotations

from temporalio import activity


def beat() -> None:
    """Heartbeat an activity task; a local activity has none (its liveness is its
    workflow task's, which the SDK keeps alive)."""
    if not activity.info().is_local:
        activity.heartbeat()
