"""Reentry rules (never / after_exit / always), paused journeys, and segment-entry triggers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Segment
from services.context import ServiceContext
from services.events import emit_internal
from tests.helpers import eventually
from tests.integration.entry_support import contact, definition, published, runs_of, signals, tag


async def _send(api: httpx.AsyncClient, cid: str, name: str) -> dict:  # type: ignore[type-arg]
    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": name})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def _ended(api: httpx.AsyncClient, key: str, n: int) -> list[dict]:  # type: ignore[type-arg]
    async def probe() -> list[dict]:  # type: ignore[type-arg]
        runs = await runs_of(api, key)
        return runs if len(runs) == n and all(r["status"] != "running" for r in runs) else []

    return await eventually(probe)


async def test_reentry_never(api: httpx.AsyncClient) -> None:
    t = tag()
    key = await published(
        api, definition(f"nv-{t}", {"type": "event", "event": f"go_{t}"}, hold=False)
    )
    cid = await contact(api)
    assert (await _send(api, cid, f"go_{t}"))["started"] == 1
    await _ended(api, key, 1)
    again = await _send(api, cid, f"go_{t}")
    assert again["journeys"] == [{"journey": key, "action": "skipped", "reason": "reentry_never"}]
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.json() == {"enrolled": 0, "skipped": 1, "skipped_by_reason": {"reentry_never": 1}}
    assert len(await runs_of(api, key)) == 1


async def test_reentry_after_exit_waits_min_interval(api: httpx.AsyncClient) -> None:
    t = tag()
    key = await published(
        api,
        definition(
            f"ae-{t}",
            {"type": "event", "event": f"go_{t}"},
            reentry={"mode": "after_exit", "min_interval": "PT3S"},
            hold=False,
        ),
    )
    cid = await contact(api)
    assert (await _send(api, cid, f"go_{t}"))["started"] == 1
    (run,) = await _ended(api, key, 1)
    soon = await _send(api, cid, f"go_{t}")
    ended_at = datetime.fromisoformat(run["ended_at"])
    assert soon["journeys"] == [
        {"journey": key, "action": "skipped", "reason": "reentry_min_interval"}
    ]
    wait = (ended_at + timedelta(seconds=3.2) - datetime.now(ended_at.tzinfo)).total_seconds()
    await asyncio.sleep(max(wait, 0))
    later = await _send(api, cid, f"go_{t}")
    assert later["journeys"] == [{"journey": key, "action": "started"}]
    await _ended(api, key, 2)


async def test_reentry_always_and_one_run_at_a_time(api: httpx.AsyncClient) -> None:
    t = tag()
    done = await published(
        api,
        definition(f"al-{t}", {"type": "event", "event": f"go_{t}"}, reentry={"mode": "always"},
                   hold=False),
    )
    holding = await published(
        api,
        definition(f"alh-{t}", {"type": "event", "event": f"go_{t}"}, reentry={"mode": "always"}),
    )
    cid = await contact(api)
    assert (await _send(api, cid, f"go_{t}"))["started"] == 2
    await _ended(api, done, 1)
    out = await _send(api, cid, f"go_{t}")
    # The ended run re-enters; the still-running one just gets the event.
    assert {(j["journey"], j["action"]) for j in out["journeys"]} == {
        (done, "started"), (holding, "signalled")
    }
    await _ended(api, done, 2)
    assert len(await runs_of(api, holding)) == 1
    r = await api.post(f"/v1/journeys/{holding}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["skipped_by_reason"] == {"already_running": 1}


async def test_paused_journey_takes_no_new_entries(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    t = tag()
    key = await published(api, definition(f"pz-{t}", {"type": "event", "event": f"go_{t}"}))
    inside, outside = await contact(api), await contact(api)
    assert (await _send(api, inside, f"go_{t}"))["started"] == 1
    assert (await api.post(f"/v1/journeys/{key}/pause")).json()["status"] == "paused"

    assert (await _send(api, outside, f"go_{t}"))["journeys"] == []
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [outside]})
    assert r.status_code == 409 and r.json()["error"]["details"]["status"] == "paused"
    # The run already inside still gets its events.
    assert (await _send(api, inside, f"go_{t}"))["journeys"] == [
        {"journey": key, "action": "signalled"}
    ]
    assert await signals(temporal, key, inside, 2) == ["event", "event"]

    await api.post(f"/v1/journeys/{key}/resume")
    assert (await _send(api, outside, f"go_{t}"))["started"] == 1
    await api.post(f"/v1/journeys/{key}/archive")
    assert (await _send(api, await contact(api), f"go_{t}"))["journeys"] == []


async def test_segment_entry_trigger(
    api: httpx.AsyncClient, db: Database, settings: Settings, temporal: Client
) -> None:
    t = tag()
    seg, other = f"seg-{t}", f"seg2-{t}"
    async with db.session() as s:
        s.add(Segment(key=seg, name="test"))
        s.add(Segment(key=other, name="test"))
        await s.commit()
    key = await published(api, definition(f"se-{t}", {"type": "segment_entry", "segment": seg}))
    cid = await contact(api)
    async with db.session() as s:
        ctx = ServiceContext(s, settings, temporal)
        miss = await emit_internal(ctx, cid, "segment_entry", {"segment": other})
        hit = await emit_internal(ctx, cid, "segment_entry", {"segment": seg})
    assert miss["journeys"] == []
    assert hit["journeys"] == [{"journey": key, "action": "started"}]
    assert await signals(temporal, key, cid, 1) == ["event"]
    # Leaving the segment reaches the run (exit_when segment_exit is the interpreter's).
    async with db.session() as s:
        out = await emit_internal(
            ServiceContext(s, settings, temporal), cid, "segment_exit", {"segment": seg}
        )
    assert out["journeys"] == [{"journey": key, "action": "signalled"}]


async def test_run_recorded_as_ended_but_still_closing_is_awaited(
    api: httpx.AsyncClient, db: Database, temporal: Client
) -> None:
    """The workflow records its end just before it closes. An event in between must start
    the new run (reentry allows it), not be swallowed by the closing one."""
    from sqlalchemy import update
    from sqlmodel import col

    from core.models import Run
    from workflows.journey import workflow_id

    t = tag()
    key = await published(
        api,
        definition(f"cl-{t}", {"type": "event", "event": f"go_{t}"}, reentry={"mode": "always"}),
    )
    cid = await contact(api)
    assert (await _send(api, cid, f"go_{t}"))["started"] == 1

    async def holding() -> bool:
        return [r["step"] for r in await runs_of(api, key)] == ["hold"]

    await eventually(holding)  # its own records are written; now fake the last one
    async with db.session() as s:  # as if its last record_steps had just been written
        await s.exec(  # type: ignore[call-overload]
            update(Run).where(col(Run.journey_key) == key).values(
                status="completed", ended_at=datetime.now().astimezone()
            )
        )
        await s.commit()
    handle = temporal.get_workflow_handle(workflow_id(key, cid))

    async def close_soon() -> None:
        await asyncio.sleep(1)
        await handle.terminate("closing")

    closer = asyncio.create_task(close_soon())
    out = await _send(api, cid, f"go_{t}")
    await closer
    assert out["journeys"] == [{"journey": key, "action": "started"}]
    assert (await handle.describe()).status is not None
    assert len(await runs_of(api, key)) == 2
