"""The codec server the Temporal UI and CLI use: roles, CORS for the UI origin only,
the browser session cookie, namespace, and an audit row per call (never content)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest_asyncio
from google.protobuf import json_format
from sqlalchemy import update
from sqlmodel import col, select
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter

from api import codec_auth
from core.apikeys import parse_key
from core.codec import EncryptionCodec
from core.config import Settings
from core.db import Database
from core.models import ApiKey, AuditLog, utcnow
from core.temporal import keyring

UI = "http://127.0.0.1:8233"


@pytest_asyncio.fixture(scope="module")
async def client(
    settings: Settings, db: Database, temporal: Client
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of its own: the shared one may carry the admin key (the `api` fixture)."""
    from api.main import create_app

    app = create_app(settings, db=db, temporal=temporal)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5557))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


def bearer(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def encrypted_body(settings: Settings, *values: Any) -> dict[str, Any]:
    """What the UI posts to /decode: payloads as Temporal stores them."""
    clear = DataConverter.default.payload_converter.to_payloads(list(values))
    sealed = await EncryptionCodec(keyring(settings)).encode(clear)
    return json_format.MessageToDict(Payloads(payloads=sealed))


def values_of(body: dict[str, Any]) -> list[Any]:
    payloads = json_format.ParseDict(body, Payloads()).payloads
    return DataConverter.default.payload_converter.from_payloads(list(payloads))


async def decode_rows(db: Database, since_id: int) -> list[AuditLog]:
    async with db.session() as s:
        q = select(AuditLog).where(
            col(AuditLog.id) > since_id, AuditLog.resource == "temporal/default"
        )
        return list((await s.exec(q.order_by(col(AuditLog.id)))).all())


async def last_audit_id(db: Database) -> int:
    async with db.session() as s:
        found = (
            await s.exec(select(AuditLog.id).order_by(col(AuditLog.id).desc()).limit(1))
        ).first()
    return found or 0


async def test_operator_decodes_and_every_decode_is_audited(
    client: httpx.AsyncClient, db: Database, settings: Settings, key_for: Any
) -> None:
    secret = f"clear-{uuid.uuid4().hex}"
    body = await encrypted_body(settings, {"contact_id": "c_1", "note": secret}, 7)
    assert secret not in json.dumps(body)
    since = await last_audit_id(db)

    op = await key_for("operator")
    r = await client.post(
        "/codec/decode?preserveStorageRefs=true",  # as the UI calls it
        headers=bearer(op, **{"X-Namespace": "default", "Content-Type": "application/json"}),
        json=body,
    )
    assert r.status_code == 200, r.text
    assert values_of(r.json()) == [{"contact_id": "c_1", "note": secret}, 7]

    rows = await decode_rows(db, since)
    assert len(rows) == 1
    row = rows[0]
    assert (row.action, row.role) == ("decode", "operator")
    assert row.details == {"namespace": "default", "payloads": 2, "auth": "bearer"}
    assert row.actor == await _key_id(db, op)
    assert secret not in repr(row.model_dump())


async def test_encode_then_decode_round_trips(
    client: httpx.AsyncClient, settings: Settings, key_for: Any
) -> None:
    secret = f"typed-in-ui-{uuid.uuid4().hex}"
    clear = json_format.MessageToDict(
        Payloads(payloads=DataConverter.default.payload_converter.to_payloads([{"reason": secret}]))
    )
    admin = await key_for("admin")
    r = await client.post("/codec/encode", headers=bearer(admin), json=clear)
    assert r.status_code == 200
    sealed = r.json()
    meta = sealed["payloads"][0]["metadata"]
    assert base64.b64decode(meta["encoding"]) == b"binary/encrypted"
    assert base64.b64decode(meta["encryption-key-id"]).decode() == keyring(settings).active_id
    assert secret not in json.dumps(sealed)
    assert secret.encode() not in base64.b64decode(sealed["payloads"][0]["data"])
    r = await client.post("/codec/decode", headers=bearer(admin), json=sealed)
    assert values_of(r.json()) == [{"reason": secret}]


async def test_only_admin_and_operator_may_decode(
    client: httpx.AsyncClient, settings: Settings, key_for: Any
) -> None:
    body = await encrypted_body(settings, "x")
    r = await client.post("/codec/decode", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await client.post("/codec/decode", headers=bearer("jk_bogus"), json=body)
    assert r.status_code == 401
    for role in ("designer", "marketer", "auditor", "integration"):
        r = await client.post("/codec/decode", headers=bearer(await key_for(role)), json=body)
        assert r.status_code == 403, role
        assert "x" not in r.json().get("payloads", [])


async def test_cors_for_the_temporal_ui_origin_only(
    client: httpx.AsyncClient, settings: Settings, key_for: Any
) -> None:
    for origin in (UI, "http://localhost:8233"):
        r = await client.options(
            "/codec/decode",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
                "Access-Control-Request-Private-Network": "true",
            },
        )
        assert r.status_code == 204
        assert r.headers["access-control-allow-origin"] == origin
        assert r.headers["access-control-allow-credentials"] == "true"
        allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "x-namespace", "authorization"} <= allowed
        assert "POST" in r.headers["access-control-allow-methods"]
        assert r.headers["access-control-allow-private-network"] == "true"

    r = await client.options(
        "/codec/decode",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers

    op = await key_for("operator")
    body = await encrypted_body(settings, "x")
    r = await client.post("/codec/decode", headers=bearer(op, Origin=UI), json=body)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == UI and r.headers["vary"] == "Origin"
    # A foreign page is refused even with a valid key, and learns nothing.
    r = await client.post(
        "/codec/decode", headers=bearer(op, Origin="https://evil.example"), json=body
    )
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # Errors to the UI carry CORS headers so it can show them.
    r = await client.post("/codec/decode", headers={"Origin": UI}, json=body)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == UI


async def test_browser_session_cookie_for_the_ui(
    client: httpx.AsyncClient, db: Database, settings: Settings, key_for: Any
) -> None:
    op = await key_for("operator")
    r = await client.get("/codec/login")
    assert r.status_code == 200 and 'type="password"' in r.text

    r = await client.post(
        "/codec/login",
        content=f"key={op}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/codec" in cookie and op not in cookie
    token = r.cookies[codec_auth.COOKIE]
    client.cookies.clear()

    body = await encrypted_body(settings, {"n": 1})
    since = await last_audit_id(db)
    r = await client.post(
        "/codec/decode",
        headers={"Origin": UI, "X-Namespace": "default"},
        cookies={codec_auth.COOKIE: token},
        json=body,
    )
    assert r.status_code == 200 and values_of(r.json()) == [{"n": 1}]
    assert [row.details["auth"] for row in await decode_rows(db, since) if row.details] == [
        "session"
    ]

    # A forged or altered session is refused, and so is one whose key was revoked.
    r = await client.post(
        "/codec/decode", cookies={codec_auth.COOKIE: token[:-2] + "xx"}, json=body
    )
    assert r.status_code == 401
    async with db.session() as s:
        await s.exec(  # type: ignore[call-overload]
            update(ApiKey)
            .where(col(ApiKey.id) == await _key_id(db, op))
            .values(revoked_at=utcnow())
        )
        await s.commit()
    r = await client.post("/codec/decode", cookies={codec_auth.COOKIE: token}, json=body)
    assert r.status_code == 401
    client.cookies.clear()


async def test_login_refuses_roles_without_codec_access_and_foreign_pages(
    client: httpx.AsyncClient, key_for: Any
) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    designer = await key_for("designer")
    r = await client.post("/codec/login", content=f"key={designer}", headers=form)
    assert r.status_code == 403 and "set-cookie" not in r.headers
    r = await client.post("/codec/login", content="key=jk_nope", headers=form)
    assert r.status_code == 401 and "set-cookie" not in r.headers
    op = await key_for("operator")
    r = await client.post(
        "/codec/login", content=f"key={op}", headers={**form, "Origin": "https://evil.example"}
    )
    assert r.status_code == 403 and "set-cookie" not in r.headers
    client.cookies.clear()


async def test_other_namespaces_and_bad_payloads_are_refused(
    client: httpx.AsyncClient, settings: Settings, key_for: Any
) -> None:
    op = await key_for("operator")
    body = await encrypted_body(settings, "x")
    r = await client.post(
        "/codec/decode", headers=bearer(op, **{"X-Namespace": "other"}), json=body
    )
    assert r.status_code == 403
    r = await client.post(
        "/codec/decode", headers=bearer(op, **{"X-Namespace": "undefined"}), json=body
    )
    assert r.status_code == 200

    tampered = json.loads(json.dumps(body))
    data = bytearray(base64.b64decode(tampered["payloads"][0]["data"]))
    data[-1] ^= 1
    tampered["payloads"][0]["data"] = base64.b64encode(bytes(data)).decode()
    r = await client.post("/codec/decode", headers=bearer(op), json=tampered)
    assert r.status_code == 422 and r.json()["error"]["code"] == "undecryptable"
    assert keyring(settings).active_id in r.json()["error"]["message"]

    r = await client.post("/codec/decode", headers=bearer(op), content=b"{not json")
    assert r.status_code == 422
    r = await client.post("/codec/decode", headers=bearer(op), json={"payloads": "nope"})
    assert r.status_code == 422


async def _key_id(db: Database, plaintext: str) -> str:
    parsed = parse_key(plaintext)
    assert parsed
    async with db.session() as s:
        return (await s.exec(select(ApiKey).where(ApiKey.prefix == parsed[0]))).one().id
