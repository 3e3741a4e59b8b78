"""Segments (grown by the contacts & segments work): membership lookups used by enrolment."""

from __future__ import annotations

from sqlmodel import select

from core.models import Segment, SegmentMembership
from services.context import ServiceContext
from services.errors import NotFound


async def member_ids(ctx: ServiceContext, key: str) -> list[str]:
    if await ctx.session.get(Segment, key) is None:
        raise NotFound("segment not found", {"segment": key})
    rows = await ctx.session.exec(
        select(SegmentMembership.contact_id).where(SegmentMembership.segment_key == key)
    )
    return list(rows.all())
