"""Enrolment throughput: contacts/s from enrolment until every first email is in the sink,
against a bare one-activity workflow on the same Temporal server, measured in the same run.

    .venv/bin/python bench/enrollment.py --contacts 5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert  # noqa: E402
from sqlmodel import select  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from bench.stack import BenchStack, bench_stack  # noqa: E402
from core.models import Consent, Contact, OutboxMessage  # noqa: E402
from core.temporal import connect  # noqa: E402
from services.context import ServiceContext  # noqa: E402
from services.enrollment import enroll  # noqa: E402
from services.identity import email_hash  # noqa: E402
from services.journeys import create_journey, publish_journey  # noqa: E402
from services.templates import TemplateIn, create_template  # noqa: E402
from workflows.journey import workflow_id  # noqa: E402


class CpuMeter:
    """CPU seconds by component (Temporal server, PostgreSQL, workers, this driver with the
    SMTP sink), so a phase can be read as CPU per workflow: on a 2-core machine the run is
    bound by CPU, and this shows whose."""

    def __init__(self, stack: BenchStack) -> None:
        assert stack.temporal.proc is not None and stack.pg.proc is not None
        self.temporal = psutil.Process(stack.temporal.proc.pid)
        self.pg = psutil.Process(stack.pg.proc.pid)
        self.me = psutil.Process()

    @staticmethod
    def _own(p: psutil.Process, reaped: bool = False) -> float:
        try:
            t = p.cpu_times()
        except psutil.Error:
            return 0.0
        return t.user + t.system + ((t.children_user + t.children_system) if reaped else 0.0)

    def _tree(self, p: psutil.Process) -> float:
        # Exited backends are counted in the postmaster's children_* times.
        return self._own(p, reaped=True) + sum(self._own(c) for c in p.children(recursive=True))

    def snapshot(self, workers: list[int]) -> dict[str, float]:
        return {
            "temporal": self._own(self.temporal),
            "postgres": self._tree(self.pg),
            "workers": sum(self._own(psutil.Process(pid)) for pid in workers),
            "driver+sink": self._own(self.me),
        }

    @staticmethod
    def per_item(a: dict[str, float], b: dict[str, float], n: int) -> str:
        return "  ".join(f"{k} {1000 * (b[k] - a[k]) / n:.1f}" for k in a)


_SHORT = {
    "WORKFLOW_EXECUTION_STARTED": "start", "WORKFLOW_TASK_SCHEDULED": "wft-sched",
    "WORKFLOW_TASK_STARTED": "wft-start", "WORKFLOW_TASK_COMPLETED": "wft-done",
    "ACTIVITY_TASK_SCHEDULED": "act-sched", "ACTIVITY_TASK_STARTED": "act-start",
    "ACTIVITY_TASK_COMPLETED": "act-done", "WORKFLOW_EXECUTION_COMPLETED": "end",
}


async def phases(client: Client, workflow_ids: list[str], label: str) -> None:
    """Where a run's time goes: median gap before each history event, over a sample of
    runs (a long gap before `wft-start` or `act-start` is a backlog in that queue)."""
    gaps: dict[str, list[float]] = {}
    for wid in workflow_ids:
        handle = client.get_workflow_handle(wid)
        try:
            await asyncio.wait_for(handle.result(), 60)
        except Exception:
            continue
        events = (await handle.fetch_history()).events
        prev = None
        for i, ev in enumerate(events):
            name = _SHORT.get(EventType.Name(ev.event_type).removeprefix("EVENT_TYPE_"))
            at = ev.event_time.ToDatetime().timestamp()
            if name and prev is not None:
                gaps.setdefault(f"{i + 1:02d}:{name}", []).append(1000 * (at - prev))
            prev = at
    print(f"  {label} median ms before each event (over {len(workflow_ids)} runs):",
          "  ".join(f"{k} {statistics.median(v):.0f}" for k, v in sorted(gaps.items())))


# How often each phase checks whether it is done (the journey phase counts outbox rows,
# the raw phase counts completed workflows in visibility). Every 50 ms, the journey
# check's own CPU (a session and a count(*) over the outbox, in this process and in
# PostgreSQL) was a fifth of the driver+sink process's samples in a py-spy profile; both
# phases use the same interval, so each ends at most this late, alike.
POLL_SECONDS = 0.25


async def wait_until(probe, timeout: float = 900.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish")
        await asyncio.sleep(POLL_SECONDS)


async def raw_rate(stack: BenchStack, n: int, meter: CpuMeter, trace: bool = False) -> float:
    proc = stack.spawn("bench/raw_worker.py")
    try:
        await asyncio.sleep(1)  # the worker is polling
        c0 = meter.snapshot([proc.pid])
        client = await Client.connect(str(stack.settings.temporal_address))
        queue = stack.settings.temporal_task_queue + "-raw"
        sem = asyncio.Semaphore(200)
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            async with sem:
                await client.start_workflow("BareWorkflow", i, id=f"raw-{t0}-{i}", task_queue=queue)

        await asyncio.gather(*(one(i) for i in range(n)))
        # Completion seen through visibility (awaiting 5,000 results would be 5,000 long polls).
        query = f"WorkflowType = 'BareWorkflow' AND ExecutionStatus = 'Completed' AND WorkflowId STARTS_WITH 'raw-{t0}-'"
        while (await client.count_workflows(query)).count < n:
            await asyncio.sleep(POLL_SECONDS)
        rate = n / (time.perf_counter() - t0)
        print("  raw CPU ms/workflow:", meter.per_item(c0, meter.snapshot([proc.pid]), n))
        if trace:
            await phases(client, [f"raw-{t0}-{i}" for i in range(0, n, max(1, n // 25))], "raw")
        return rate
    finally:
        proc.terminate()
        proc.wait()


async def journey_rate(
    stack: BenchStack, n: int, workers: int, meter: CpuMeter, trace: bool = False
) -> float:
    procs = [stack.spawn("-m", "cli.main", "worker") for _ in range(workers)]
    pids = [p.pid for p in procs]
    try:
        client = await connect(stack.settings)
        tag = str(int(time.time()))
        async with stack.db.session() as s:
            ctx = ServiceContext(s, stack.settings, client)
            # As the API and imports store them: with the keyed address hash (the send's
            # suppression check reads it; without it the send looks the address up the
            # long way, which no product contact needs).
            rows = [
                {"id": f"c_bench{tag}{i:07d}", "external_id": f"bench-{tag}-{i}",
                 "email": f"p{i}@example.com", "timezone": "UTC", "attributes": {},
                 "email_hash": email_hash(f"p{i}@example.com", ctx.pepper)}
                for i in range(n)
            ]
            await s.exec(insert(Contact), params=rows)  # type: ignore[call-overload]
            await s.exec(insert(Consent), params=[  # type: ignore[call-overload]
                {"contact_id": r["id"], "category": "care", "granted": True, "source": "bench"} for r in rows
            ])
            await s.commit()
            await create_template(ctx, TemplateIn(key=f"b{tag}", subject="Hi", html="<p>Hello</p>"))
            await create_journey(ctx, {
                "key": f"bench-{tag}", "name": "bench", "category": "care",
                "trigger": {"type": "manual"}, "start": "send",
                "steps": {"send": {"type": "send_email", "template": f"b{tag}", "next": "done"},
                          "done": {"type": "exit"}},
            })
            await publish_journey(ctx, f"bench-{tag}")
            ids = [str(r["id"]) for r in rows]
            await asyncio.sleep(1)  # the workers are polling
            c0 = meter.snapshot(pids)
            t0 = time.perf_counter()
            await enroll(ctx, f"bench-{tag}", ids)

        async def all_sent() -> bool:
            async with stack.db.session() as s2:
                c = (await s2.exec(select(func.count()).select_from(OutboxMessage))).one()
            return int(c) >= n

        await wait_until(all_sent)
        rate = n / (time.perf_counter() - t0)
        print("  journey CPU ms/contact:", meter.per_item(c0, meter.snapshot(pids), n))
        if trace:
            sample = ids[:: max(1, n // 25)]
            await phases(client, [workflow_id(f"bench-{tag}", c) for c in sample], "journey")
        return rate
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=1, help="journey worker processes")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--trace", action="store_true", help="where a run's time goes (histories)")
    args = ap.parse_args()
    raws, ours = [], []
    async with bench_stack() as stack:
        await asyncio.sleep(1)
        meter = CpuMeter(stack)
        for _ in range(args.rounds):
            raws.append(await raw_rate(stack, args.contacts, meter, args.trace))
            async with stack.db.session() as s:
                await s.exec(OutboxMessage.__table__.delete())  # type: ignore[attr-defined,call-overload]
                await s.commit()
            ours.append(
                await journey_rate(stack, args.contacts, args.workers, meter, args.trace)
            )
    raw, our = statistics.median(raws), statistics.median(ours)
    print(f"contacts={args.contacts} workers={args.workers} rounds={args.rounds}")
    print(f"raw one-activity workflow: {raw:8.1f} workflows/s")
    print(f"journey send (enrol->sink): {our:8.1f} contacts/s")
    print(f"ratio journey/raw: {our / raw:.2f} (target >= 0.8)")


if __name__ == "__main__":
    asyncio.run(main())
