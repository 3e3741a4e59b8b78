"""Scheduled journey entry: the activity a journey's schedule runs (via ScheduledEntry)."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from core.config import Settings
from core.db import Database
from services.enrollment import EnrollmentResult
from services.schedules import enroll_audience
from workflows.scheduled_entry import ACTIVITY_NAME, AudienceInput


def _resume(details: Any) -> tuple[str | None, EnrollmentResult | None]:
    """(cursor, totals) from the last heartbeat of a previous attempt."""
    if not details:
        return None, None
    cursor, totals = details[0], details[1] if len(details) > 1 else {}
    result = EnrollmentResult(enrolled=int(totals.get("enrolled", 0)))
    for reason, n in (totals.get("skipped_by_reason") or {}).items():
        result.skip(str(reason), int(n))
    return (str(cursor) if cursor else None), result


class EntryActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name=ACTIVITY_NAME)
    async def enroll_audience(self, inp: AudienceInput) -> dict[str, Any]:
        cursor, totals = _resume(activity.info().heartbeat_details)
        return await enroll_audience(
            self.db,
            self.settings,
            activity.client(),
            inp,
            cursor=cursor,
            totals=totals,
            heartbeat=activity.heartbeat,
        )
