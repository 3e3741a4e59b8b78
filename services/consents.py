"""Consent per category: an append-only history whose newest entry is in force.

"Newest" is by the time the consent was given (`at`, which an integrator may backfill),
then by the order it was recorded, so replaying an old form submission after a newer
revocation does not grant again.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlmodel import col, select

from core.models import Consent, utcnow
from services.contacts import get_contact
from services.context import ServiceContext
from services.errors import Invalid

# Same shape as a journey's category (dsl RefKey); "*" is reserved for "every category".
CATEGORY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
# Clocks of integrating systems drift; a grant from a little in the future is accepted.
FUTURE_SKEW = timedelta(minutes=5)


class ConsentIn(BaseModel):
    granted: bool
    source: str = Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")
    at: datetime | None = None

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            return v.replace(tzinfo=UTC)  # a time without an offset is taken as UTC
        return v


def check_category(category: str) -> str:
    if not CATEGORY_RE.fullmatch(category):
        raise Invalid(
            "category must be 1-128 letters, digits, '-', '_', '.' or ':'",
            {"field": "category"},
        )
    return category


def consent_out(c: Consent) -> dict[str, Any]:
    return {
        "category": c.category,
        "granted": c.granted,
        "source": c.source,
        "at": c.at,
        "recorded_at": c.recorded_at,
    }


def _newest_first() -> tuple[Any, Any]:
    return col(Consent.at).desc(), col(Consent.id).desc()


async def set_consent(
    ctx: ServiceContext, contact_id: str, category: str, data: ConsentIn
) -> dict[str, Any]:
    """Append a grant or revocation; returns the consent now in force for the category."""
    check_category(category)
    await get_contact(ctx, contact_id)
    now = utcnow()
    at = data.at or now
    if at > now + FUTURE_SKEW:
        raise Invalid("consent time is in the future", {"field": "at"})
    ctx.session.add(
        Consent(
            contact_id=contact_id,
            category=category,
            granted=data.granted,
            source=data.source,
            at=at,
            recorded_at=now,
        )
    )
    await ctx.session.commit()
    current = await current_consent(ctx, contact_id, category)
    assert current is not None
    return consent_out(current)


async def current_consent(ctx: ServiceContext, contact_id: str, category: str) -> Consent | None:
    return (
        await ctx.session.exec(
            select(Consent)
            .where(Consent.contact_id == contact_id, Consent.category == category)
            .order_by(*_newest_first())
            .limit(1)
        )
    ).first()


async def has_valid_grant(ctx: ServiceContext, contact_id: str, category: str | None) -> bool:
    """The check of SPEC section 7: the newest consent for the category is a grant."""
    if not category:
        return False
    current = await current_consent(ctx, contact_id, category)
    return current is not None and current.granted


async def list_consents(ctx: ServiceContext, contact_id: str) -> dict[str, Any]:
    """Current consent per category and the whole history, newest first."""
    await get_contact(ctx, contact_id)
    rows = (
        await ctx.session.exec(
            select(Consent).where(Consent.contact_id == contact_id).order_by(*_newest_first())
        )
    ).all()
    current: dict[str, dict[str, Any]] = {}
    for row in rows:
        current.setdefault(row.category, consent_out(row))
    return {
        "contact_id": contact_id,
        "current": current,
        "history": [consent_out(r) for r in rows],
    }
