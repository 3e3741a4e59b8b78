"""Suppressions: addresses that must not be mailed, globally ("*") or for one category.

Keyed by the keyed hash of the address (services.identity.email_hash), never the address,
so a suppression outlives the erasure of the contact and a re-import of the same address
stays suppressed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, or_, select

from core.models import Contact, Suppression
from services.consents import check_category
from services.contacts import _check_email, get_contact
from services.context import ServiceContext
from services.errors import Forbidden, Invalid, NotFound
from services.identity import email_hash

ALL = "*"
Reason = Literal["unsubscribe", "hard_bounce", "complaint", "manual"]
# Reasons that record the recipient's own wish (or their mailbox provider's on their
# behalf): only an admin may lift them.
RECIPIENT_REASONS = frozenset({"unsubscribe", "complaint"})


class SuppressionTarget(BaseModel):
    """Whose address: given directly, or the current address of a contact."""

    email: str | None = Field(default=None, max_length=320)
    contact_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")

    @model_validator(mode="after")
    def _one(self) -> SuppressionTarget:
        if (self.email is None) == (self.contact_id is None):
            raise ValueError("give exactly one of email or contact_id")
        if self.email is not None:
            self.email = _check_email(self.email)
        return self


class SuppressionIn(SuppressionTarget):
    category: str = Field(default=ALL, max_length=128)
    reason: Reason = "manual"
    source: str = Field(default="api", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")


class SuppressionCheck(SuppressionTarget):
    category: str | None = Field(default=None, max_length=128)  # None: any category


async def target_hash(ctx: ServiceContext, target: SuppressionTarget) -> str:
    if target.email is not None:
        return email_hash(target.email, ctx.pepper)
    assert target.contact_id is not None
    contact = await get_contact(ctx, target.contact_id)
    if contact.email_hash is None:
        raise Invalid("contact has no e-mail address", {"contact_id": contact.id})
    return contact.email_hash


async def suppress(
    ctx: ServiceContext, hashed: str, category: str, reason: str, source: str
) -> bool:
    """Add a suppression in the caller's transaction (no commit); True when it is new.

    An existing suppression of the same address and category keeps its first reason.
    """
    res = await ctx.session.exec(  # type: ignore[call-overload]
        insert(Suppression)
        .values(email_hash=hashed, category=category, reason=reason, source=source)
        .on_conflict_do_nothing(constraint="uq_suppression")
        .returning(Suppression.id)  # type: ignore[call-overload]
    )
    return res.first() is not None


async def find_suppression(
    ctx: ServiceContext, hashed: str, category: str | None
) -> Suppression | None:
    """The suppression that blocks mail of `category` to the address (global first)."""
    q = select(Suppression).where(Suppression.email_hash == hashed)
    if category is not None:
        q = q.where(or_(Suppression.category == ALL, Suppression.category == category))
    rows = (await ctx.session.exec(q.order_by(col(Suppression.id)))).all()
    return next((r for r in rows if r.category == ALL), rows[0] if rows else None)


async def _contacts_by_hash(ctx: ServiceContext, hashes: set[str]) -> dict[str, list[Contact]]:
    if not hashes:
        return {}
    rows = (
        await ctx.session.exec(
            select(Contact).where(
                col(Contact.email_hash).in_(hashes), col(Contact.deleted_at).is_(None)
            )
        )
    ).all()
    out: dict[str, list[Contact]] = {}
    for c in rows:
        assert c.email_hash is not None
        out.setdefault(c.email_hash, []).append(c)
    return out


def _out(s: Suppression, contacts: list[Contact], show_address: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": s.id,
        "email_hash": s.email_hash,
        "category": s.category,
        "reason": s.reason,
        "source": s.source,
        "created_at": s.created_at,
        "contact_ids": sorted(c.id for c in contacts),
    }
    if show_address:
        # Addresses are PHI: only an admin sees which address a suppression is for.
        out["email"] = next((c.email for c in contacts if c.email), None)
    return out


async def suppressions_out(ctx: ServiceContext, rows: list[Suppression]) -> list[dict[str, Any]]:
    contacts = await _contacts_by_hash(ctx, {r.email_hash for r in rows})
    admin = ctx.actor.role == "admin"
    return [_out(r, contacts.get(r.email_hash, []), admin) for r in rows]


async def add_suppression(ctx: ServiceContext, data: SuppressionIn) -> tuple[dict[str, Any], bool]:
    if data.category != ALL:
        check_category(data.category)
    hashed = await target_hash(ctx, data)
    created = await suppress(ctx, hashed, data.category, data.reason, data.source)
    await ctx.session.commit()
    row = (
        await ctx.session.exec(
            select(Suppression).where(
                Suppression.email_hash == hashed, Suppression.category == data.category
            )
        )
    ).one()
    return (await suppressions_out(ctx, [row]))[0], created


async def list_suppressions(
    ctx: ServiceContext,
    *,
    category: str | None = None,
    reason: str | None = None,
    contact_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    q = select(Suppression)
    if category is not None:
        q = q.where(Suppression.category == category)
    if reason is not None:
        q = q.where(Suppression.reason == reason)
    if since is not None:
        q = q.where(col(Suppression.created_at) >= since)
    if contact_id is not None:
        hashed = await target_hash(ctx, SuppressionTarget(contact_id=contact_id))
        q = q.where(Suppression.email_hash == hashed)
    q = q.order_by(col(Suppression.id).desc()).offset(offset).limit(max(1, min(limit, 1000)))
    return await suppressions_out(ctx, list((await ctx.session.exec(q)).all()))


async def check_suppression(ctx: ServiceContext, data: SuppressionCheck) -> dict[str, Any]:
    if data.category is not None and data.category != ALL:
        check_category(data.category)
    hashed = await target_hash(ctx, data)
    q = select(Suppression).where(Suppression.email_hash == hashed)
    if data.category is not None:
        q = q.where(or_(Suppression.category == ALL, Suppression.category == data.category))
    rows = list((await ctx.session.exec(q.order_by(col(Suppression.id)))).all())
    return {"suppressed": bool(rows), "matches": await suppressions_out(ctx, rows)}


def _may_lift(ctx: ServiceContext, row: Suppression) -> None:
    if row.reason in RECIPIENT_REASONS and ctx.actor.role != "admin":
        raise Forbidden(
            f"a suppression for reason {row.reason} was the recipient's choice; "
            "only an admin may lift it",
            {"id": row.id, "reason": row.reason},
        )


async def remove_suppression(ctx: ServiceContext, suppression_id: int) -> None:
    row = await ctx.session.get(Suppression, suppression_id)
    if row is None:
        raise NotFound("suppression not found", {"id": suppression_id})
    _may_lift(ctx, row)
    await ctx.session.delete(row)
    await ctx.session.commit()


async def remove_matching(ctx: ServiceContext, data: SuppressionCheck) -> int:
    """Lift every suppression of the address (of one category when given): all or none."""
    if data.category is not None and data.category != ALL:
        check_category(data.category)
    hashed = await target_hash(ctx, data)
    q = select(Suppression).where(Suppression.email_hash == hashed)
    if data.category is not None:
        q = q.where(Suppression.category == data.category)
    rows = list((await ctx.session.exec(q)).all())
    for row in rows:
        _may_lift(ctx, row)  # before any delete: nothing half-done
    for row in rows:
        await ctx.session.delete(row)
    await ctx.session.commit()
    return len(rows)
