"""Request dependencies: the service context, authenticated by API key and role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlmodel.ext.asyncio.session import AsyncSession

from core.config import Settings
from core.db import Database
from services.apikeys import authenticate
from services.context import Actor, ServiceContext


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.session() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def current_actor(request: Request, session: SessionDep, settings: SettingsDep) -> Actor:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing API key (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"})
    key = await authenticate(session, token.strip(), str(settings.secret_values()["api_key_pepper"]))
    if key is None:
        raise HTTPException(401, "invalid or revoked API key", {"WWW-Authenticate": "Bearer"})
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    request.state.request_id = rid
    return Actor(key.id, key.role, rid)


def require(*roles: str) -> Callable[..., Coroutine[Any, Any, ServiceContext]]:
    """A dependency giving the service context when the key's role is one of `roles` (admin always)."""
    allowed = {"admin", *roles}

    async def dep(
        request: Request,
        session: SessionDep,
        settings: SettingsDep,
        actor: Annotated[Actor, Depends(current_actor)],
    ) -> ServiceContext:
        if actor.role not in allowed:
            raise HTTPException(403, f"role '{actor.role}' may not do this")
        return ServiceContext(session, settings, request.app.state.temporal, actor)

    return dep


Designer = Annotated[ServiceContext, Depends(require("designer"))]
Operator = Annotated[ServiceContext, Depends(require("designer", "operator"))]
Integration = Annotated[ServiceContext, Depends(require("integration", "designer", "operator"))]
Reader = Annotated[ServiceContext, Depends(require("designer", "operator", "marketer", "auditor"))]
