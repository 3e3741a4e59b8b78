"""Journeys: drafts, validation, publishing versions, pause/resume/archive."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlmodel import select

from core.models import Journey, JourneyVersion, Segment, Template, utcnow
from dsl.validate import Issue, KnownRefs, validate
from services.context import ServiceContext
from services.errors import Conflict, Invalid, NotFound


def journey_out(j: Journey) -> dict[str, Any]:
    return {
        "key": j.key,
        "name": j.name,
        "status": j.status,
        "latest_version": j.latest_version,
        "definition": j.draft,
        "created_at": j.created_at,
        "updated_at": j.updated_at,
    }


def _issues(errors: list[Issue]) -> list[dict[str, Any]]:
    return [
        {"step": e.step, "field": e.field, "code": e.code, "message": e.message} for e in errors
    ]


async def known_refs(ctx: ServiceContext) -> KnownRefs:
    from mail.template_check import link_names
    from mail.template_types import TemplateSource

    s = ctx.session
    templates = (await s.exec(select(Template))).all()
    links = {
        t.key: link_names(TemplateSource(t.key, t.subject, t.html, t.text)) for t in templates
    }
    return KnownRefs(
        templates={t.key for t in templates},
        segments=set((await s.exec(select(Segment.key))).all()),
        journeys=set((await s.exec(select(Journey.key))).all()),
        links=links,
    )


def _check_shape(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise Invalid("a journey definition is a JSON object", {"errors": []})
    key = raw.get("key")
    if not isinstance(key, str) or not key:
        raise Invalid(
            "journey definition is invalid",
            {"errors": [{"step": None, "field": "key", "code": "missing", "message": "key is required"}]},
        )
    return raw


async def validate_definition(
    ctx: ServiceContext, raw: dict[str, Any], *, extra_journeys: set[str] | None = None
) -> list[dict[str, Any]]:
    refs = await known_refs(ctx)
    if extra_journeys:
        refs = dataclasses.replace(refs, journeys=set(refs.journeys or ()) | extra_journeys)
    return _issues(validate(raw, refs).errors)


async def create_journey(ctx: ServiceContext, raw: Any) -> Journey:
    raw = _check_shape(raw)
    if await ctx.session.get(Journey, raw["key"]) is not None:
        raise Conflict("a journey with this key exists; use PUT to change its draft", {"key": raw["key"]})
    errors = await validate_definition(ctx, raw, extra_journeys={raw["key"]})
    if errors:
        raise Invalid("journey definition is invalid", {"errors": errors})
    j = Journey(key=raw["key"], name=str(raw.get("name", "")), draft=raw)
    ctx.session.add(j)
    await ctx.session.commit()
    return j


async def get_journey(ctx: ServiceContext, key: str) -> Journey:
    j = await ctx.session.get(Journey, key)
    if j is None:
        raise NotFound("journey not found", {"key": key})
    return j


async def put_journey(ctx: ServiceContext, key: str, raw: Any) -> Journey:
    j = await get_journey(ctx, key)
    if j.status == "archived":
        raise Conflict("journey is archived", {"key": key})
    raw = _check_shape(raw)
    if raw["key"] != key:
        raise Invalid(
            "the key in the body differs from the URL",
            {"errors": [{"step": None, "field": "key", "code": "mismatch", "message": "key must match the URL"}]},
        )
    errors = await validate_definition(ctx, raw)
    if errors:
        raise Invalid("journey definition is invalid", {"errors": errors})
    j.draft = raw
    j.name = str(raw.get("name", ""))
    j.updated_at = utcnow()
    ctx.session.add(j)
    await ctx.session.commit()
    return j


async def publish_journey(ctx: ServiceContext, key: str) -> JourneyVersion:
    j = await get_journey(ctx, key)
    if j.status == "archived":
        raise Conflict("journey is archived", {"key": key})
    errors = await validate_definition(ctx, j.draft)
    if errors:
        raise Invalid("journey cannot be published: the draft is invalid", {"errors": errors})
    from services.schedules import require_temporal_for, sync_schedule

    require_temporal_for(ctx, j.draft)
    version = (j.latest_version or 0) + 1
    v = JourneyVersion(journey_key=key, version=version, definition=j.draft)
    j.latest_version = version
    if j.status == "draft":
        j.status = "active"
    j.updated_at = utcnow()
    ctx.session.add(v)
    ctx.session.add(j)
    await ctx.session.commit()
    await sync_schedule(ctx, j)  # a schedule trigger gets (or loses) its Temporal schedule
    return v


async def set_status(ctx: ServiceContext, key: str, action: str) -> Journey:
    j = await get_journey(ctx, key)
    transitions = {
        "pause": ({"active"}, "paused"),
        "resume": ({"paused"}, "active"),
        "archive": ({"draft", "active", "paused"}, "archived"),
    }
    allowed, target = transitions[action]
    if j.status not in allowed:
        raise Conflict(f"cannot {action} a journey that is {j.status}", {"status": j.status})
    j.status = target
    j.updated_at = utcnow()
    ctx.session.add(j)
    await ctx.session.commit()
    from services.schedules import sync_schedule

    await sync_schedule(ctx, j)  # pause/resume/delete the journey's schedule, if any
    return j


async def latest_version(ctx: ServiceContext, key: str) -> JourneyVersion:
    j = await get_journey(ctx, key)
    if j.latest_version is None:
        raise Conflict("journey has no published version", {"key": key})
    v = await ctx.session.get(JourneyVersion, (key, j.latest_version))
    assert v is not None
    return v
