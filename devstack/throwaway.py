"""A throwaway stack on free ports: embedded PostgreSQL (migrated), the Temporal dev
server with a file DB (WAL pragmas, as `journeys dev` runs it, so it can be restarted
with its data) and the SMTP sink. Benchmarks and fault tests build on it."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import Settings
from core.db import Database
from core.migrate import upgrade_async
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store, db_stored
from devstack.temporal import TemporalDevServer


@dataclass
class Throwaway:
    workdir: Path
    settings: Settings
    db: Database
    pg: EmbeddedPostgres
    temporal: TemporalDevServer
    sink: SmtpSink


@asynccontextmanager
async def throwaway_stack(prefix: str, **settings: object) -> AsyncIterator[Throwaway]:
    """`settings` override the generated Settings (e.g. public_base_url)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"journeys-{prefix}-"))
    workdir.chmod(0o755)  # the unprivileged PostgreSQL user must traverse it
    pg = EmbeddedPostgres(workdir / "pg", free_port())
    temporal = TemporalDevServer(
        port=free_port(), ui_port=None, db_file=workdir / "temporal.db", log_file=workdir / "t.log"
    )
    pg.start()
    temporal.start()
    sink_port = free_port()
    try:
        await pg.wait_ready()
        await upgrade_async(pg.url())
        await temporal.wait_ready()
        values: dict[str, Any] = {
            "journeys_home": workdir / "home",
            "database_url": pg.url(),
            "temporal_address": temporal.address,
            "temporal_task_queue": f"{prefix}-{uuid.uuid4().hex[:6]}",
            "smtp_url": f"smtp://127.0.0.1:{sink_port}",
            "smtp_allow_plaintext": True,
            "_env_file": None,
            **settings,
        }
        config = Settings(**values)
        config.secret_values()
        db = Database(pg.url())
        sink = SmtpSink(SinkHandler(db_store(db), stored=db_stored(db)), port=sink_port)
        await sink.start()
        try:
            yield Throwaway(workdir, config, db, pg, temporal, sink)
        finally:
            await sink.stop()
            await db.dispose()
    finally:
        temporal.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
