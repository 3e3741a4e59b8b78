"""A `journeys worker` child process on its own task queue, and the one-send journey the
worker-process tests drive through it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import JourneyVersion
from devstack.child_env import child_env
from services.context import ServiceContext
from services.journeys import create_journey, publish_journey
from tests.integration.sending_support import new_template, tag

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def worker_process(
    own: Settings, workdir: Path, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The worker with `own` settings (plus `env`), its output in a log file; killed on exit
    unless the test has already stopped it."""
    log = workdir / f"worker-{own.temporal_task_queue}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker"],
            cwd=REPO,
            env=child_env(own, **env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def send_then_exit(
    db: Database, settings: Settings, temporal: Client, prefix: str
) -> JourneyVersion:
    """A published journey of one send step, then exit."""
    template = await new_template(db)
    key = f"{prefix}-{tag()}"
    async with db.session() as s:
        ctx = ServiceContext(s, settings, temporal)
        await create_journey(
            ctx,
            {
                "key": key, "name": prefix, "category": "care",
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
    return version
