"""Autogenerate an Alembic revision against a throwaway embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from alembic import command

from core.migrate import MIGRATIONS, alembic_config
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres


async def autogenerate(message: str, *, initial: bool = False) -> None:
    """`initial` rewrites 0001 from the tables (allowed only before the first release)."""
    workdir = Path(tempfile.mkdtemp(prefix="journeys-mig-"))
    workdir.chmod(0o755)
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=True)
    pg.start()
    try:
        await pg.wait_ready()
        cfg = alembic_config(pg.url())
        versions = MIGRATIONS / "versions"
        if initial:
            for f in versions.glob("*.py"):
                f.unlink()
            rev_id = "0001"
        else:
            await asyncio.to_thread(command.upgrade, cfg, "head")
            rev_id = f"{len(list(versions.glob('*.py'))) + 1:04d}"
        await asyncio.to_thread(
            command.revision, cfg, message=message, autogenerate=True, rev_id=rev_id
        )
    finally:
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
