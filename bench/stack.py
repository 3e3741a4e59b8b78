"""A throwaway stack for benchmarks: embedded PostgreSQL, the Temporal dev server with a
file DB (WAL pragmas, as `journeys dev` runs it), and the SMTP sink, on free ports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.db import Database
from core.migrate import upgrade_async
from devstack.child_env import child_env
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store
from devstack.temporal import TemporalDevServer

ROOT = Path(__file__).resolve().parent.parent
CHILD_LOG = Path(tempfile.gettempdir()) / "journeys-bench-children.log"  # outlives the stack


@dataclass
class BenchStack:
    settings: Settings
    db: Database
    pg: EmbeddedPostgres
    temporal: TemporalDevServer
    sink: SmtpSink
    workdir: Path

    def env(self) -> dict[str, str]:
        s = self.settings
        return child_env(s)

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, *args], env={**self.env(), **env}, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=open(CHILD_LOG, "ab"),  # noqa: SIM115
        )


@asynccontextmanager
async def bench_stack() -> AsyncIterator[BenchStack]:
    workdir = Path(tempfile.mkdtemp(prefix="journeys-bench-"))
    workdir.chmod(0o755)
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
        settings = Settings(
            journeys_home=workdir / "home",
            database_url=pg.url(),
            temporal_address=temporal.address,
            temporal_task_queue=f"bench-{uuid.uuid4().hex[:6]}",
            smtp_url=f"smtp://127.0.0.1:{sink_port}",
            smtp_allow_plaintext=True,
            _env_file=None,  # type: ignore[call-arg]
        )
        settings.secret_values()
        db = Database(pg.url())
        sink = SmtpSink(SinkHandler(db_store(db)), port=sink_port)
        await sink.start()
        try:
            yield BenchStack(settings, db, pg, temporal, sink, workdir)
        finally:
            await sink.stop()
            await db.dispose()
    finally:
        temporal.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)
