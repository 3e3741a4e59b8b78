"""Rule and static segments through the API on the real stack: membership after create and
patch, one contact's change handled alone, entry/exit events, paging, preview."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from core.config import Settings
from core.db import Database
from tests.integration.segments_support import (
    make_contact,
    members,
    segment_events,
    service_ctx,
    tag,
)


async def test_rule_segment_follows_contact_changes(
    api: httpx.AsyncClient, db: Database
) -> None:
    t = tag()
    ids = {}
    for name, age, state in [("a", 55, "MA"), ("b", 62, "NY"), ("c", 45, "MA"), ("d", 70, "MA")]:
        ids[name] = await make_contact(
            api, f"{t}-{name}", attributes={"cohort": t, "age": age, "state": state}
        )
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"attr": "age", "op": "gte", "value": 50},
                    {"attr": "state", "op": "eq", "value": "MA"}]}
    r = await api.post("/v1/segments", json={"key": f"ma50-{t}", "name": "MA 50+", "rule": rule})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["kind"] == "rule" and body["member_count"] == 2
    assert set(body["reads"]) == {"attr:age", "attr:cohort", "attr:state"}
    key = body["key"]
    assert await members(api, key) == {ids["a"], ids["d"]}
    # The first build is not "entering": no events for the initial members.
    assert await segment_events(db, key) == []

    # c turns 50: enters; d moves away: leaves.
    r = await api.patch(f"/v1/contacts/{ids['c']}", json={"attributes": {"age": 50}})
    assert r.status_code == 200, r.text
    r = await api.patch(f"/v1/contacts/{ids['d']}", json={"attributes": {"state": "NY"}})
    assert r.status_code == 200, r.text
    assert await members(api, key) == {ids["a"], ids["c"]}
    assert await segment_events(db, key) == [("segment_entry", ids["c"]),
                                             ("segment_exit", ids["d"])]
    r = await api.get(f"/v1/segments/{key}")
    assert r.json()["member_count"] == 2

    # A new contact that matches enters at once.
    e = await make_contact(api, f"{t}-e", attributes={"cohort": t, "age": 51, "state": "MA"})
    assert await members(api, key) == {ids["a"], ids["c"], e}
    assert (await segment_events(db, key))[-1] == ("segment_entry", e)

    # Removing an attribute (null) takes the contact out.
    await api.patch(f"/v1/contacts/{e}", json={"attributes": {"state": None}})
    assert e not in await members(api, key)


async def test_one_change_touches_only_that_contact(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    t = tag()
    ids = [
        await make_contact(api, f"{t}-{i}", attributes={"cohort": t, "score": i})
        for i in range(6)
    ]
    key = f"score-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"attr": "score", "op": "gt", "value": 2}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201

    async def entered() -> dict[str, object]:
        async with db.session() as s:
            rows = await s.exec(  # type: ignore[call-overload]
                text("SELECT contact_id, entered_at FROM segment_membership WHERE "
                     "segment_key = :k").bindparams(k=key)
            )
            return dict(rows.all())

    before = await entered()
    assert set(before) == set(ids[3:])
    from services.segment_membership import on_contact_changed

    # The hook on an unrelated change (an attribute the rule does not read) does nothing.
    async with service_ctx(db, settings) as ctx:
        changes = await on_contact_changed(ctx, ids[4], kinds={"attr:unrelated"})
    assert not changes.entered and not changes.left
    await api.patch(f"/v1/contacts/{ids[1]}", json={"attributes": {"score": 9}})
    after = await entered()
    assert set(after) == set(ids[1:2] + ids[3:])
    assert {k: after[k] for k in ids[3:]} == {k: before[k] for k in ids[3:]}  # untouched


async def test_static_segment_members_and_paging(api: httpx.AsyncClient, db: Database) -> None:
    t = tag()
    ids = sorted([await make_contact(api, f"{t}-{i}") for i in range(5)])
    key = f"vip-{t}"
    r = await api.post("/v1/segments", json={"key": key, "name": "VIP"})
    assert r.status_code == 201 and r.json()["kind"] == "static" and r.json()["member_count"] == 0

    r = await api.post(f"/v1/segments/{key}/members",
                       json={"contact_ids": ids + [ids[0], "c_doesnotexist"]})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 5 and r.json()["unknown_contacts"] == ["c_doesnotexist"]
    r = await api.post(f"/v1/segments/{key}/members", json={"contact_ids": ids[:2]})
    assert r.json()["added"] == 0 and r.json()["already_members"] == 2

    # Pages of 2 in contact id order, cursor carries on after the last one seen.
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get(f"/v1/segments/{key}/members", params=params)).json()
        seen += [m["contact_id"] for m in page["members"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    bad = await api.get(f"/v1/segments/{key}/members", params={"cursor": "%%%"})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["field"] == "cursor"

    r = await api.request("DELETE", f"/v1/segments/{key}/members", json={"contact_ids": ids[:2]})
    assert r.status_code == 200 and r.json()["removed"] == 2
    r = await api.delete(f"/v1/segments/{key}/members/{ids[2]}")
    assert r.json() == {"removed": 1, "not_members": 0, "member_count": 2}
    assert await members(api, key) == set(ids[3:])
    events = await segment_events(db, key)
    assert sorted(c for n, c in events if n == "segment_entry") == ids
    assert sorted(c for n, c in events if n == "segment_exit") == ids[:3]

    # Rule segments' members follow the rule only.
    rk = f"rule-{t}"
    await api.post("/v1/segments", json={"key": rk, "rule": {"attr": "cohort", "op": "eq",
                                                              "value": t}})
    r = await api.post(f"/v1/segments/{rk}/members", json={"contact_ids": ids[:1]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


async def test_segment_of_segments_and_preview(api: httpx.AsyncClient, db: Database) -> None:
    t = tag()
    a = await make_contact(api, f"{t}-a", attributes={"cohort": t, "tags": ["diabetes"]})
    b = await make_contact(api, f"{t}-b", attributes={"cohort": t, "tags": ["asthma"]})
    vip = f"vip-{t}"
    await api.post("/v1/segments", json={"key": vip})
    await api.post(f"/v1/segments/{vip}/members", json={"contact_ids": [b]})
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"any": [{"attr": "tags", "op": "contains", "value": "diabetes"},
                             {"segment": vip}]}]}
    r = await api.post("/v1/segments/preview", json={"rule": rule})
    assert r.status_code == 200 and r.json()["count"] == 2, r.text
    key = f"care-{t}"
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    assert await members(api, key) == {a, b}
    # Leaving the static segment takes b out of the rule segment built on it.
    await api.delete(f"/v1/segments/{vip}/members/{b}")
    assert await members(api, key) == {a}
    assert ("segment_exit", b) in await segment_events(db, key)
    # A segment read by another cannot be deleted; a cycle cannot be made.
    r = await api.delete(f"/v1/segments/{vip}")
    assert r.status_code == 409 and r.json()["error"]["details"]["read_by"] == [key]
    narrowed = {"all": [{"attr": "cohort", "op": "eq", "value": t}, {"segment": key}]}
    other = f"other-{t}"
    r = await api.post("/v1/segments", json={"key": other, "rule": narrowed})
    assert r.status_code == 201
    r = await api.put(f"/v1/segments/{key}", json={"rule": {"segment": other}})
    assert r.status_code == 422 and "cycle" in r.json()["error"]["message"]


async def test_rule_errors_name_the_field(api: httpx.AsyncClient) -> None:
    t = tag()
    cases = [
        ({"attr": "age", "op": "between", "value": 1}, "rule.op"),
        ({"all": [{"attr": "age", "op": "gt"}]}, "rule.all[0].value"),
        ({"event": "visit", "within": "90 days"}, "rule.within"),
        ({"engaged": "thanks", "event": "open"}, "rule.engaged"),
        ({"nonsense": 1}, "rule"),
    ]
    for rule, field in cases:
        r = await api.post("/v1/segments", json={"key": f"bad-{t}", "rule": rule})
        assert r.status_code == 422, (rule, r.text)
        fields = [d["field"] for d in r.json()["error"]["details"]]
        assert any(f.startswith(field) for f in fields), (rule, fields)
    r = await api.post("/v1/segments", json={"key": f"bad-{t}", "rule": {"segment": "nope"}})
    assert r.status_code == 422 and r.json()["error"]["details"]["segments"] == ["nope"]
    r = await api.post("/v1/segments", json={"key": "has space", "kind": "static"})
    assert r.status_code == 422
    assert (await api.get(f"/v1/segments/missing-{t}")).status_code == 404
    await api.post("/v1/segments", json={"key": f"dup-{t}"})
    assert (await api.post("/v1/segments", json={"key": f"dup-{t}"})).status_code == 409


async def test_changing_a_rule_moves_members_with_events(
    api: httpx.AsyncClient, db: Database
) -> None:
    t = tag()
    ids = [await make_contact(api, f"{t}-{i}", attributes={"cohort": t, "n": i})
           for i in range(4)]
    key = f"n-{t}"
    cohort = {"attr": "cohort", "op": "eq", "value": t}
    r = await api.post("/v1/segments", json={
        "key": key, "rule": {"all": [cohort, {"attr": "n", "op": "lt", "value": 2}]}})
    assert r.json()["member_count"] == 2
    r = await api.put(f"/v1/segments/{key}", json={
        "name": "n in 1..2", "rule": {"all": [cohort, {"attr": "n", "op": "in", "value": [1, 2]}]}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "n in 1..2" and r.json()["member_count"] == 2
    assert await members(api, key) == {ids[1], ids[2]}
    assert sorted(await segment_events(db, key)) == [("segment_entry", ids[2]),
                                                     ("segment_exit", ids[0])]
    assert (await api.delete(f"/v1/segments/{key}")).status_code == 204
    assert (await api.get(f"/v1/segments/{key}")).status_code == 404


async def test_roles(api: httpx.AsyncClient, app_client: httpx.AsyncClient, key_for) -> None:  # type: ignore[no-untyped-def]
    """Marketers see counts, never member ids; integrations import contacts but reach
    neither segment definitions nor members (SPEC 7: events and contacts only)."""
    t = tag()
    key = f"roles-{t}"
    assert (await api.post("/v1/segments", json={"key": key})).status_code == 201
    marketer = {"Authorization": f"Bearer {await key_for('marketer')}"}
    integration = {"Authorization": f"Bearer {await key_for('integration')}"}
    r = await app_client.get(f"/v1/segments/{key}", headers=marketer)
    assert r.status_code == 200 and r.json()["member_count"] == 0
    r = await app_client.get(f"/v1/segments/{key}/members", headers=marketer)
    assert r.status_code == 403
    r = await app_client.post("/v1/segments", json={"key": f"x-{t}"}, headers=integration)
    assert r.status_code == 403
    contact = await make_contact(api, f"{t}-a")
    r = await app_client.post(f"/v1/segments/{key}/members", json={"contact_ids": [contact]},
                              headers=integration)
    assert r.status_code == 403
    r = await api.post(f"/v1/segments/{key}/members", json={"contact_ids": [contact]})
    assert r.status_code == 200 and r.json()["added"] == 1
    r = await app_client.post("/v1/contacts/import", content=f"external_id\n{t}-b\n",
                              headers=integration | {"content-type": "text/csv"})
    assert r.status_code == 200 and r.json()["created"] == 1
