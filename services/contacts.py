"""Contacts: upsert by external_id, read, patch, erase."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field, field_validator
from sqlmodel import select

from core.models import Contact, utcnow
from services.context import ServiceContext
from services.errors import NotFound
from services.identity import email_hash


def _check_tz(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("unknown IANA time zone") from None
    return v


def _check_email(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        return validate_email(v, check_deliverability=False).normalized
    except EmailNotValidError:
        raise ValueError("not a valid e-mail address") from None


class ContactIn(BaseModel):
    external_id: str = Field(min_length=1, max_length=200)
    email: str | None = None
    timezone: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    _tz = field_validator("timezone")(_check_tz)
    _email = field_validator("email")(_check_email)


class ContactPatch(BaseModel):
    email: str | None = None
    timezone: str | None = None
    attributes: dict[str, Any] | None = None  # merged; a null value removes the attribute

    _tz = field_validator("timezone")(_check_tz)
    _email = field_validator("email")(_check_email)


def contact_out(c: Contact) -> dict[str, Any]:
    return {
        "id": c.id,
        "external_id": c.external_id,
        "email": c.email,
        "timezone": c.timezone,
        "attributes": c.attributes,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


async def upsert_contact(ctx: ServiceContext, data: ContactIn) -> tuple[Contact, bool]:
    """Returns (contact, created)."""
    s = ctx.session
    existing = (
        await s.exec(select(Contact).where(Contact.external_id == data.external_id))
    ).first()
    created = existing is None
    c = existing or Contact(external_id=data.external_id)
    if data.email is not None:
        c.email = data.email
        c.email_hash = email_hash(data.email, ctx.pepper)
    if data.timezone is not None:
        c.timezone = data.timezone
    if data.attributes:
        c.attributes = {**(c.attributes or {}), **data.attributes}
    c.updated_at = utcnow()
    c.deleted_at = None
    s.add(c)
    await s.commit()
    await s.refresh(c)
    return c, created


async def get_contact(ctx: ServiceContext, contact_id: str) -> Contact:
    c = await ctx.session.get(Contact, contact_id)
    if c is None or c.deleted_at is not None:
        raise NotFound("contact not found", {"contact_id": contact_id})
    return c


async def patch_contact(ctx: ServiceContext, contact_id: str, data: ContactPatch) -> Contact:
    c = await get_contact(ctx, contact_id)
    if data.email is not None:
        c.email = data.email
        c.email_hash = email_hash(data.email, ctx.pepper)
    if data.timezone is not None:
        c.timezone = data.timezone
    if data.attributes is not None:
        merged = {**(c.attributes or {}), **data.attributes}
        c.attributes = {k: v for k, v in merged.items() if v is not None}
    c.updated_at = utcnow()
    ctx.session.add(c)
    await ctx.session.commit()
    await ctx.session.refresh(c)
    return c


async def resolve_contact_ref(ctx: ServiceContext, ref: dict[str, Any]) -> Contact:
    """`{"id": ...}` or `{"external_id": ...}` as sent by external systems."""
    if ref.get("id"):
        return await get_contact(ctx, str(ref["id"]))
    if ref.get("external_id"):
        c = (
            await ctx.session.exec(
                select(Contact).where(Contact.external_id == str(ref["external_id"]))
            )
        ).first()
        if c is None or c.deleted_at is not None:
            raise NotFound("contact not found", {"field": "contact.external_id"})
        return c
    raise NotFound("contact reference needs id or external_id", {"field": "contact"})
