"""GET/PUT /v1/settings: defaults, validation, all-or-nothing writes, roles, audit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import pytest_asyncio
from sqlmodel import col, select

from core.db import Database
from core.models import AuditLog, Setting

KeyFor = Callable[[str], Awaitable[str]]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest_asyncio.fixture
async def admin(
    app_client: httpx.AsyncClient, key_for: KeyFor, db: Database
) -> AsyncIterator[dict[str, str]]:
    headers = _auth(await key_for("admin"))
    yield headers
    # Account-wide and the database is shared: leave the default behind.
    async with db.session() as s:
        row = await s.get(Setting, "exclude_automated_events")
        if row is not None:
            await s.delete(row)
            await s.commit()


@pytest.mark.xdist_group("account-settings")
async def test_defaults_then_update_and_read_back(
    app_client: httpx.AsyncClient, admin: dict[str, str], key_for: KeyFor, db: Database
) -> None:
    r = await app_client.get("/v1/settings", headers=admin)
    assert r.status_code == 200
    assert r.json() == {"exclude_automated_events": True}

    r = await app_client.put(
        "/v1/settings", json={"exclude_automated_events": False}, headers=admin
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"exclude_automated_events": False}
    marketer = _auth(await key_for("marketer"))
    r = await app_client.get("/v1/settings", headers=marketer)
    assert (r.status_code, r.json()) == (200, {"exclude_automated_events": False})

    async with db.session() as s:
        audit = (
            await s.exec(
                select(AuditLog)
                .where(AuditLog.resource == "settings")
                .order_by(col(AuditLog.id).desc())
            )
        ).first()
    assert audit is not None and audit.action == "update"
    assert audit.fields == ["exclude_automated_events"] and audit.role == "admin"


@pytest.mark.xdist_group("account-settings")
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"exclude_automated_events": "yes"}, "exclude_automated_events"),
        ({"exclude_automated_events": 1}, "exclude_automated_events"),
        ({"exclude_automated_events": None}, "exclude_automated_events"),
        ({"exclude_automated_events": False, "bogus_setting": 1}, "bogus_setting"),
    ],
)
async def test_bad_values_are_422_naming_the_field_and_change_nothing(
    app_client: httpx.AsyncClient, admin: dict[str, str], body: dict[str, object], field: str
) -> None:
    r = await app_client.put("/v1/settings", json=body, headers=admin)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid"
    assert [e["field"] for e in err["details"]["errors"]] == [field]
    assert "yes" not in r.text  # values are never echoed
    r = await app_client.get("/v1/settings", headers=admin)
    assert r.json() == {"exclude_automated_events": True}


@pytest.mark.xdist_group("account-settings")
@pytest.mark.parametrize("body", [[], "x", {}])
async def test_not_an_object_or_empty_is_422(
    app_client: httpx.AsyncClient, admin: dict[str, str], body: object
) -> None:
    r = await app_client.put("/v1/settings", json=body, headers=admin)
    assert r.status_code == 422


@pytest.mark.xdist_group("account-settings")
async def test_roles(app_client: httpx.AsyncClient, key_for: KeyFor, admin: dict[str, str]) -> None:
    for role in ("designer", "operator", "marketer", "auditor"):
        key = _auth(await key_for(role))
        assert (await app_client.get("/v1/settings", headers=key)).status_code == 200
        r = await app_client.put(
            "/v1/settings", json={"exclude_automated_events": False}, headers=key
        )
        assert r.status_code == 403, role
    integration = _auth(await key_for("integration"))
    assert (await app_client.get("/v1/settings", headers=integration)).status_code == 403
    assert (await app_client.get("/v1/settings", headers={"Authorization": ""})).status_code == 401
    r = await app_client.get("/v1/settings", headers=admin)
    assert r.json() == {"exclude_automated_events": True}
