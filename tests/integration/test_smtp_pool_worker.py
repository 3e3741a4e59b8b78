"""`journeys worker` keeps its SMTP connections open between sends and, stopped with
SIGTERM, QUITs them instead of leaving the relay to find them cut."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import JourneyVersion
from devstack.child_env import child_env
from services.context import ServiceContext
from services.enrollment import start_run
from services.journeys import create_journey, publish_journey
from tests.helpers import eventually
from tests.integration.sending_support import new_contact, new_template, set_grant, tag
from tests.integration.smtp_support import recorder, running_sink

REPO = Path(__file__).resolve().parents[2]


async def test_sigterm_quits_the_pooled_connections(
    db: Database, settings: Settings, temporal: Client, workdir: Path
) -> None:
    async with running_sink() as sink:
        queue = f"smtp-shutdown-{tag()}"
        own = settings.model_copy(
            update={"temporal_task_queue": queue, "smtp_url": f"smtp://127.0.0.1:{sink.port}"}
        )
        log = workdir / f"worker-{queue}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker"],
                cwd=REPO,
                env=child_env(own),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            template = await new_template(db)
            key = f"shutdown-{tag()}"
            async with db.session() as s:
                ctx = ServiceContext(s, settings, temporal)
                await create_journey(
                    ctx,
                    {
                        "key": key, "name": "shutdown", "category": "care",
                        "trigger": {"type": "manual"}, "start": "send",
                        "steps": {
                            "send": {"type": "send_email", "template": template.key, "next": "done"},
                            "done": {"type": "exit"},
                        },
                    },
                )  # fmt: skip
                await publish_journey(ctx, key)
                version = await s.get(JourneyVersion, (key, 1))
            assert version is not None
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
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
