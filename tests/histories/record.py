"""Record workflow histories of representative journey runs for the replay test.

    PYTHONPATH=. .venv/bin/python tests/histories/record.py [--suffix _v3] [scenario ...]

Starts its own throw-away stack (embedded PostgreSQL, the Temporal dev server, the SMTP
sink, an in-process worker), runs each scenario through the API, and writes one JSON file
per scenario here: {"scenario", "runs": [{"workflow_id", "run_id", "history"}]} (every run
of a continue-as-new chain). Payloads are recorded with the plain JSON converter so the files
replay without the codec keys; they hold only test data (ids, definitions, times).

Re-record after an intentional, versioned change to the workflow (and keep the old files
when old runs may still be open: they are what the replay test protects).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.migrate import upgrade_async
from core.models import JourneyVersion, Segment, Send, utcnow
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store
from devstack.temporal import TemporalDevServer
from services.apikeys import create_key
from services.enrollment import start_run
from tests.journey_support import (
    deliver_event,
    enroll,
    finished,
    human_engagement,
    journey,
    make_contact,
    make_template,
    publish,
    start,
    until,
    waiting,
)
from workflows.journey import workflow_id

HERE = Path(__file__).parent


class Stack:
    def __init__(self, api: httpx.AsyncClient, db: Database, temporal: Client,
                 settings: Settings) -> None:
        self.api, self.db, self.temporal, self.settings = api, db, temporal, settings


Scenario = Callable[[Stack], Awaitable[list[tuple[str, str]]]]  # -> [(journey key, contact)]


async def send_wait_send(st: Stack) -> list[tuple[str, str]]:
    cid = await make_contact(st.api, st.db)
    t1, t2 = await make_template(st.api), await make_template(st.api)
    d = journey(
        {
            "first": {"type": "send_email", "template": t1, "next": "pause"},
            "pause": {"type": "wait", "duration": "PT1S", "next": "second"},
            "second": {"type": "send_email", "template": t2, "next": "done"},
            "done": {"type": "exit"},
        },
        "first",
    )
    key = await start(st.api, d, cid)
    await finished(st.api, key, cid)
    return [(key, cid)]


async def send_exit(st: Stack) -> list[tuple[str, str]]:
    """The enrolment benchmark's journey: one send, then exit. send_exit_v1.json is this
    scenario recorded before the local-records patch (record_steps an activity, one upsert
    per change): keep it, it is what runs started then replay against."""
    cid = await make_contact(st.api, st.db)
    tpl = await make_template(st.api)
    d = journey(
        {"mail": {"type": "send_email", "template": tpl, "next": "done"}, "done": {"type": "exit"}},
        "mail",
    )
    key = await start(st.api, d, cid)
    await finished(st.api, key, cid)
    return [(key, cid)]


async def engagement_update_branch_split(st: Stack) -> list[tuple[str, str]]:
    seg = f"seg-{uuid.uuid4().hex[:8]}"
    async with st.db.session() as s:
        s.add(Segment(key=seg))
        await s.commit()
    cid = await make_contact(st.api, st.db, attributes={"age": 60})
    tpl = await make_template(st.api, '<a href="{{ link(\'book\', \'https://x.test\') }}">b</a>')
    d = journey(
        {
            "mail": {"type": "send_email", "template": tpl, "next": "clicked?"},
            "clicked?": {"type": "wait_for_engagement", "send_step": "mail", "event": "click",
                         "link": "book", "timeout": "PT1M", "yes": "tag", "no": "done"},
            "tag": {"type": "update_contact", "set": {"stage": "engaged"},
                    "add_segments": [seg], "next": "older?"},
            "older?": {"type": "branch", "cases": [
                {"if": {"all": [{"attr": "age", "op": "gte", "value": 50},
                                {"segment": seg}, {"engaged": "mail", "event": "click"}]},
                 "next": "ab"}], "default": "done"},
            "ab": {"type": "split", "paths": [{"weight": 1, "next": "done"},
                                              {"weight": 1, "next": "bye"}]},
            "bye": {"type": "exit", "reason": "holdout"},
            "done": {"type": "exit"},
        },
        "mail",
    )
    key = await start(st.api, d, cid)
    state = await waiting(st.temporal, key, cid, "engagement")

    async def send_id() -> str | None:
        async with st.db.session() as s:
            return (await s.exec(select(Send.id).where(Send.run_id == state["run_id"]))).first()

    sid = await until(send_id)
    await human_engagement(st.db, st.temporal, key, cid, sid, "mail", "click", "book")
    await finished(st.api, key, cid)
    return [(key, cid)]


async def events_goal_exit(st: Stack) -> list[tuple[str, str]]:
    cid = await make_contact(st.api, st.db)
    d = journey(
        {
            "form?": {"type": "wait_for_event", "event": "form", "where": {"kind": "intake"},
                      "timeout": "PT1M", "yes": "hold", "no": "done"},
            "hold": {"type": "wait", "duration": "PT5M", "next": "done"},
            "done": {"type": "exit"},
        },
        "form?",
        exit_when=[{"event": "moved"}, {"condition": {"attr": "gone", "op": "exists"}}],
        goal={"event": "booked"},
    )
    key = await start(st.api, d, cid)
    await waiting(st.temporal, key, cid, "event")
    await deliver_event(st.db, st.temporal, key, cid, "form", {"kind": "other"})
    await deliver_event(st.db, st.temporal, key, cid, "form", {"kind": "intake"})
    await waiting(st.temporal, key, cid, "timer")
    await deliver_event(st.db, st.temporal, key, cid, "noise")
    await deliver_event(st.db, st.temporal, key, cid, "booked")
    await finished(st.api, key, cid)
    return [(key, cid)]


async def loop_guard_and_operator_exit(st: Stack) -> list[tuple[str, str]]:
    looping, stopped = await make_contact(st.api, st.db), await make_contact(st.api, st.db)
    d = journey(
        {
            "tick": {"type": "wait", "duration": "PT0.2S", "next": "back", "max_visits": 2},
            "back": {"type": "goto", "step": "tick", "max_visits": 2},
        },
        "tick",
    )
    key = await start(st.api, d, looping)
    await finished(st.api, key, looping)
    d2 = journey({"hold": {"type": "wait", "duration": "PT5M", "next": "done"},
                  "done": {"type": "exit"}}, "hold")
    key2 = await start(st.api, d2, stopped)
    await waiting(st.temporal, key2, stopped, "timer")
    await st.api.post(f"/v1/journeys/{key2}/runs/{stopped}/exit")
    await finished(st.api, key2, stopped)
    return [(key, looping), (key2, stopped)]


async def start_journey_chain(st: Stack) -> list[tuple[str, str]]:
    cid = await make_contact(st.api, st.db)
    target = await publish(st.api, journey({"end": {"type": "exit"}}, "end"))
    d = journey({"go": {"type": "start_journey", "journey": target, "next": "end"},
                 "end": {"type": "exit"}}, "go")
    key = await start(st.api, d, cid)
    await finished(st.api, key, cid)
    await finished(st.api, target, cid)
    return [(key, cid), (target, cid)]


async def continue_as_new_mid_wait(st: Stack) -> list[tuple[str, str]]:
    cid = await make_contact(st.api, st.db)
    d = journey(
        {
            "tick": {"type": "wait", "duration": "PT0.2S", "next": "again", "max_visits": 4},
            "again": {"type": "goto", "step": "reply?", "max_visits": 4},
            "reply?": {"type": "wait_for_event", "event": "reply", "timeout": "PT5M",
                       "yes": "tick", "no": "tick", "max_visits": 4},
        },
        "tick",
    )
    key = await publish(st.api, d)
    async with st.db.session() as s:
        version = await s.get(JourneyVersion, (key, 1))
    assert version is not None
    await start_run(st.temporal, st.settings.temporal_task_queue, version, cid,
                    continue_as_new_after=40)
    for _ in range(4):
        await waiting(st.temporal, key, cid, "event")
        for _ in range(4):
            await deliver_event(st.db, st.temporal, key, cid, "noise")
        await deliver_event(st.db, st.temporal, key, cid, "reply")
        await asyncio.sleep(0.5)
    await finished(st.api, key, cid, timeout=60)
    return [(key, cid)]


async def frequency_cap_skip_and_defer(st: Stack) -> list[tuple[str, str]]:
    """Recorded before the cap decision reserved the send (SendCapInput.send): the command
    sequence is the same, so these runs replay against the current code."""
    cid = await make_contact(st.api, st.db)
    t1, t2 = await make_template(st.api), await make_template(st.api)
    d = journey(
        {
            "first": {"type": "send_email", "template": t1, "next": "second"},
            "second": {"type": "send_email", "template": t2, "next": "done"},
            "done": {"type": "exit"},
        },
        "first",
        frequency_cap={"max": 1, "period": "P1D", "action": "skip"},
    )
    key = await start(st.api, d, cid)
    await finished(st.api, key, cid)
    d2 = journey(
        {"mail": {"type": "send_email", "template": t1, "next": "done"},
         "done": {"type": "exit"}},
        "mail",
        frequency_cap={"max": 1, "period": "P1D", "action": "defer"},
    )
    key2 = await start(st.api, d2, cid)
    await waiting(st.temporal, key2, cid, "frequency_cap")
    return [(key, cid), (key2, cid)]


async def frequency_cap_undecided(st: Stack) -> list[tuple[str, str]]:
    """Undecided cap decisions (another journey's send still in flight after send_cap's
    settle wait), from the "frequency-cap-undecided-looks-again" patch on: a skip journey
    looks again a minute later and sends (the send in flight failed), another looks again
    and skips (it went out); a third counts a send stuck in flight for over IN_FLIGHT_STALE
    at once (skipped / frequency_cap_in_flight). About 75 s: the look-again timer is real."""
    from activities.lookups import IN_FLIGHT_STALE

    async def in_flight(cid: str, age: timedelta = timedelta(0)) -> str:
        k = f"other-{uuid.uuid4().hex[:8]}/s/1"
        send = Send(send_key=k, run_id=k.split("/")[0], journey_key="other", version=1,
                    step="s", visit=1, contact_id=cid, template_key="x",
                    category="care_reminders", message_id=f"<{k}@t>", status="sending",
                    created_at=utcnow() - age)
        async with st.db.session() as s:
            s.add(send)
            await s.commit()
        return send.id

    async def settle(send_id: str, status: str) -> None:
        async with st.db.session() as s:
            row = await s.get(Send, send_id)
            assert row is not None
            row.status, row.sent_at = status, (utcnow() if status == "sent" else None)
            s.add(row)
            await s.commit()

    tpl = await make_template(st.api)
    d = journey(
        {"promo": {"type": "send_email", "template": tpl, "next": "done"},
         "done": {"type": "exit"}},
        "promo",
        frequency_cap={"max": 1, "period": "P1D", "action": "skip"},
    )
    key = await publish(st.api, d)
    fails, goes_out, stale = [await make_contact(st.api, st.db) for _ in range(3)]
    others = {cid: await in_flight(cid) for cid in (fails, goes_out)}
    await in_flight(stale, IN_FLIGHT_STALE + timedelta(minutes=1))
    await enroll(st.api, key, fails, goes_out, stale)
    for cid, status in ((fails, "failed"), (goes_out, "sent")):
        await waiting(st.temporal, key, cid, "frequency_cap")
        await settle(others[cid], status)
    for cid in (fails, goes_out, stale):
        await finished(st.api, key, cid, timeout=120)
    return [(key, fails), (key, goes_out), (key, stale)]


SCENARIOS: dict[str, Scenario] = {
    "send_wait_send": send_wait_send,
    "send_exit": send_exit,
    "engagement_update_branch_split": engagement_update_branch_split,
    "events_goal_exit": events_goal_exit,
    "loop_guard_and_operator_exit": loop_guard_and_operator_exit,
    "start_journey_chain": start_journey_chain,
    "continue_as_new_mid_wait": continue_as_new_mid_wait,
    "frequency_cap_skip_and_defer": frequency_cap_skip_and_defer,
    "frequency_cap_undecided": frequency_cap_undecided,
}


async def histories(temporal: Client, key: str, cid: str) -> list[dict[str, Any]]:
    """Every run of the workflow id, oldest first (a continue-as-new chain has several)."""
    wid = workflow_id(key, cid)
    runs = [w async for w in temporal.list_workflows(f"WorkflowId = '{wid}'")]
    out = []
    for w in sorted(runs, key=lambda w: w.start_time):
        history = await temporal.get_workflow_handle(wid, run_id=w.run_id).fetch_history()
        out.append({"workflow_id": wid, "run_id": w.run_id,
                    "history": json.loads(history.to_json())})
    return out


async def record(names: list[str], suffix: str = "") -> None:
    from api.main import create_app
    from worker import build_worker

    workdir = Path(tempfile.mkdtemp(prefix="journeys-record-"))
    os.chmod(workdir, 0o755)  # the PostgreSQL server user must traverse it
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=True)
    server = TemporalDevServer(port=free_port(), ui_port=None, db_file=None)
    sink_port = free_port()
    pg.start()
    server.start()
    try:
        await pg.wait_ready()
        await upgrade_async(pg.url())
        await server.wait_ready()
        settings = Settings(
            journeys_home=workdir / "home", database_url=pg.url(),
            temporal_address=server.address, temporal_task_queue="record",
            smtp_url=f"smtp://127.0.0.1:{sink_port}", smtp_allow_plaintext=True,
            public_base_url="http://testserver", dev_mode=True,
            _env_file=None,  # type: ignore[call-arg]
        )
        db = Database(pg.url())
        sink = SmtpSink(SinkHandler(db_store(db)), port=sink_port)
        await sink.start()
        temporal = await Client.connect(server.address)  # plain JSON payloads, see above
        worker = build_worker(temporal, db, settings)
        task = asyncio.create_task(worker.run())
        async with db.session() as s:
            key = await create_key(s, "admin", str(settings.secret_values()["api_key_pepper"]))
        app = create_app(settings, db=db, temporal=temporal)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                     headers={"Authorization": f"Bearer {key}"}) as api:
            st = Stack(api, db, temporal, settings)
            for name in names:
                runs: list[dict[str, Any]] = []
                for jkey, cid in await SCENARIOS[name](st):
                    runs += await histories(temporal, jkey, cid)
                path = HERE / f"{name}{suffix}.json"
                path.write_text(json.dumps({"scenario": name, "runs": runs}, indent=1) + "\n")
                print(f"{path.name}: {len(runs)} run(s)")
        await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        await sink.stop()
        await db.dispose()
    finally:
        server.stop()
        pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="record workflow histories for the replay test")
    ap.add_argument("--suffix", default="", help="file name suffix: keeps older recordings")
    ap.add_argument("scenarios", nargs="*")
    args = ap.parse_args()
    chosen = args.scenarios or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        known = ", ".join(SCENARIOS)
        sys.exit(f"unknown scenario(s): {', '.join(sorted(unknown))}; known: {known}")
    asyncio.run(record(chosen, args.suffix))
