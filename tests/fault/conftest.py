"""A stack of its own for fault tests: PostgreSQL and a Temporal dev server with a file
DB (so both can be killed and restarted mid-journey), the SMTP sink with fault injection,
and the worker as a subprocess that can be SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest_asyncio
from sqlalchemy import insert

from core.config import Settings
from core.db import Database
from core.models import Consent, Contact
from devstack.child_env import child_env
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SmtpSink
from devstack.temporal import TemporalDevServer
from devstack.throwaway import throwaway_stack
from services.context import ServiceContext
from services.enrollment import enroll
from services.journeys import create_journey, publish_journey
from services.templates import TemplateIn, create_template

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FaultStack:
    workdir: Path
    settings: Settings
    pg: EmbeddedPostgres
    temporal: TemporalDevServer
    sink: SmtpSink
    db: Database
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self) -> subprocess.Popen[bytes]:
        env = child_env(self.settings)
        log = open(self.workdir / "worker.log", "ab")  # noqa: SIM115
        p = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker"],
            env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True,
        )
        self.workers.append(p)
        return p

    def kill_workers(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.workers.clear()


@pytest_asyncio.fixture(scope="module")
async def fault_stack() -> AsyncIterator[FaultStack]:
    async with throwaway_stack("fault", public_base_url="http://127.0.0.1:9") as t:
        stack = FaultStack(t.workdir, t.settings, t.pg, t.temporal, t.sink, t.db)
        try:
            yield stack
        finally:
            stack.kill_workers()


async def make_journey(
    stack: FaultStack, n_contacts: int, wait: str = "PT1S"
) -> tuple[str, list[str]]:
    """A journey send -> wait -> send for `n_contacts` consenting contacts; returns (key, ids)."""
    from core.temporal import connect

    tag = uuid.uuid4().hex[:8]
    ids = [f"c_f{tag}{i:05d}" for i in range(n_contacts)]
    client = await connect(stack.settings)
    async with stack.db.session() as s:
        await s.execute(
            insert(Contact),
            [
                {"id": cid, "external_id": f"f-{tag}-{i}", "email": f"f{tag}.{i}@example.com",
                 "timezone": "UTC", "attributes": {}}
                for i, cid in enumerate(ids)
            ],
        )
        await s.execute(
            insert(Consent),
            [{"contact_id": cid, "category": "care", "granted": True, "source": "test"} for cid in ids],
        )
        await s.commit()
        ctx = ServiceContext(s, stack.settings, client)
        for n in (1, 2):
            await create_template(ctx, TemplateIn(key=f"f{tag}-{n}", subject=f"S{n}", html="<p>x</p>"))
        key = f"fault-{tag}"
        await create_journey(ctx, {
            "key": key, "name": "fault", "category": "care", "trigger": {"type": "manual"},
            "start": "one",
            "steps": {
                "one": {"type": "send_email", "template": f"f{tag}-1", "next": "pause"},
                "pause": {"type": "wait", "duration": wait, "next": "two"},
                "two": {"type": "send_email", "template": f"f{tag}-2", "next": "done"},
                "done": {"type": "exit"},
            },
        })
        await publish_journey(ctx, key)
        result = await enroll(ctx, key, ids)
        assert result.enrolled == n_contacts
    return key, ids
