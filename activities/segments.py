"""Segment work the worker does: the time-based sweep (see workflows.segment_sweep)."""

from __future__ import annotations

from datetime import datetime

from temporalio import activity

from core.config import Settings
from core.db import Database
from services.context import ServiceContext
from services.segment_membership import sweep_due


class SegmentActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name="sweep_segments")
    async def sweep_segments(self, now_iso: str) -> int:
        """Re-checks every due (segment, contact) as of now_iso; returns how many."""
        now = datetime.fromisoformat(now_iso)
        async with self.db.session() as s:
            ctx = ServiceContext(s, self.settings, activity.client())
            return await sweep_due(ctx, now, progress=lambda n: activity.heartbeat(n))
