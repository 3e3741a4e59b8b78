"""The Temporal worker: journey workflows and every activity they call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.chaining import ChainingActivities
from activities.contact_updates import ContactUpdateActivities
from activities.lookups import LookupActivities
from activities.runs import RunActivities
from activities.sending import SendActivities
from activities.smtp import SmtpTransport, parse_smtp_url
from core.config import Settings, get_settings
from core.db import Database
from core.temporal import connect
from workflows.journey import JourneyWorkflow

log = logging.getLogger("journeys.worker")


def workflows() -> Sequence[type]:
    return [JourneyWorkflow]


def activities(db: Database, settings: Settings) -> list[Any]:
    if not settings.smtp_url:
        raise RuntimeError("SMTP_URL is not set (journeys dev sets it for you)")
    transport = SmtpTransport(parse_smtp_url(settings.smtp_url, settings.smtp_allow_plaintext))
    runs = RunActivities(db)
    sending = SendActivities(db, settings, transport)
    lookups = LookupActivities(db)
    updates = ContactUpdateActivities(db, settings)
    chaining = ChainingActivities(db, settings)
    return [
        runs.record_steps,
        sending.send_email,
        lookups.wait_context,
        lookups.judge,
        lookups.find_event,
        lookups.engagement_seen,
        lookups.send_cap,
        updates.update_contact,
        chaining.start_journey,
    ]


def build_worker(client: Client, db: Database, settings: Settings) -> Worker:
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=workflows(),
        activities=activities(db, settings),
        max_concurrent_activities=200,
        max_concurrent_workflow_tasks=200,
        max_cached_workflows=10000,
    )


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    if not settings.database_url:
        raise RuntimeError("DATABASE_URL is not set (journeys dev sets it for you)")
    db = Database(settings.database_url)
    client = await connect(settings)
    worker = build_worker(client, db, settings)
    log.info("worker polling task queue %s", settings.temporal_task_queue)
    await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_worker())
