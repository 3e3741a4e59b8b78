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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert  # noqa: E402
from sqlmodel import select  # noqa: E402
from temporalio.client import Client  # noqa: E402

from bench.stack import BenchStack, bench_stack  # noqa: E402
from core.models import Consent, Contact, OutboxMessage  # noqa: E402
from core.temporal import connect  # noqa: E402
from services.context import ServiceContext  # noqa: E402
from services.enrollment import enroll  # noqa: E402
from services.journeys import create_journey, publish_journey  # noqa: E402
from services.templates import TemplateIn, create_template  # noqa: E402


async def wait_until(probe, timeout: float = 900.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark did not finish")
        await asyncio.sleep(0.05)


async def raw_rate(stack: BenchStack, n: int) -> float:
    proc = stack.spawn("bench/raw_worker.py")
    try:
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
            await asyncio.sleep(0.05)
        return n / (time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait()


async def journey_rate(stack: BenchStack, n: int, workers: int) -> float:
    procs = [stack.spawn("-m", "cli.main", "worker") for _ in range(workers)]
    try:
        client = await connect(stack.settings)
        tag = str(int(time.time()))
        async with stack.db.session() as s:
            ctx = ServiceContext(s, stack.settings, client)
            rows = [
                {"id": f"c_bench{tag}{i:07d}", "external_id": f"bench-{tag}-{i}",
                 "email": f"p{i}@example.com", "timezone": "UTC", "attributes": {}}
                for i in range(n)
            ]
            await s.execute(insert(Contact), rows)
            await s.execute(insert(Consent), [
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
            ids = [r["id"] for r in rows]
            t0 = time.perf_counter()
            await enroll(ctx, f"bench-{tag}", ids)

        async def all_sent() -> bool:
            async with stack.db.session() as s2:
                c = (await s2.exec(select(func.count()).select_from(OutboxMessage))).one()
            return int(c) >= n

        await wait_until(all_sent)
        return n / (time.perf_counter() - t0)
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
    args = ap.parse_args()
    raws, ours = [], []
    async with bench_stack() as stack:
        await asyncio.sleep(1)
        for _ in range(args.rounds):
            raws.append(await raw_rate(stack, args.contacts))
            async with stack.db.session() as s:
                await s.exec(OutboxMessage.__table__.delete())  # type: ignore[attr-defined,call-overload]
                await s.commit()
            ours.append(await journey_rate(stack, args.contacts, args.workers))
    raw, our = statistics.median(raws), statistics.median(ours)
    print(f"contacts={args.contacts} workers={args.workers} rounds={args.rounds}")
    print(f"raw one-activity workflow: {raw:8.1f} workflows/s")
    print(f"journey send (enrol->sink): {our:8.1f} contacts/s")
    print(f"ratio journey/raw: {our / raw:.2f} (target >= 0.8)")


if __name__ == "__main__":
    asyncio.run(main())
