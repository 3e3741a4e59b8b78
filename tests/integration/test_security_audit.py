"""The audit trail: every read or change of a contact's data, by field NAME; the
append-only table; GET /v1/audit for auditors; per-field redaction by role."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select

from core.apikeys import parse_key
from core.db import Database
from core.models import ApiKey, AuditLog


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def key_id(db: Database, plaintext: str) -> str:
    parsed = parse_key(plaintext)
    assert parsed
    async with db.session() as s:
        row = (await s.exec(select(ApiKey).where(ApiKey.prefix == parsed[0]))).one()
    return row.id


async def audit_rows(db: Database, resource: str) -> list[AuditLog]:
    async with db.session() as s:
        q = select(AuditLog).where(AuditLog.resource == resource).order_by(col(AuditLog.id))
        return list((await s.exec(q)).all())


async def new_contact(client: httpx.AsyncClient, key: str, tag: str, secret: str) -> str:
    r = await client.post(
        "/v1/contacts",
        headers=bearer(key),
        json={
            "external_id": f"mrn-{tag}",
            "email": f"audit-{tag}@example.com",
            "attributes": {"diagnosis": secret, "first": secret},
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_contact_reads_and_changes_are_audited_by_field_name(
    app_client: httpx.AsyncClient, db: Database, key_for: Any
) -> None:
    tag, secret = uuid.uuid4().hex[:10], f"dx-{uuid.uuid4().hex}"
    op = await key_for("operator")
    cid = await new_contact(app_client, op, tag, secret)

    r = await app_client.get(
        f"/v1/contacts/{cid}", headers=bearer(op, **{"X-Request-ID": f"req-{tag}"})
    )
    assert r.status_code == 200 and r.json()["attributes"]["diagnosis"] == secret
    assert r.headers["X-Request-ID"] == f"req-{tag}"
    r = await app_client.patch(
        f"/v1/contacts/{cid}",
        headers=bearer(op),
        json={"attributes": {"first": None, "stage": "new"}},
    )
    assert r.status_code == 200, r.text

    rows = await audit_rows(db, f"contact/{cid}")
    assert [r.action for r in rows] == ["create", "read", "update"]
    actor = await key_id(db, op)
    assert {(r.actor, r.role) for r in rows} == {(actor, "operator")}
    assert rows[0].fields == [
        "attributes",
        "attributes.diagnosis",
        "attributes.first",
        "email",
        "external_id",
    ]
    assert rows[1].fields == ["attributes", "email", "external_id", "timezone"]
    assert rows[1].request_id == f"req-{tag}"
    assert rows[2].fields == ["attributes", "attributes.first", "attributes.stage"]
    assert all(r.request_id for r in rows)
    # Never a value.
    dump = repr([r.model_dump() for r in rows])
    assert secret not in dump and f"audit-{tag}" not in dump and f"mrn-{tag}" not in dump


async def test_changes_that_fail_leave_no_audit_row(
    app_client: httpx.AsyncClient, db: Database, key_for: Any
) -> None:
    tag = uuid.uuid4().hex[:10]
    op = await key_for("operator")
    cid = await new_contact(app_client, op, tag, "x")
    r = await app_client.patch(
        f"/v1/contacts/{cid}", headers=bearer(op), json={"email": "not an address"}
    )
    assert r.status_code == 422
    r = await app_client.patch(
        f"/v1/contacts/c_missing{tag}", headers=bearer(op), json={"timezone": "UTC"}
    )
    assert r.status_code == 404
    assert [r.action for r in await audit_rows(db, f"contact/{cid}")] == ["create"]
    assert await audit_rows(db, f"contact/c_missing{tag}") == []


async def test_roles_without_phi_get_redacted_contacts_or_403(
    app_client: httpx.AsyncClient, db: Database, key_for: Any
) -> None:
    tag, secret = uuid.uuid4().hex[:10], f"dx-{uuid.uuid4().hex}"
    cid = await new_contact(app_client, await key_for("integration"), tag, secret)

    auditor = await key_for("auditor")
    r = await app_client.get(f"/v1/contacts/{cid}", headers=bearer(auditor))
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == cid and body["timezone"] == "UTC"
    assert sorted(body["redacted"]) == ["attributes", "email", "external_id"]
    assert not {"email", "attributes", "external_id"} & body.keys()
    assert secret not in r.text and tag not in r.text

    marketer = await key_for("marketer")
    r = await app_client.get(f"/v1/contacts/{cid}", headers=bearer(marketer))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    rows = await audit_rows(db, f"contact/{cid}")
    assert [(r.action, r.role) for r in rows] == [
        ("create", "integration"),
        ("read", "auditor"),
        ("denied", "marketer"),
    ]
    assert rows[1].fields == ["timezone"]  # what the auditor actually saw


async def test_audit_api_filters_and_pages(
    app_client: httpx.AsyncClient, db: Database, key_for: Any
) -> None:
    tag = uuid.uuid4().hex[:10]
    op = await key_for("operator")
    cid = await new_contact(app_client, op, tag, "x")
    for _ in range(4):
        assert (await app_client.get(f"/v1/contacts/{cid}", headers=bearer(op))).status_code == 200

    auditor = await key_for("auditor")
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"resource": f"contact/{cid}", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await app_client.get("/v1/audit", headers=bearer(auditor), params=params)
        assert r.status_code == 200, r.text
        pages += 1
        seen += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [i["action"] for i in seen] == ["read"] * 4 + ["create"]
    assert [i["id"] for i in seen] == sorted((i["id"] for i in seen), reverse=True)

    r = await app_client.get(
        "/v1/audit",
        headers=bearer(auditor),
        params={"resource": f"contact/{cid}", "action": "create", "actor": await key_id(db, op)},
    )
    assert [i["action"] for i in r.json()["items"]] == ["create"]

    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = await app_client.get(
        "/v1/audit", headers=bearer(auditor), params={"resource": f"contact/{cid}", "from": future}
    )
    assert r.json()["items"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    r = await app_client.get(
        "/v1/audit",
        headers=bearer(auditor),
        params={"resource": "contact/*", "from": past, "limit": 50},
    )
    assert r.json()["items"] and all(
        i["resource"].startswith("contact/") for i in r.json()["items"]
    )

    for params, field in [
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "99999999999999999999"}, "cursor"),  # past bigint
        ({"actor": "a\x00b"}, "actor"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "from"),
    ]:
        r = await app_client.get("/v1/audit", headers=bearer(auditor), params=params)
        assert r.status_code == 422 and r.json()["error"]["details"]["field"] == field, params
    for role in ("operator", "designer", "marketer", "integration"):
        r = await app_client.get("/v1/audit", headers=bearer(await key_for(role)))
        assert r.status_code == 403, role
    # Reading the trail is on the trail.
    rows = await audit_rows(db, "audit")
    assert rows and rows[-1].actor == await key_id(db, auditor)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET action = 'tampered' WHERE id = :id",
        "DELETE FROM audit_log WHERE id = :id",
        "TRUNCATE audit_log",
    ],
)
async def test_audit_log_is_append_only(db: Database, statement: str) -> None:
    async with db.session() as s:
        row = AuditLog(
            actor="test", role="admin", action="probe", resource=f"probe/{uuid.uuid4().hex}"
        )
        s.add(row)
        await s.commit()
        row_id = row.id
    async with db.session() as s:
        with pytest.raises(DBAPIError, match="append-only"):
            await s.exec(
                text(statement).bindparams(id=row_id) if ":id" in statement else text(statement)
            )  # type: ignore[call-overload]
        await s.rollback()
    async with db.session() as s:
        kept = await s.get(AuditLog, row_id)
        assert kept is not None and kept.action == "probe"
