"""The start_journey step: enrol the contact in another journey's newest published version,
carrying the chain of journeys it came through (the cross-journey loop guard)."""

from __future__ import annotations

from temporalio import activity

from core.config import Settings
from core.db import Database
from core.models import Contact, Journey, JourneyVersion
from services.enrollment import start_run
from workflows.types import StartJourneyInput, StartJourneyResult


class ChainingActivities:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    @activity.defn(name="start_journey")
    async def start_journey(self, inp: StartJourneyInput) -> StartJourneyResult:
        async with self.db.session() as s:
            journey = await s.get(Journey, inp.journey_key)
            if journey is None or journey.latest_version is None:
                return StartJourneyResult("not_published")
            if journey.status != "active":
                return StartJourneyResult("not_active")  # paused: no new entries
            contact = await s.get(Contact, inp.contact_id)
            if contact is None or contact.deleted_at is not None:
                return StartJourneyResult("no_contact")
            version = await s.get(JourneyVersion, (inp.journey_key, journey.latest_version))
            assert version is not None
            run_id = await start_run(
                activity.client(),
                self.settings.temporal_task_queue,
                version,
                inp.contact_id,
                chain=inp.chain,
                continue_as_new_after=inp.continue_as_new_after,
            )
            if run_id is None:
                return StartJourneyResult("already_running")
        # The run writes its own row at its first blocking point (record_steps), which is
        # also where run-start hooks (reports, journey segments) see it begin.
        return StartJourneyResult("started", run_id)
