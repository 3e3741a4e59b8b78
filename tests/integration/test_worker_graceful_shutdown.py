"""`journeys worker` stopped with SIGTERM lets a send that is mid-SMTP finish: it ends
`sent`, not cancelled and left `sending` (then `uncertain` against a real relay)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from sqlmodel import select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Send
from services.enrollment import start_run
from tests.helpers import eventually
from tests.integration.sending_support import new_contact, set_grant, tag
from tests.integration.smtp_support import recorder, running_sink
from tests.integration.worker_process import send_then_exit, worker_process


async def test_sigterm_lets_a_send_in_progress_finish(
    db: Database, settings: Settings, temporal: Client, workdir: Path
) -> None:
    async with running_sink() as sink:
        rec = recorder(sink)
        rec.stall = True  # DATA is answered 5 s after it arrives
        queue = f"graceful-{tag()}"
        own = settings.model_copy(
            update={
                "temporal_task_queue": queue,
                "smtp_url": f"smtp://127.0.0.1:{sink.port}",
                "smtp_builtin_sink": False,  # a relay: an interrupted send would be uncertain
            }
        )
        with worker_process(own, workdir, SMTP_BUILTIN_SINK="false") as (proc, log):
            version = await send_then_exit(db, settings, temporal, "graceful")
            contact = await new_contact(db, settings)
            await set_grant(db, settings, contact.id, "care")
            assert await start_run(temporal, queue, version, contact.id)

            await asyncio.wait_for(rec.stalled.wait(), 60)  # the message is mid-DATA
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0, log.read_text()[-2000:]

            async def the_send() -> Send | None:
                async with db.session() as s:
                    return (await s.exec(select(Send).where(Send.contact_id == contact.id))).first()

            send = await eventually(the_send, timeout=5)
            assert send is not None
            assert (send.status, send.detail) == ("sent", None)
            assert rec.ids() == [send.message_id]
