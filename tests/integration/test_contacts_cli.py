"""`journeys contacts import FILE` as a user runs it: a subprocess against the session's
database and Temporal, with a progress bar and the per-row report."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import httpx
from sqlalchemy import text

from core.config import Settings
from core.db import Database
from tests.integration.segments_support import tag

ROOT = str(Path(__file__).resolve().parents[2])


async def test_cli_import(tmp_path: Path, settings: Settings, db: Database,
                          api: httpx.AsyncClient) -> None:
    t = tag()
    rows = [f"{t}-{i},p{i}-{t}@example.com,{40 + i}" for i in range(50)]
    rows[2] = f"{t}-2,broken-address,42"
    path = tmp_path / "contacts.csv"
    path.write_text("external_id,email,visits\n" + "\n".join(rows) + "\n")
    env = dict(
        os.environ,
        DATABASE_URL=str(settings.database_url),
        TEMPORAL_ADDRESS=str(settings.temporal_address),
        JOURNEYS_HOME=str(settings.journeys_home),
        COLUMNS="120",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "contacts", "import", str(path), "--batch-size", "20",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    output = stderr.decode()
    assert proc.returncode == 1, output  # some rows failed
    assert "50 rows" in output and "created 49" in output and "failed 1" in output, output
    assert "row 3 (line 4) email: not a valid e-mail address" in output, output
    assert "broken-address" not in output
    async with db.session() as s:
        count = (await s.exec(text("SELECT count(*) FROM contact WHERE external_id LIKE :p")  # type: ignore[call-overload]
                              .bindparams(p=f"{t}-%"))).scalar_one()
    assert count == 49
    # Same pepper as the API: the CLI's email hashes match the service's.
    r = await api.post("/v1/contacts",
                       json={"external_id": f"{t}-0", "email": f"p0-{t}@example.com"})
    async with db.session() as s:
        hashes = (await s.exec(text("SELECT DISTINCT email_hash FROM contact WHERE email = :e")  # type: ignore[call-overload]
                               .bindparams(e=f"p0-{t}@example.com"))).all()
    assert r.status_code == 200 and len(hashes) == 1
