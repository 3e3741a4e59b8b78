"""Continue-as-new with a lowered threshold (50 history events): visits, the step trail,
a pending wait's deadline and the run's identity all survive."""

from __future__ import annotations

import httpx
from sqlmodel import col, func, select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import JourneyVersion, Run, StepLog
from services.enrollment import start_run
from tests.helpers import eventually
from tests.journey_support import deliver_event, finished, journey, make_contact, publish, waiting
from workflows.journey import workflow_id

THRESHOLD = 50


async def _start_low_threshold(
    api: httpx.AsyncClient, db: Database, temporal: Client, settings: Settings,
    definition: dict[str, object], cid: str,
) -> str:
    key = await publish(api, definition)
    async with db.session() as s:
        version = await s.get(JourneyVersion, (key, 1))
    assert version is not None
    run_id = await start_run(
        temporal, settings.temporal_task_queue, version, cid, continue_as_new_after=THRESHOLD
    )
    assert run_id is not None
    return key


async def _executions(temporal: Client, key: str, cid: str) -> int:
    return (await temporal.count_workflows(f"WorkflowId = '{workflow_id(key, cid)}'")).count


async def test_a_looping_run_continues_as_new_and_keeps_its_visits(
    api: httpx.AsyncClient, db: Database, temporal: Client, settings: Settings
) -> None:
    cid = await make_contact(api, db)
    loops = 20  # enough history (about 7 events a loop) for several continue-as-news
    d = journey(
        {
            "tick": {"type": "wait", "duration": "PT0.1S", "next": "again", "max_visits": loops},
            "again": {"type": "goto", "step": "tick", "max_visits": loops},
        },
        "tick",
    )
    key = await _start_low_threshold(api, db, temporal, settings, d, cid)
    run = await finished(api, key, cid, timeout=60)
    assert run["exit_reason"] == "loop_guard"
    assert run["visits"] == {"tick": loops, "again": loops}
    # One run row and one unbroken trail across every continued execution.
    async with db.session() as s:
        rows = (await s.exec(select(func.count()).select_from(Run).where(
            Run.journey_key == key, Run.contact_id == cid))).one()
        seqs = (await s.exec(select(StepLog.seq).where(StepLog.run_id == run["run_id"])
                             .order_by(col(StepLog.seq)))).all()
    assert rows == 1
    # entered + left for both steps on every loop, then the refused entry's exit record.
    assert list(seqs) == list(range(1, 4 * loops + 2))
    assert await eventually(lambda: _executions(temporal, key, cid)) > 2


async def test_a_wait_survives_continue_as_new_with_its_deadline(
    api: httpx.AsyncClient, db: Database, temporal: Client, settings: Settings
) -> None:
    cid = await make_contact(api, db)
    d = journey(
        {
            "reply?": {"type": "wait_for_event", "event": "reply", "timeout": "PT10M",
                       "yes": "yes", "no": "no"},
            "yes": {"type": "exit", "reason": "replied"},
            "no": {"type": "exit", "reason": "silent"},
        },
        "reply?",
    )
    key = await _start_low_threshold(api, db, temporal, settings, d, cid)
    before = await waiting(temporal, key, cid, "event")
    # Unrelated events grow the history until the run continues as new mid-wait. Usually
    # 15 do (each its own workflow task: ~4 history events); on a loaded machine several
    # signals share a task (1 event each), so more are sent until the run has continued.
    async def continued() -> bool:
        return await _executions(temporal, key, cid) > 1

    for sent in range(1, 61):
        await deliver_event(db, temporal, key, cid, "noise")
        if sent >= 15 and await continued():
            break
    await eventually(continued, timeout=60)  # generous: CI machines are loaded
    after = await waiting(temporal, key, cid, "event")
    assert after["waiting_for"] == before["waiting_for"]  # the same deadline, not a new one
    assert after["visits"] == {"reply?": 1} and after["run_id"] == before["run_id"]
    await deliver_event(db, temporal, key, cid, "reply")
    run = await finished(api, key, cid)
    assert run["exit_reason"] == "replied" and run["visits"] == {"reply?": 1, "yes": 1}
