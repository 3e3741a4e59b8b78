"""The `journeys journeys` and `journeys events` commands against the real stack (each
command runs as its own process, as a user would run it)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
import yaml

from core.config import Settings
from tests.integration.entry_support import contact, runs_of, tag

ROOT = Path(__file__).resolve().parents[2]


async def journeys(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": str(settings.database_url),
        "TEMPORAL_ADDRESS": str(settings.temporal_address),
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "JOURNEYS_HOME": str(settings.journeys_home),  # the same codec keys as the worker
        "COLUMNS": "200",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_create_validate_publish_enroll_runs(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    t = tag()
    key = f"cli-{t}"
    bad = {
        "key": key, "name": "CLI", "category": "care_reminders", "start": "hold",
        "steps": {
            "hold": {"type": "wait", "duration": "soon", "next": "mail"},
            "mail": {"type": "send_email", "template": f"missing-{t}", "next": "nowhere"},
        },
    }
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump(bad))
    code, _, err = await journeys(settings, "journeys", "validate", str(bad_file))
    assert code == 1
    assert "step 'hold', field duration" in err
    assert "step 'mail', field next" in err
    assert "step 'mail', field template" in err

    code, _, err = await journeys(settings, "journeys", "create", str(bad_file))
    assert code == 2 and "journey definition is invalid" in err

    good = {**bad, "steps": {"hold": {"type": "wait", "duration": "P1D", "next": "done"},
                             "done": {"type": "exit"}}}
    good_file = tmp_path / "good.yaml"
    good_file.write_text(yaml.safe_dump(good))
    code, out, err = await journeys(settings, "journeys", "create", str(good_file))
    assert code == 0, err
    assert f"created journey {key} (draft)" in out
    code, out, _ = await journeys(settings, "journeys", "validate", key)
    assert code == 0 and "valid" in out
    code, out, err = await journeys(settings, "journeys", "publish", key)
    assert code == 0, err
    assert "version 1" in out

    ids = [await contact(api) for _ in range(3)]
    id_file = tmp_path / "ids.txt"
    id_file.write_text("# contacts\n" + "\n".join(ids + [ids[0], "c_unknown"]) + "\n")
    code, out, err = await journeys(settings, "journeys", "enroll", key, "--contacts", str(id_file))
    assert code == 0, err
    assert "enrolled 3, skipped 2 (duplicate: 1, unknown_contact: 1)" in out
    assert sorted(r["contact_id"] for r in await runs_of(api, key)) == sorted(ids)

    code, out, _ = await journeys(settings, "journeys", "runs", key, "--json")
    assert code == 0
    assert sorted(json.loads(line)["contact_id"] for line in out.splitlines()) == sorted(ids)

    code, out, _ = await journeys(settings, "journeys", "sync-schedule", key)
    assert code == 0 and "none" in out  # not a scheduled journey

    code, out, _ = await journeys(settings, "journeys", "pause", key)
    assert code == 0 and f"{key} is paused" in out
    code, _, err = await journeys(settings, "journeys", "enroll", key, "--contacts", str(id_file))
    assert code == 2 and "journey is paused" in err


async def test_cli_events_send(api: httpx.AsyncClient, settings: Settings) -> None:
    t = tag()
    cid = await contact(api)
    r = await api.post("/v1/journeys", json={
        "key": f"cev-{t}", "name": "x", "category": "care_reminders",
        "trigger": {"type": "event", "event": f"go_{t}"}, "start": "done",
        "steps": {"done": {"type": "exit"}},
    })
    assert r.status_code == 201
    await api.post(f"/v1/journeys/cev-{t}/publish")
    code, out, err = await journeys(
        settings, "events", "send", f"go_{t}", "--contact", cid, "--properties", '{"a": 1}'
    )
    assert code == 0, err
    assert json.loads(out)["journeys"] == [{"journey": f"cev-{t}", "action": "started"}]
    code, _, err = await journeys(settings, "events", "send", f"go_{t}", "--contact", "c_nope")
    assert code == 2 and "field contact.id" in err
