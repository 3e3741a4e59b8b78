"""Request dependencies: the service context, authenticated by API key and authorised by
the central policy (api/policy.py), with the route's audit row staged in its transaction."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, Response
from sqlmodel.ext.asyncio.session import AsyncSession

from api import policy
from core.config import Settings
from core.db import Database
from services import audit
from services.apikeys import authenticate
from services.context import Actor, ServiceContext

log = logging.getLogger("journeys.api.auth")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_MAX_AUDITED_BODY = 1 << 20  # field names are read from JSON bodies up to 1 MiB
_warned: set[str] = set()


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.session() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def request_id(request: Request) -> str:
    """The caller's X-Request-ID when it is a plain token, else a fresh one (audit rows
    and answers carry it, so a caller can find its own calls in the audit log)."""
    rid: str | None = getattr(request.state, "request_id", None)
    if rid:
        return rid
    given = request.headers.get("x-request-id", "")
    rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    request.state.request_id = rid
    return rid


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def current_actor(
    request: Request, response: Response, session: SessionDep, settings: SettingsDep
) -> Actor:
    token = bearer_token(request)
    if token is None:
        raise HTTPException(
            401, "missing API key (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"}
        )
    key = await authenticate(session, token, str(settings.secret_values()["api_key_pepper"]))
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
    rid = request_id(request)
    response.headers["X-Request-ID"] = rid
    return Actor(key.id, key.role, rid)


def audit_resource(template: str, request: Request) -> str:
    """Formats "contact/{contact_id}" with the request's path parameters (by name, else
    by position, so a router naming its parameter differently still fills it in)."""
    params: Mapping[str, Any] = request.path_params
    values = [str(v) for v in params.values()]
    position = iter(values)

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in params:
            return str(params[name])
        return next(position, "?")

    return re.sub(r"\{([^}:]*)(?::[^}]*)?\}", fill, template)


async def body_field_names(request: Request) -> list[str]:
    if "json" not in request.headers.get("content-type", ""):
        return []
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > _MAX_AUDITED_BODY):
        return []
    try:
        return policy.field_names(json.loads(await request.body()))
    except (ValueError, RecursionError):
        return []


def _rule(request: Request, declared: frozenset[str]) -> policy.Rule:
    rule = policy.rule_for_request(request)
    if rule is not None:
        return rule
    where = f"{request.method} {policy.route_template(request)}"
    if where not in _warned:
        _warned.add(where)
        log.warning("no policy rule for %s; using the roles its router declares", where)
    return policy.Rule(declared)


def require(*roles: str) -> Callable[..., AsyncIterator[ServiceContext]]:
    """The service context when the key's role may call this route (admin always).

    The rule comes from api/policy.py; `roles` are only the fallback for a route the
    policy does not list yet. Use with `Depends(..., scope="function")` (the aliases
    below do) so a read's audit row is committed before the answer is sent.
    """
    declared = frozenset(roles)

    async def dep(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        actor: Annotated[Actor, Depends(current_actor)],
    ) -> AsyncIterator[ServiceContext]:
        rule = _rule(request, declared)
        ctx = ServiceContext(session, settings, request.app.state.temporal, actor)
        if not rule.allows(actor.role):
            resource = (
                audit_resource(rule.resource, request) if rule.resource else request.url.path
            )
            await audit.record(ctx, "denied", resource, details={"method": request.method})
            raise HTTPException(403, f"role '{actor.role}' may not do this")
        row = None
        if rule.audit is not None:
            fields = list(rule.audit.fields)
            if rule.audit.body_fields:
                fields += await body_field_names(request)
            row = audit.stage(
                ctx, rule.audit.action, audit_resource(rule.audit.resource, request), fields
            )
        yield ctx
        if row is not None:
            await audit.ensure_written(ctx, row)

    return dep


def _ctx(*roles: str) -> Any:
    return Depends(require(*roles), scope="function")


# Routes name one of these; the policy decides, the roles listed are only its fallback.
Authorized = Annotated[ServiceContext, _ctx()]
Designer = Annotated[ServiceContext, _ctx("designer")]
Operator = Annotated[ServiceContext, _ctx("designer", "operator")]
Integration = Annotated[ServiceContext, _ctx("integration", "designer", "operator")]
Reader = Annotated[ServiceContext, _ctx("designer", "operator", "marketer", "auditor")]
Auditor = Annotated[ServiceContext, _ctx("auditor")]
