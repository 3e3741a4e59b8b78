"""POST /v1/contacts/import: CSV and NDJSON, typed attributes, bad rows reported by number
and not written, dry run, updates merging, segments kept current by imports."""

from __future__ import annotations

import json
from typing import Any

import httpx
from sqlalchemy import text

from core.db import Database
from tests.integration.segments_support import members, tag


async def _contacts(db: Database, prefix: str) -> dict[str, dict[str, Any]]:
    async with db.session() as s:
        rows = await s.exec(  # type: ignore[call-overload]
            text("SELECT external_id, email, timezone, attributes FROM contact "
                 "WHERE external_id LIKE :p").bindparams(p=f"{prefix}%")
        )
        return {e: {"email": m, "timezone": tz, "attributes": a} for e, m, tz, a in rows.all()}


async def test_csv_import_reports_bad_rows_and_writes_good_ones(
    api: httpx.AsyncClient, db: Database
) -> None:
    t = tag()
    # Attribute names are account-wide: this test's are its own.
    zip_, age, vip, seen, cond = (f"{n}_{t}" for n in ("zip", "age", "vip", "seen", "cond"))
    r = await api.put(f"/v1/attributes/{cond}", json={"type": "list"})
    assert r.status_code == 201, r.text
    csv_text = (
        f"external_id,email,timezone,{zip_},{age},{vip},{seen},{cond}\n"
        f"{t}-1,one-{t}@example.com,America/New_York,02139,54,true,2026-01-05,diabetes|asthma\n"
        f"{t}-2,not-an-email,UTC,02140,61,false,2026-01-06,\n"  # row 2: bad email
        f"{t}-3,three-{t}@example.com,Mars/Olympus,02141,40,false,,\n"  # row 3: bad zone
        f",four-{t}@example.com,UTC,02142,33,true,,\n"  # row 4: no external_id
        f"{t}-5,five-{t}@example.com,UTC,02143\n"  # row 5: too few fields
        f'{t}-6,six-{t}@example.com,UTC,"021\n44",70,yes,2026-02-01T09:30:00Z,"[""a"",""b""]"\n'
        f"{t}-7,seven-{t}@example.com,,12345,old,true,,\n"  # row 7: age is a number
        "\n"
        f"{t}-8,EIGHT-{t}@Example.com,Europe/Paris,,0,false,not a date,\n"  # row 8: bad date
    )
    r = await api.post("/v1/contacts/import", content=csv_text.encode(),
                       headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["rows"] == 8 and report["created"] == 2 and report["failed"] == 6, report
    problems = {(e["row"], e["field"], e["code"]) for e in report["errors"]}
    assert problems == {
        (2, "email", "invalid_email"),
        (3, "timezone", "invalid_timezone"),
        (4, "external_id", "missing"),
        (5, "", "field_count"),
        (7, f"attributes.{age}", "type_mismatch"),
        (8, f"attributes.{seen}", "type_mismatch"),
    }, report["errors"]
    # Line numbers count the header and the multi-line quoted cell of row 6.
    assert {e["row"]: e["line"] for e in report["errors"]}[8] == 11
    assert "not-an-email" not in r.text and "Mars" not in r.text  # no values echoed

    stored = await _contacts(db, f"{t}-")
    assert set(stored) == {f"{t}-1", f"{t}-6"}  # nothing of a bad row was written
    one = stored[f"{t}-1"]
    assert one["timezone"] == "America/New_York"
    assert one["attributes"] == {zip_: "02139", age: 54, vip: True, seen: "2026-01-05",
                                 cond: ["diabetes", "asthma"]}
    six = stored[f"{t}-6"]["attributes"]
    assert six[zip_] == "021\n44" and six[vip] is True and six[cond] == ["a", "b"]
    assert six[seen] == "2026-02-01T09:30:00+00:00"

    attrs = {a["name"]: a for a in (await api.get("/v1/attributes")).json()["attributes"]}
    assert attrs[age]["type"] == "number" and attrs[zip_]["type"] == "string"
    assert attrs[seen]["type"] == "date" and attrs[vip]["type"] == "boolean"
    assert attrs[age]["source"] == "inferred" and attrs[cond]["source"] == "declared"


async def test_ndjson_import_updates_merge_and_dry_run(
    api: httpx.AsyncClient, db: Database
) -> None:
    t = tag()
    lines = [
        {"external_id": f"{t}-a", "email": f"a-{t}@example.com", "plan": "gold", "visits": 3},
        {"external_id": f"{t}-b", "attributes": {"plan": "silver", "visits": 1}},
        "{not json",
        {"external_id": f"{t}-c", "visits": {"nested": True}},
        [1, 2],
        {"external_id": f"{t}-a", "timezone": "Asia/Tokyo"},  # same contact again
    ]
    body = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    headers = {"content-type": "application/x-ndjson"}

    dry = await api.post("/v1/contacts/import", params={"dry_run": "true"}, content=body,
                         headers=headers)
    assert dry.status_code == 200, dry.text
    assert dry.json()["dry_run"] is True
    assert (dry.json()["created"], dry.json()["failed"]) == (2, 3)
    assert await _contacts(db, f"{t}-") == {}  # a dry run writes nothing

    r = await api.post("/v1/contacts/import", content=body, headers=headers)
    report = r.json()
    assert (report["rows"], report["created"], report["failed"]) == (6, 2, 3), report
    assert {(e["row"], e["field"], e["code"]) for e in report["errors"]} == {
        (3, "", "malformed"), (4, "attributes.visits", "type_mismatch"), (5, "", "malformed")
    }
    stored = await _contacts(db, f"{t}-")
    assert stored[f"{t}-a"]["timezone"] == "Asia/Tokyo"
    assert stored[f"{t}-a"]["attributes"] == {"plan": "gold", "visits": 3}

    # Importing again updates: attributes merge, null removes, email stays when absent.
    update = json.dumps({"external_id": f"{t}-a", "plan": None, "stage": "engaged"}) + "\n"
    r = await api.post("/v1/contacts/import", content=update, headers=headers)
    assert (r.json()["created"], r.json()["updated"]) == (0, 1)
    stored = await _contacts(db, f"{t}-")
    assert stored[f"{t}-a"]["attributes"] == {"visits": 3, "stage": "engaged"}
    assert stored[f"{t}-a"]["email"] == f"a-{t}@example.com"


async def test_import_keeps_rule_segments_current(api: httpx.AsyncClient, db: Database) -> None:
    t = tag()
    key = f"seniors-{t}"
    rule = {"all": [{"attr": "cohort", "op": "eq", "value": t},
                    {"attr": "age", "op": "gte", "value": 65}]}
    assert (await api.post("/v1/segments", json={"key": key, "rule": rule})).status_code == 201
    csv_text = "external_id,cohort,age\n" + "".join(
        f"{t}-{i},{t},{60 + i}\n" for i in range(10)
    )
    r = await api.post("/v1/contacts/import", content=csv_text, params={"batch_size": 3},
                       headers={"content-type": "text/csv"})
    assert r.json()["created"] == 10, r.text
    assert len(await members(api, key)) == 5
    r = await api.post("/v1/contacts/import", content=f"external_id,age\n{t}-0,70\n",
                       headers={"content-type": "text/csv"})
    assert r.json()["updated"] == 1
    assert len(await members(api, key)) == 6


async def test_import_rejects_what_it_cannot_read(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/contacts/import", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = await api.post("/v1/contacts/import", content=b"email,first name\n",
                       headers={"content-type": "text/csv"})
    assert r.status_code == 422
    codes = {p["code"] for p in r.json()["error"]["details"]["problems"]}
    assert codes == {"missing_column", "invalid_name"}
    # Multipart upload of a file works too.
    t = tag()
    files = {"file": ("contacts.csv", f"external_id,plan\n{t}-m,gold\n".encode(), "text/csv")}
    r = await api.post("/v1/contacts/import", files=files)
    assert r.status_code == 200 and r.json()["created"] == 1, r.text


async def test_contact_api_attribute_types(api: httpx.AsyncClient) -> None:
    t = tag()
    name = f"weight_{t}"
    r = await api.post("/v1/contacts", json={"external_id": f"{t}-1", "attributes": {name: 70.5}})
    assert r.status_code == 201
    r = await api.post("/v1/contacts",
                       json={"external_id": f"{t}-2", "attributes": {name: "heavy"}})
    assert r.status_code == 422
    assert r.json()["error"]["details"][0] == {
        "field": f"attributes.{name}", "code": "type_mismatch", "message": "expected a number"
    }
    r = await api.post("/v1/contacts", json={"external_id": f"{t}-2", "attributes": {name: "71"}})
    assert r.status_code == 201 and r.json()["attributes"][name] == 71  # coerced
    # Re-typing is refused while values do not fit; declaring a fresh one works.
    r = await api.put(f"/v1/attributes/{name}", json={"type": "boolean"})
    assert r.status_code == 409 and r.json()["error"]["details"]["contacts"] == 2
    r = await api.put(f"/v1/attributes/due_{t}", json={"type": "date", "description": "due"})
    assert r.status_code == 201 and r.json()["source"] == "declared"
    r = await api.post("/v1/contacts", json={"external_id": f"{t}-3",
                                             "attributes": {f"due_{t}": "2026-03-01T10:00Z"}})
    assert r.json()["attributes"][f"due_{t}"] == "2026-03-01T10:00:00+00:00"
    r = await api.post("/v1/contacts", json={"external_id": f"{t}-4",
                                             "attributes": {"email": "x"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["code"] == "reserved_name"
