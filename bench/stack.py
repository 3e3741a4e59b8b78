"""The benchmarks' stack (devstack.throwaway) and how they start child processes."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from core.config import Settings
from core.db import Database
from devstack.child_env import child_env
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SmtpSink
from devstack.temporal import TemporalDevServer
from devstack.throwaway import throwaway_stack

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
        return child_env(self.settings)

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, *args], env={**self.env(), **env}, cwd=ROOT, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=open(CHILD_LOG, "ab"),  # noqa: SIM115
        )


@asynccontextmanager
async def bench_stack() -> AsyncIterator[BenchStack]:
    async with throwaway_stack("bench") as t:
        yield BenchStack(t.settings, t.db, t.pg, t.temporal, t.sink, t.workdir)
