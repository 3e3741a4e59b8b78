"""POST /v1/events: event triggers start runs with signal-with-start, reach every running
run of the contact, are idempotent, and a bad batch stores nothing."""

from __future__ import annotations

import httpx
from sqlmodel import col, func, select
from temporalio.client import Client

from core.db import Database
from core.models import Event
from tests.integration.entry_support import contact, definition, published, runs_of, signals, tag


async def test_event_trigger_starts_a_run(api: httpx.AsyncClient, temporal: Client) -> None:
    t = tag()
    key = await published(api, definition(f"ev-{t}", {"type": "event", "event": f"visit_{t}"}))
    cid = await contact(api)
    r = await api.post(
        "/v1/events",
        json={"contact": {"id": cid}, "event": f"visit_{t}", "properties": {"dept": "x"}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["started"] == 1 and body["duplicate"] is False
    assert body["journeys"] == [{"journey": key, "action": "started"}]
    assert await signals(temporal, key, cid, 1) == ["event"]
    (run,) = await runs_of(api, key)
    assert run["contact_id"] == cid and run["status"] == "running"

    # The same event again reaches the running run as a signal; no second run starts.
    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": f"visit_{t}"})
    assert r.json()["started"] == 0 and r.json()["signalled"] == 1
    assert await signals(temporal, key, cid, 2) == ["event", "event"]
    assert len(await runs_of(api, key)) == 1


async def test_where_filter_decides_the_trigger(api: httpx.AsyncClient) -> None:
    t = tag()
    trigger = {"type": "event", "event": f"visit_{t}", "where": {"dept": "cardiology"}}
    key = await published(api, definition(f"wh-{t}", trigger))
    cid = await contact(api, external_id=f"ext-{t}")
    r = await api.post(
        "/v1/events",
        json={"contact": {"external_id": f"ext-{t}"}, "event": f"visit_{t}",
              "properties": {"dept": "oncology"}},
    )
    assert r.status_code == 200, r.text
    assert r.json()["started"] == 0
    r = await api.post(
        "/v1/events",
        json={"contact": {"external_id": f"ext-{t}"}, "event": f"visit_{t}",
              "properties": {"dept": "cardiology"}},
    )
    assert r.json()["journeys"] == [{"journey": key, "action": "started"}]
    assert [x["contact_id"] for x in await runs_of(api, key)] == [cid]


async def test_one_event_reaches_every_journey_and_every_run(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    t = tag()
    name = f"booked_{t}"
    a = await published(api, definition(f"a-{t}", {"type": "event", "event": name}))
    b = await published(api, definition(f"b-{t}", {"type": "event", "event": name}))
    other = await published(api, definition(f"o-{t}", {"type": "event", "event": f"x_{t}"}))
    waiting = await published(api, definition(f"w-{t}"))  # manual: enrolled below
    cid = await contact(api)
    r = await api.post(f"/v1/journeys/{waiting}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1

    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": name})
    body = r.json()
    assert (body["started"], body["signalled"]) == (2, 1), body
    assert {(j["journey"], j["action"]) for j in body["journeys"]} == {
        (a, "started"), (b, "started"), (waiting, "signalled")
    }
    for key in (a, b, waiting):
        assert await signals(temporal, key, cid, 1) == ["event"]
    assert await runs_of(api, other) == []


async def test_idempotency_key_makes_a_repeat_a_no_op(
    api: httpx.AsyncClient, temporal: Client, db: Database
) -> None:
    t = tag()
    key = await published(api, definition(f"idem-{t}", {"type": "event", "event": f"e_{t}"}))
    cid = await contact(api)
    ev = {"contact": {"id": cid}, "event": f"e_{t}", "idempotency_key": f"k-{t}"}
    first = (await api.post("/v1/events", json=ev)).json()
    again = (await api.post("/v1/events", json=ev)).json()
    assert first["duplicate"] is False and again["duplicate"] is True
    assert {k: v for k, v in again.items() if k != "duplicate"} == {
        k: v for k, v in first.items() if k != "duplicate"
    }
    assert await signals(temporal, key, cid, 1) == ["event"]  # reached once
    async with db.session() as s:
        n = (await s.exec(select(func.count()).where(Event.idempotency_key == f"k-{t}"))).one()
    assert n == 1

    # Within one batch too: the second copy is the first event.
    batch = {"events": [
        {"contact": {"id": cid}, "event": f"e_{t}", "idempotency_key": f"b-{t}"},
        {"contact": {"id": cid}, "event": f"e_{t}", "idempotency_key": f"b-{t}"},
    ]}
    r = (await api.post("/v1/events", json=batch)).json()
    assert [x["duplicate"] for x in r["results"]] == [False, True]
    assert r["results"][0]["id"] == r["results"][1]["id"]
    assert (r["stored"], r["duplicates"]) == (1, 1)
    assert await signals(temporal, key, cid, 2) == ["event", "event"]


async def test_bad_batch_is_refused_whole_naming_index_and_field(
    api: httpx.AsyncClient, db: Database
) -> None:
    t = tag()
    cid = await contact(api)
    good = {"contact": {"id": cid}, "event": f"ok_{t}", "idempotency_key": f"g-{t}"}
    batch = {"events": [
        good,
        {"contact": {"id": cid}, "event": "bad name!"},
        good | {"idempotency_key": f"g2-{t}"},
        {"contact": {"id": "c_doesnotexist"}, "event": f"ok_{t}"},
        {"contact": {}, "event": f"ok_{t}"},
    ]}
    r = await api.post("/v1/events", json=batch)
    assert r.status_code == 422, r.text
    errors = r.json()["error"]["details"]["errors"]
    assert {(e["index"], e["field"]) for e in errors} >= {(1, "event"), (4, "contact")}
    assert "bad name!" not in r.text  # values are never echoed

    # Fix the shape errors: the unknown contact alone still refuses the whole batch.
    batch["events"] = [batch["events"][i] for i in (0, 2, 3)]
    r = await api.post("/v1/events", json=batch)
    assert r.status_code == 422, r.text
    errors = r.json()["error"]["details"]["errors"]
    assert [(e["index"], e["field"], e["code"]) for e in errors] == [
        (2, "contact.id", "unknown_contact")
    ]
    async with db.session() as s:
        stored = (
            await s.exec(select(func.count()).where(col(Event.name) == f"ok_{t}"))
        ).one()
    assert stored == 0

    r = await api.post("/v1/events", json={"events": [good] * 1001})
    assert r.status_code == 422


async def test_batch_delivers_in_order_per_contact(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    t = tag()
    key = await published(api, definition(f"bt-{t}", {"type": "event", "event": f"go_{t}"}))
    c1, c2 = await contact(api), await contact(api)
    batch = {"events": [
        {"contact": {"id": c1}, "event": f"go_{t}"},
        {"contact": {"id": c2}, "event": f"go_{t}"},
        {"contact": {"id": c1}, "event": f"go_{t}"},
        {"contact": {"id": c1}, "event": f"other_{t}"},
    ]}
    r = await api.post("/v1/events", json=batch)
    assert r.status_code == 200, r.text
    actions = [[j["action"] for j in x["journeys"]] for x in r.json()["results"]]
    assert actions == [["started"], ["started"], ["signalled"], ["signalled"]]
    assert await signals(temporal, key, c1, 3) == ["event", "event", "event"]
    assert sorted(x["contact_id"] for x in await runs_of(api, key)) == sorted([c1, c2])


async def test_roles(api: httpx.AsyncClient, app_client: httpx.AsyncClient, key_for) -> None:  # type: ignore[no-untyped-def]
    cid = await contact(api)
    ev = {"contact": {"id": cid}, "event": f"role_{tag()}"}
    for role, status in (("integration", 200), ("operator", 200), ("marketer", 403)):
        k = await key_for(role)
        r = await app_client.post("/v1/events", json=ev, headers={"Authorization": f"Bearer {k}"})
        assert r.status_code == status, (role, r.text)


async def test_stored_run_marked_running_but_closed_is_reconciled(
    api: httpx.AsyncClient, temporal: Client
) -> None:
    """An operator terminated the run in the Temporal UI: the next event finds it closed,
    brings the run row up to date and (reentry always) starts a new run."""
    t = tag()
    key = await published(
        api,
        definition(f"rc-{t}", {"type": "event", "event": f"go_{t}"}, reentry={"mode": "always"}),
    )
    cid = await contact(api)
    assert (await api.post("/v1/events", json={"contact": {"id": cid}, "event": f"go_{t}"})).json()[
        "started"
    ] == 1
    from workflows.journey import workflow_id

    await temporal.get_workflow_handle(workflow_id(key, cid)).terminate("test")
    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": f"go_{t}"})
    assert r.json()["journeys"] == [{"journey": key, "action": "started"}], r.text
    runs = await runs_of(api, key)
    assert sorted(x["status"] for x in runs) == ["exited", "running"]
    assert [x["exit_reason"] for x in runs if x["status"] == "exited"] == ["terminated"]


async def test_run_row_whose_workflow_is_gone_is_closed(
    api: httpx.AsyncClient, db: Database
) -> None:
    from core.models import Run

    t = tag()
    cid = await contact(api)
    async with db.session() as s:
        s.add(Run(id=f"gone-{t}", journey_key=f"gone-{t}", version=1, contact_id=cid,
                  workflow_id=f"journey/gone-{t}/{cid}", status="running"))
        await s.commit()
    r = await api.post("/v1/events", json={"contact": {"id": cid}, "event": f"any_{t}"})
    assert r.status_code == 200, r.text
    assert r.json()["signalled"] == 0
    async with db.session() as s:
        row = await s.get(Run, f"gone-{t}")
    assert row is not None and (row.status, row.exit_reason) == ("exited", "not_found")
