"""10,000 runs parked in a 30-day wait: worker RSS, idle CPU, database bytes per run.

    .venv/bin/python bench/parked_runs.py                      # 10,000 runs, product defaults
    .venv/bin/python bench/parked_runs.py --runs 1000 --cache 100 --wake 50

Baseline: the same `journeys worker` process before any run exists (RSS, idle CPU) and
the databases' sizes then, measured in the same run. Runs are enrolled through the
product's bulk path (services.enrollment: pages of 1,000, 64 starts in flight); a run
counts as parked once its run row says it sits in the wait, and Temporal's visibility
count must agree. --wake K then signals `exit` to K parked runs and reports how long each
took to close: a run evicted from the worker's cache replays its history first.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text  # noqa: E402
from temporalio.client import Client  # noqa: E402

from bench.parked_setup import (  # noqa: E402
    enrol_parked,
    parked_count,
    running_in_temporal,
    seed_parked,
)
from bench.stack import BenchStack, bench_stack  # noqa: E402
from core.temporal import connect  # noqa: E402
from workflows.journey import workflow_id  # noqa: E402

MB = 1024 * 1024


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
    """PostgreSQL's database size, and Temporal's SQLite file with its WAL (disk it holds)."""
    async with stack.db.session() as s:
        pg = (await s.exec(text("SELECT pg_database_size(current_database())"))).one()[0]  # type: ignore[call-overload]
    sqlite = sum(f.stat().st_size for f in stack.workdir.glob("temporal.db*"))
    return int(pg), sqlite


async def wake(client: Client, contact_ids: list[str]) -> list[float]:
    """Signal `exit` to each run in turn; seconds from the signal until the run closed."""
    took: list[float] = []
    for cid in contact_ids:
        handle = client.get_workflow_handle(workflow_id("parked", cid))
        t0 = time.perf_counter()
        await handle.signal("exit", "bench")
        await handle.result()
        took.append(time.perf_counter() - t0)
    return took


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--idle-seconds", type=float, default=20.0)
    ap.add_argument("--cache", type=int, default=None,
                    help="WORKER_MAX_CACHED_WORKFLOWS for the worker (default: the product default)")
    ap.add_argument("--arena-max", type=int, default=None,
                    help="MALLOC_ARENA_MAX for the worker (default: what `journeys worker` sets)")
    ap.add_argument("--no-sandbox", action="store_true", help="WORKER_WORKFLOW_SANDBOX=false")
    ap.add_argument("--steps", type=int, default=0, help="steps after the wait (definition size)")
    ap.add_argument("--wake", type=int, default=20, help="parked runs to signal `exit` at the end")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up parking after this long")
    args = ap.parse_args()
    env: dict[str, str] = {}
    if args.cache is not None:
        env["WORKER_MAX_CACHED_WORKFLOWS"] = str(args.cache)
    if args.arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(args.arena_max)
    if args.no_sandbox:
        env["WORKER_WORKFLOW_SANDBOX"] = "false"
    n = args.runs
    async with bench_stack() as stack:
        client = await connect(stack.settings)
        ids = await seed_parked(stack, client, n, args.steps)
        worker = stack.spawn("-m", "cli.main", "worker", **env)
        proc = psutil.Process(worker.pid)
        try:
            await asyncio.sleep(10)  # imports, preflight, first polls
            rss0 = tree_rss(proc)
            cpu0 = await idle_cpu(proc, args.idle_seconds)
            pg0, sq0 = await db_bytes(stack)
            rss_peak = rss0
            t0 = time.perf_counter()
            enrolment = asyncio.create_task(enrol_parked(stack, client, ids))
            parked = 0
            said = t0
            while parked < n:
                if time.perf_counter() - t0 > args.timeout:
                    raise SystemExit(f"only {parked} of {n} runs parked after {args.timeout:.0f}s")
                if enrolment.done() and enrolment.exception():
                    raise enrolment.exception()  # type: ignore[misc]
                await asyncio.sleep(1.0)
                parked = await parked_count(stack)
                if time.perf_counter() - said >= 60:
                    said = time.perf_counter()
                    print(f"{said - t0:.0f}s: {parked} parked", file=sys.stderr, flush=True)
                rss_peak = max(rss_peak, tree_rss(proc))
            park_s = time.perf_counter() - t0
            result = await enrolment
            in_temporal = await running_in_temporal(client)
            await asyncio.sleep(5)  # let the worker settle
            rss1 = tree_rss(proc)
            cpu1 = await idle_cpu(proc, args.idle_seconds)
            rss2 = tree_rss(proc)
            pg1, sq1 = await db_bytes(stack)
            woke = await wake(client, random.Random(9).sample(ids, min(args.wake, n)))
        finally:
            worker.terminate()
            worker.wait()
    cache = args.cache if args.cache is not None else stack.settings.worker_max_cached_workflows
    print(f"journey: wait + {args.steps} steps; worker cache: {cache} workflows; sandbox {'off' if args.no_sandbox else 'on'}; "
          f"MALLOC_ARENA_MAX {args.arena_max or 'as journeys worker sets it'}")
    print(f"runs parked: {parked} (enrolled {result.enrolled}, skipped {result.skipped}; "
          f"Temporal visibility: {in_temporal} running) in {park_s:.1f}s ({n / park_s:.0f} runs/s)")
    print(f"worker RSS: baseline {rss0 / MB:.0f} MB -> parked {rss1 / MB:.0f} MB -> after "
          f"{args.idle_seconds:.0f}s idle {rss2 / MB:.0f} MB (peak while parking {rss_peak / MB:.0f} MB; "
          f"target <= 300 MB; ratio {rss2 / rss0:.2f})")
    print(f"worker idle CPU over {args.idle_seconds:.0f}s: baseline {cpu0:.2f}% -> parked {cpu1:.2f}% "
          "of one core (target: near zero)")
    print(f"PostgreSQL: {pg0 / MB:.1f} -> {pg1 / MB:.1f} MB, {(pg1 - pg0) / n:.0f} bytes per run")
    print(f"Temporal SQLite: {sq0 / MB:.1f} -> {sq1 / MB:.1f} MB, {(sq1 - sq0) / n:.0f} bytes per run")
    if woke:
        woke.sort()
        print(f"wake {len(woke)} parked runs (exit signal -> closed): p50 {statistics.median(woke) * 1000:.0f} ms, "
              f"max {woke[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
