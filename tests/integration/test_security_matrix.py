"""Role x endpoint matrix over EVERY route of the app (SPEC section 7).

Routes are enumerated from app.routes, so a route added later is covered without
touching this file: it fails until api/policy.py has a rule for it, and then each
role is checked against that rule — 401 without a key, 403 for a role the rule does
not allow, neither for a role it allows (and never a 500 for the dummy input).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from temporalio.client import Client

from api import deps, policy
from core.apikeys import ROLES
from core.config import Settings
from core.db import Database

pytestmark = pytest.mark.xdist_group("security-matrix")


@pytest_asyncio.fixture(scope="module")
async def matrix_app(
    settings: Settings, db: Database, temporal: Client
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    from api.main import create_app

    app = create_app(settings, db=db, temporal=temporal)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5556))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield app, client


def endpoints(app: FastAPI) -> list[tuple[str, str]]:
    return policy.app_endpoints(app.routes)


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "matrix-x", path)


async def call(
    client: httpx.AsyncClient, method: str, path: str, key: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return await client.request(method, concrete(path), **kwargs)


async def test_every_route_has_a_policy_rule(
    matrix_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    app, _ = matrix_app
    routes = endpoints(app)
    assert len(routes) > 15  # the enumeration really sees the app
    missing = [f"{m} {p}" for m, p in routes if policy.rule_for(m, p) is None]
    assert not missing, f"add these routes to api/policy.py: {missing}"


async def test_role_matrix(matrix_app: tuple[FastAPI, httpx.AsyncClient], key_for) -> None:  # type: ignore[no-untyped-def]
    app, client = matrix_app
    keys = {role: await key_for(role) for role in ROLES}
    wrong: list[str] = []
    checked = 0
    for method, path in endpoints(app):
        rule = policy.rule_for(method, path)
        if rule is None:
            continue  # reported by test_every_route_has_a_policy_rule
        anonymous = await call(client, method, path, None)
        checked += 1
        if rule.public:
            if anonymous.status_code in (401, 403) or anonymous.status_code >= 500:
                wrong.append(f"{method} {path} public: {anonymous.status_code}")
            continue
        if anonymous.status_code != 401:
            wrong.append(f"{method} {path} without a key: {anonymous.status_code}, want 401")
        for role in ROLES:
            r = await call(client, method, path, keys[role])
            checked += 1
            if rule.allows(role):
                if r.status_code in (401, 403) or r.status_code >= 500:
                    wrong.append(f"{method} {path} as {role}: {r.status_code}, want allowed")
            elif r.status_code != 403 or r.json()["error"]["code"] != "forbidden":
                wrong.append(f"{method} {path} as {role}: {r.status_code}, want 403")
    assert checked > 100
    assert not wrong, "\n".join(wrong)
    # The dependencies found each route's rule at run time too (no fallback to the
    # roles a router declares).
    fell_back = [w for w in deps._warned if policy.rule_for(*w.split(" ", 1)) is not None]
    assert not fell_back


async def test_no_v1_route_without_authentication(
    matrix_app: tuple[FastAPI, httpx.AsyncClient],
) -> None:
    """Even a policy mistake cannot make a /v1 route public."""
    app, _ = matrix_app
    public_v1 = [
        f"{m} {p}"
        for m, p in endpoints(app)
        if p.startswith("/v1") and (rule := policy.rule_for(m, p)) is not None and rule.public
    ]
    assert not public_v1
