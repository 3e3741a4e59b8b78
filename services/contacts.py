"""Contacts: upsert by external_id, read, patch, erase.

Attributes are typed (services.attributes); every change is followed by
services.segment_membership.on_contact_changed so rule segments stay current.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, Field, field_validator
from sqlmodel import select

from core.models import Contact, utcnow
from services.attributes import AttributeTypes, load_types, save_inferred
from services.context import ServiceContext
from services.errors import Invalid, NotFound
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


async def _typed_attributes(ctx: ServiceContext, values: dict[str, Any]) -> dict[str, Any]:
    """values coerced to the attributes' types (422 naming every bad attribute); types
    inferred for new names are written in the caller's transaction."""
    types: AttributeTypes = await load_types(ctx, values)
    clean, problems = types.clean(values)
    if not problems and types.inferred and await save_inferred(ctx, types):
        # Another writer typed a new attribute first: read the values again by its type.
        clean, problems = types.clean(values)
    if problems:
        await ctx.session.rollback()
        raise Invalid("attributes are invalid", [p.as_dict() for p in problems])
    return clean


def _merge(current: dict[str, Any] | None, changes: dict[str, Any]) -> dict[str, Any]:
    """Attributes after applying changes: a None value removes the attribute."""
    merged = {**(current or {}), **changes}
    return {k: v for k, v in merged.items() if v is not None}


def _changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


async def _after_change(ctx: ServiceContext, contact_id: str, kinds: set[str] | None) -> None:
    from services.segment_membership import on_contact_changed

    if kinds is None or kinds:
        await on_contact_changed(ctx, contact_id, kinds=kinds)


async def upsert_contact(ctx: ServiceContext, data: ContactIn) -> tuple[Contact, bool]:
    """Returns (contact, created)."""
    s = ctx.session
    attrs = await _typed_attributes(ctx, data.attributes)
    existing = (
        await s.exec(select(Contact).where(Contact.external_id == data.external_id))
    ).first()
    created = existing is None
    revived = existing is not None and existing.deleted_at is not None
    c = existing or Contact(external_id=data.external_id)
    before = dict(c.attributes or {})
    if data.email is not None:
        c.email = data.email
        c.email_hash = email_hash(data.email, ctx.pepper)
    if data.timezone is not None:
        c.timezone = data.timezone
    if attrs:
        c.attributes = _merge(c.attributes, attrs)
    c.updated_at = utcnow()
    c.deleted_at = None
    s.add(c)
    await s.commit()
    await s.refresh(c)
    kinds = None if created or revived else {f"attr:{k}" for k in _changed(before, c.attributes)}
    await _after_change(ctx, c.id, kinds)
    return c, created


async def get_contact(ctx: ServiceContext, contact_id: str) -> Contact:
    c = await ctx.session.get(Contact, contact_id)
    if c is None or c.deleted_at is not None:
        raise NotFound("contact not found", {"contact_id": contact_id})
    return c


async def patch_contact(ctx: ServiceContext, contact_id: str, data: ContactPatch) -> Contact:
    c = await get_contact(ctx, contact_id)
    attrs = await _typed_attributes(ctx, data.attributes or {})
    before = dict(c.attributes or {})
    if data.email is not None:
        c.email = data.email
        c.email_hash = email_hash(data.email, ctx.pepper)
    if data.timezone is not None:
        c.timezone = data.timezone
    if attrs:
        c.attributes = _merge(c.attributes, attrs)
    c.updated_at = utcnow()
    ctx.session.add(c)
    await ctx.session.commit()
    await ctx.session.refresh(c)
    await _after_change(ctx, c.id, {f"attr:{k}" for k in _changed(before, c.attributes)})
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
