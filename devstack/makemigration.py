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

# A migration file containing this line is hand-written and survives `--initial`.
HAND_WRITTEN_MARKER = "journeys: hand-written migration"


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
        kept: list[Path] = []
        if initial:
            # Hand-written migrations (triggers, data fixes) build on 0001: park them
            # while 0001 is regenerated, then put them back.
            parked = workdir / "parked"
            parked.mkdir()
            for f in versions.glob("*.py"):
                if HAND_WRITTEN_MARKER in f.read_text():
                    kept.append(f)
                    shutil.move(f, parked / f.name)
                else:
                    f.unlink()
            rev_id = "0001"
        else:
            await asyncio.to_thread(command.upgrade, cfg, "head")
            rev_id = f"{len(list(versions.glob('*.py'))) + 1:04d}"
        try:
            await asyncio.to_thread(
                command.revision, cfg, message=message, autogenerate=True, rev_id=rev_id
            )
        finally:
            for f in kept:
                shutil.move(workdir / "parked" / f.name, f)
    finally:
        pg.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
