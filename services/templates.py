"""E-mail templates: subject, HTML and text parts (Jinja2, rendered in a sandbox)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlmodel import select

from core.models import Template, utcnow
from services.context import ServiceContext
from services.errors import Conflict, NotFound

KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


class TrackIn(BaseModel):
    opens: bool = True
    clicks: bool = True


class TemplateIn(BaseModel):
    key: str = Field(pattern=KEY_PATTERN)
    name: str = ""
    subject: str = Field(min_length=1)
    html: str = Field(min_length=1)
    text: str | None = None
    category: str | None = None
    track: TrackIn = Field(default_factory=TrackIn)


class TemplateUpdate(BaseModel):
    name: str = ""
    subject: str = Field(min_length=1)
    html: str = Field(min_length=1)
    text: str | None = None
    category: str | None = None
    track: TrackIn = Field(default_factory=TrackIn)


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


async def create_template(ctx: ServiceContext, data: TemplateIn) -> Template:
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
    _apply(t, data)
    ctx.session.add(t)
    await ctx.session.commit()
    return t


async def template_keys(ctx: ServiceContext) -> set[str]:
    return set((await ctx.session.exec(select(Template.key))).all())
