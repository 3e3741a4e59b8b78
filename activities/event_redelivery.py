"""The worker's side of event redelivery (see workflows.event_redelivery)."""

from __future__ import annotations

from temporalio import activity

from core.config import Settings
from core.db import Database
from core.models import utcnow
from services.context import ServiceContext
from services.event_redelivery import redeliver_due


class EventRedeliveryActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name="redeliver_events")
    async def redeliver_events(self) -> dict[str, int]:
        """Delivers the due undelivered events; returns delivered / pending / abandoned.
        Due-ness is judged on the wall clock, like the events' receipt times."""
        async with self.db.session() as s:
            ctx = ServiceContext(s, self.settings, activity.client())
            result = await redeliver_due(ctx, utcnow(), progress=lambda n: activity.heartbeat(n))
        return result.as_dict()
