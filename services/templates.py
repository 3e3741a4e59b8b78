"""E-mail templates: subject, HTML and text parts (Jinja2, rendered in a sandbox)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlmodel import select

from core.models import Template, utcnow
from mail.render import TemplateRenderError, TemplateSource, check_syntax, render, template_context
from services.contacts import get_contact
from services.context import ServiceContext
from services.errors import Conflict, Invalid, NotFound

KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


class TrackIn(BaseModel):
    opens: bool = True
    clicks: bool = True


# PostgreSQL text cannot hold NUL; the parts may hold any other character.
_NO_NUL = r"^[^\x00]*$"
_CATEGORY = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class TemplateUpdate(BaseModel):
    name: str = Field(default="", max_length=200, pattern=_NO_NUL)
    subject: str = Field(min_length=1, max_length=1000, pattern=_NO_NUL)
    html: str = Field(min_length=1, max_length=1_000_000, pattern=_NO_NUL)
    text: str | None = Field(default=None, max_length=1_000_000, pattern=_NO_NUL)
    category: str | None = Field(default=None, pattern=_CATEGORY)
    track: TrackIn = Field(default_factory=TrackIn)


class TemplateIn(TemplateUpdate):
    key: str = Field(pattern=KEY_PATTERN)


def template_out(t: Template) -> dict[str, Any]:
    return {
        "key": t.key,
        "name": t.name,
        "subject": t.subject,
        "html": t.html,
        "text": t.text,
        "category": t.category,
        "track": {"opens": t.track_opens, "clicks": t.track_clicks},
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    }


def _apply(t: Template, data: TemplateIn | TemplateUpdate) -> None:
    t.name = data.name
    t.subject = data.subject
    t.html = data.html
    t.text = data.text
    t.category = data.category
    t.track_opens = data.track.opens
    t.track_clicks = data.track.clicks
    t.updated_at = utcnow()


def _check(key: str, data: TemplateIn | TemplateUpdate) -> None:
    """Syntax and link problems that would fail or mis-track every render -> 422."""
    issues = check_syntax(TemplateSource(key, data.subject, data.html, data.text))
    if issues:
        first = issues[0]
        where = f"line {first.line}" if first.line is not None else "unknown line"
        raise Invalid(
            f"template is invalid: {first.part} part, {where}: {first.message}",
            {"errors": [{"part": i.part, "line": i.line, "message": i.message} for i in issues]},
        )


async def create_template(ctx: ServiceContext, data: TemplateIn) -> Template:
    _check(data.key, data)
    if await ctx.session.get(Template, data.key) is not None:
        raise Conflict("a template with this key exists; use PUT to change it", {"key": data.key})
    t = Template(key=data.key, subject=data.subject, html=data.html)
    _apply(t, data)
    ctx.session.add(t)
    await ctx.session.commit()
    return t


async def get_template(ctx: ServiceContext, key: str) -> Template:
    t = await ctx.session.get(Template, key)
    if t is None:
        raise NotFound("template not found", {"key": key})
    return t


async def put_template(ctx: ServiceContext, key: str, data: TemplateUpdate) -> Template:
    t = await get_template(ctx, key)
    _check(key, data)
    _apply(t, data)
    ctx.session.add(t)
    await ctx.session.commit()
    return t


async def template_keys(ctx: ServiceContext) -> set[str]:
    return set((await ctx.session.exec(select(Template.key))).all())


class PreviewIn(BaseModel):
    contact_id: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    journey_key: str = Field(default="preview", max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")
    journey_name: str = Field(default="Preview", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")


async def preview_template(ctx: ServiceContext, key: str, data: PreviewIn) -> dict[str, Any]:
    """Render for a contact with links untracked; nothing is stored or sent."""
    t = await get_template(ctx, key)
    contact = await get_contact(ctx, data.contact_id)
    try:
        out = render(
            TemplateSource(t.key, t.subject, t.html, t.text),
            template_context(
                email=contact.email or "",
                external_id=contact.external_id or "",
                timezone=contact.timezone,
                attributes=contact.attributes or {},
                journey_key=data.journey_key,
                journey_name=data.journey_name,
            ),
        )
    except TemplateRenderError as exc:
        raise Invalid(
            str(exc),
            {"errors": [{"part": exc.part, "line": exc.line, "message": exc.message}]},
        ) from None
    return {
        "template": t.key,
        "contact_id": contact.id,
        "subject": out.subject,
        "html": out.html,
        "text": out.text,
        "links": [{"name": link.name, "url": link.url} for link in out.links],
    }
