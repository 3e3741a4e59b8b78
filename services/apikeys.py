"""API keys: created with a role, stored hashed, checked on every /v1 request."""

from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.apikeys import ROLES, generate_key, parse_key, verify_key
from core.models import ApiKey
from services.errors import Invalid


async def create_key(session: AsyncSession, role: str, pepper: str, name: str = "") -> str:
    """Returns the plaintext key; only its hash is stored."""
    if role not in ROLES:
        raise Invalid(f"unknown role; expected one of {', '.join(ROLES)}", {"field": "role"})
    gen = generate_key(role, pepper.encode())
    session.add(ApiKey(prefix=gen.prefix, key_hash=gen.hash, role=role, name=name))
    await session.commit()
    return gen.plaintext


async def authenticate(session: AsyncSession, plaintext: str, pepper: str) -> ApiKey | None:
    parsed = parse_key(plaintext)
    if parsed is None:
        return None
    key = (await session.exec(select(ApiKey).where(ApiKey.prefix == parsed[0]))).first()
    if key is None or key.revoked_at is not None:
        return None
    if not verify_key(plaintext, key.key_hash, pepper.encode()):
        return None
    return key


async def any_keys(session: AsyncSession) -> bool:
    return (await session.exec(select(ApiKey.id).limit(1))).first() is not None
