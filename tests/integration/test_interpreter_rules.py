"""Journey-level rules (exit_when, goal), the operator's exit, and what operators see in
Temporal (search attributes, the `state` query)."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.client import Client

from core.db import Database
from tests.helpers import eventually
from tests.journey_support import (
    deliver_event,
    finished,
    journey,
    make_contact,
    run_row,
    start,
    waiting,
)
from workflows.journey import workflow_id

LONG_WAIT = {"type": "wait", "duration": "PT5M", "next": "done"}


def _waiting_journey(**extra: Any) -> dict[str, Any]:
    return journey({"hold": LONG_WAIT, "done": {"type": "exit"}}, "hold", **extra)


async def test_exit_when_event_with_where_ends_the_run_wherever_it_is(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    d = _waiting_journey(exit_when=[{"event": "appointment_booked",
                                     "where": {"kind": {"op": "in", "value": ["screening"]}}}])
    key = await start(api, d, cid)
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "appointment_booked", {"kind": "dental"})
    await deliver_event(db, temporal, key, cid, "unrelated", {"kind": "screening"})
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "appointment_booked", {"kind": "screening"})
    run = await finished(api, key, cid)
    assert run["status"] == "exited" and run["exit_reason"] == "exit_when"
    assert run["history"][-1]["step"] == "hold"
    assert run["history"][-1]["outcome"] == "exit_when"


async def test_exit_when_segment_exit(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    from core.models import Segment

    seg = f"seg-{journey({}, 'x')['key']}"
    async with db.session() as s:
        s.add(Segment(key=seg))
        await s.commit()
    cid = await make_contact(api, db)
    key = await start(api, _waiting_journey(exit_when=[{"segment_exit": seg}]), cid)
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "segment_exit", {"segment": "another"})
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "segment_exit", {"segment": seg})
    assert (await finished(api, key, cid))["exit_reason"] == "exit_when"


async def test_exit_when_condition_is_checked_when_events_arrive(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db, attributes={"stage": "new"})
    d = _waiting_journey(
        exit_when=[{"condition": {"attr": "stage", "op": "eq", "value": "booked"}}]
    )
    key = await start(api, d, cid)
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "ping")
    await waiting(temporal, key, cid, "timer")
    r = await api.patch(f"/v1/contacts/{cid}", json={"attributes": {"stage": "booked"}})
    assert r.status_code == 200, r.text
    await deliver_event(db, temporal, key, cid, "ping")
    assert (await finished(api, key, cid))["exit_reason"] == "exit_when"


async def test_goal_records_a_conversion_and_exits(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    # The SPEC example: the same event is the goal and an exit rule; the goal must count.
    d = _waiting_journey(goal={"event": "appointment_booked"},
                         exit_when=[{"event": "appointment_booked"}])
    key = await start(api, d, cid)
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "appointment_booked")
    run = await finished(api, key, cid)
    assert run["exit_reason"] == "goal"
    row = await run_row(db, key, cid)
    assert row.goal_reached_at is not None


async def test_goal_without_exit_counts_and_the_run_goes_on(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    d = journey(
        {"hold": {"type": "wait", "duration": "PT3S", "next": "done"}, "done": {"type": "exit"}},
        "hold",
        goal={"condition": {"event": "appointment_booked", "within": "P1D"}, "exit": False},
    )
    key = await start(api, d, cid)
    await waiting(temporal, key, cid, "timer")
    await deliver_event(db, temporal, key, cid, "appointment_booked")

    async def converted() -> bool:
        return (await run_row(db, key, cid)).goal_reached_at is not None

    await eventually(converted, timeout=3)
    run = await finished(api, key, cid)
    assert run["status"] == "completed" and run["visits"] == {"hold": 1, "done": 1}


async def test_operator_exit_through_the_api(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    first, second = await make_contact(api, db), await make_contact(api, db)
    key = await start(api, _waiting_journey(), first, second)
    await waiting(temporal, key, first, "timer")
    r = await api.post(f"/v1/journeys/{key}/runs/{first}/exit")
    assert r.status_code == 200, r.text
    assert (await finished(api, key, first))["exit_reason"] == "operator"
    await waiting(temporal, key, second, "timer")
    r = await api.post(f"/v1/journeys/{key}/runs/{second}/exit", json={"reason": "moved_away"})
    assert r.status_code == 200, r.text
    run = await finished(api, key, second)
    assert run["status"] == "exited" and run["exit_reason"] == "moved_away"


async def test_free_text_exit_reasons_from_the_temporal_ui_are_not_kept(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    key = await start(api, _waiting_journey(), cid)
    await waiting(temporal, key, cid, "timer")
    # Operators may type anything in the UI; text could carry PHI, so only codes are kept.
    await temporal.get_workflow_handle(workflow_id(key, cid)).signal(
        "exit", "Pat Smith called, DOB 1960-01-01"
    )
    assert (await finished(api, key, cid))["exit_reason"] == "operator"


async def test_search_attributes_and_state_query_follow_the_run(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    cid = await make_contact(api, db)
    d = journey(
        {
            "first": {"type": "wait", "duration": "PT1S", "next": "second"},
            "second": {"type": "wait_for_event", "event": "ok", "timeout": "PT5M",
                       "yes": "done", "no": "done"},
            "done": {"type": "exit"},
        },
        "first",
    )
    key = await start(api, d, cid)
    state = await waiting(temporal, key, cid, "event", step="second")
    assert state["status"] == "running"
    assert state["visits"] == {"first": 1, "second": 1}
    assert state["exit_reason"] is None
    assert state["waiting_for"]["event"] == "ok" and state["waiting_for"]["until"]

    async def count(query: str) -> int:
        return (await temporal.count_workflows(query)).count

    base = f"JourneyKey = '{key}' AND ContactId = '{cid}'"
    await eventually(lambda: count(f"{base} AND JourneyStep = 'second'"))
    await deliver_event(db, temporal, key, cid, "ok")
    await finished(api, key, cid)
    await eventually(lambda: count(f"{base} AND JourneyStatus = 'completed'"))
