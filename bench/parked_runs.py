"""10,000 runs parked in a 30-day wait: worker RSS, idle CPU, database bytes per run.

    .venv/bin/python bench/parked_runs.py --runs 10000

Baseline: the same worker process before any run exists (RSS, idle CPU), measured in
the same run; database growth is per parked run (PostgreSQL + Temporal's SQLite file).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, insert, text  # noqa: E402
from sqlmodel import select  # noqa: E402

from bench.stack import BenchStack, bench_stack  # noqa: E402
from core.models import Contact, Run  # noqa: E402
from core.temporal import connect  # noqa: E402
from services.context import ServiceContext  # noqa: E402
from services.enrollment import enroll  # noqa: E402
from services.journeys import create_journey, publish_journey  # noqa: E402


def tree_rss(p: psutil.Process) -> int:
    return sum(x.memory_info().rss for x in [p, *p.children(recursive=True)])


def tree_cpu(p: psutil.Process) -> float:
    total = 0.0
    for x in [p, *p.children(recursive=True)]:
        t = x.cpu_times()
        total += t.user + t.system
    return total


async def idle_cpu(p: psutil.Process, seconds: float) -> float:
    c0 = tree_cpu(p)
    await asyncio.sleep(seconds)
    return (tree_cpu(p) - c0) / seconds * 100.0  # percent of one core


async def db_bytes(stack: BenchStack) -> tuple[int, int]:
    async with stack.db.session() as s:
        pg = (await s.exec(text("SELECT pg_database_size(current_database())"))).one()[0]  # type: ignore[call-overload]
    db_file = stack.workdir / "temporal.db"
    sqlite = sum(f.stat().st_size for f in stack.workdir.glob("temporal.db*")) if db_file.exists() else 0
    return int(pg), sqlite


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    args = ap.parse_args()
    async with bench_stack() as stack:
        worker = stack.spawn("-m", "cli.main", "worker")
        proc = psutil.Process(worker.pid)
        try:
            await asyncio.sleep(5)
            rss0 = tree_rss(proc)
            cpu0 = await idle_cpu(proc, args.idle_seconds)
            pg0, sq0 = await db_bytes(stack)

            client = await connect(stack.settings)
            n = args.runs
            async with stack.db.session() as s:
                ids = [f"c_park{i:07d}" for i in range(n)]
                await s.execute(insert(Contact), [
                    {"id": cid, "external_id": f"park-{i}", "email": f"p{i}@example.com",
                     "timezone": "UTC", "attributes": {}} for i, cid in enumerate(ids)
                ])
                await s.commit()
                ctx = ServiceContext(s, stack.settings, client)
                await create_journey(ctx, {
                    "key": "parked", "name": "parked", "category": "care", "trigger": {"type": "manual"},
                    "start": "pause",
                    "steps": {"pause": {"type": "wait", "duration": "P30D", "next": "done"},
                              "done": {"type": "exit"}},
                })
                await publish_journey(ctx, "parked")
                t0 = time.perf_counter()
                await enroll(ctx, "parked", ids)
            while True:
                async with stack.db.session() as s:
                    parked = (await s.exec(select(func.count()).select_from(Run).where(Run.step == "pause"))).one()
                if int(parked) >= n:
                    break
                await asyncio.sleep(0.5)
            park_s = time.perf_counter() - t0
            await asyncio.sleep(5)  # let the worker settle
            rss1 = tree_rss(proc)
            cpu1 = await idle_cpu(proc, args.idle_seconds)
            pg1, sq1 = await db_bytes(stack)
        finally:
            worker.terminate()
            worker.wait()
    mb = 1024 * 1024
    print(f"runs parked: {n} in {park_s:.1f}s ({n / park_s:.0f} runs/s)")
    print(f"worker RSS: baseline {rss0 / mb:.0f} MB -> parked {rss1 / mb:.0f} MB (target <= 300 MB; ratio {rss1 / rss0:.2f})")
    print(f"worker idle CPU: baseline {cpu0:.2f}% -> parked {cpu1:.2f}% of one core (target: near zero)")
    print(f"PostgreSQL bytes per run: {(pg1 - pg0) / n:.0f}")
    print(f"Temporal SQLite bytes per run: {(sq1 - sq0) / n:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
