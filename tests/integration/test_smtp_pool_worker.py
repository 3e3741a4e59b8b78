"""`journeys worker` keeps its SMTP connections open between sends and, stopped with
SIGTERM, QUITs them instead of leaving the relay to find them cut."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from temporalio.client import Client

from core.config import Settings
from core.db import Database
from services.enrollment import start_run
from tests.helpers import eventually
from tests.integration.sending_support import new_contact, set_grant, tag
from tests.integration.smtp_support import recorder, running_sink
from tests.integration.worker_process import send_then_exit, worker_process


async def test_sigterm_quits_the_pooled_connections(
    db: Database, settings: Settings, temporal: Client, workdir: Path
) -> None:
    async with running_sink() as sink:
        queue = f"smtp-shutdown-{tag()}"
        own = settings.model_copy(
            update={"temporal_task_queue": queue, "smtp_url": f"smtp://127.0.0.1:{sink.port}"}
        )
        with worker_process(own, workdir) as (proc, log):
            version = await send_then_exit(db, settings, temporal, "shutdown")
            contacts = [await new_contact(db, settings) for _ in range(3)]
            for c in contacts:
                await set_grant(db, settings, c.id, "care")
                assert await start_run(temporal, queue, version, c.id)

            async def all_in() -> bool:
                return len(recorder(sink).messages) == len(contacts)

            await eventually(all_in, timeout=60, interval=0.1)
            assert sink.connections.open >= 1  # kept open for the next send
            quits = recorder(sink).quits
            open_now = sink.connections.open
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-2000:]
            assert recorder(sink).quits == quits + open_now
            assert sink.connections.open == 0
