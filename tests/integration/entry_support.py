"""Shared set-up for the journey-entry tests: contacts and journeys through the API, and
reading what reached a workflow from its Temporal history."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.helpers import eventually
from workflows.journey import workflow_id


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def contact(api: httpx.AsyncClient, **extra: Any) -> str:
    t = tag()
    r = await api.post(
        "/v1/contacts",
        json={"external_id": f"mrn-{t}", "email": f"p-{t}@example.com", **extra},
    )
    assert r.status_code in (200, 201), r.text
    return str(r.json()["id"])


def definition(
    key: str,
    trigger: dict[str, Any] | None = None,
    *,
    reentry: dict[str, Any] | None = None,
    hold: bool = True,
) -> dict[str, Any]:
    """A journey that waits a day (so its run stays open) or ends at once (hold=False)."""
    steps: dict[str, Any] = {"done": {"type": "exit"}}
    if hold:
        steps["hold"] = {"type": "wait", "duration": "P1D", "next": "done"}
    d: dict[str, Any] = {
        "key": key,
        "name": f"Entry test {key}",
        "category": "care_reminders",
        "trigger": trigger or {"type": "manual"},
        "start": "hold" if hold else "done",
        "steps": steps,
    }
    if reentry is not None:
        d["reentry"] = reentry
    return d


async def published(api: httpx.AsyncClient, d: dict[str, Any]) -> str:
    r = await api.post("/v1/journeys", json=d)
    assert r.status_code == 201, r.text
    r = await api.post(f"/v1/journeys/{d['key']}/publish")
    assert r.status_code == 200, r.text
    return str(d["key"])


async def signals(temporal: Client, journey_key: str, contact_id: str, n: int = 1) -> list[str]:
    """Names of the signals the newest run of (journey, contact) received, start signal
    included, in order, once there are at least n: a signal that arrives while a workflow
    task is in flight is buffered and reaches the history only when that task completes."""
    handle = temporal.get_workflow_handle(workflow_id(journey_key, contact_id))

    async def probe() -> list[str]:
        names: list[str] = []
        async for ev in handle.fetch_history_events():
            if ev.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
                names.append(ev.workflow_execution_signaled_event_attributes.signal_name)
        return names if len(names) >= n else []

    return await eventually(probe, timeout=10)


async def runs_of(api: httpx.AsyncClient, key: str) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/journeys/{key}/runs")
    assert r.status_code == 200, r.text
    return list(r.json()["runs"])
