"""Where a parked (cached) run's worker memory goes: tracemalloc by file and a heap count by
type, in one process running the worker, after N runs park in a 30-day wait.

    .venv/bin/python bench/parked_memory.py --runs 300 --cache 1000

RSS also counts the Rust core (history and state machines of cached runs), which
tracemalloc does not see: the gap between the two deltas is that part.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.parked_setup import enrol_parked, parked_count, seed_parked  # noqa: E402
from bench.stack import bench_stack  # noqa: E402
from core.temporal import connect  # noqa: E402
from worker import build_worker  # noqa: E402


def type_counts() -> Counter[str]:
    # str(): a class may shadow __module__ with a descriptor
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--cache", type=int, default=1000, help="max_cached_workflows")
    ap.add_argument("--steps", type=int, default=0, help="steps after the wait (definition size)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    me = psutil.Process()
    async with bench_stack() as stack:
        settings = stack.settings.model_copy(update={"worker_max_cached_workflows": args.cache})
        client = await connect(settings)
        ids = await seed_parked(stack, client, args.runs, args.steps)
        worker = build_worker(client, stack.db, settings)
        async with worker:
            await asyncio.sleep(2)
            gc.collect()
            tracemalloc.start(1)
            snap0 = tracemalloc.take_snapshot()
            types0 = type_counts()
            rss0 = me.memory_info().rss
            await enrol_parked(stack, client, ids)
            while await parked_count(stack) < args.runs:
                await asyncio.sleep(0.5)
            await asyncio.sleep(3)
            gc.collect()
            snap1 = tracemalloc.take_snapshot()
            types1 = type_counts()
            rss1 = me.memory_info().rss
            tracemalloc.stop()
    n = args.runs
    cached = min(n, args.cache)
    stats = snap1.compare_to(snap0, "filename")
    py = sum(s.size_diff for s in stats)
    print(f"{n} runs parked, {cached} cached: RSS +{(rss1 - rss0) / 1024:.0f} KB "
          f"({(rss1 - rss0) / max(cached, 1) / 1024:.1f} KB per cached run); "
          f"Python heap +{py / 1024:.0f} KB ({py / max(cached, 1) / 1024:.1f} KB per cached run)")
    print("-- Python heap growth by file (per cached run)")
    for s in stats[: args.top]:
        print(f"{s.size_diff / max(cached, 1):10.0f} B  {s.traceback[0].filename}")
    print("-- objects by type (growth per cached run)")
    diff = types1 - types0
    for name, count in diff.most_common(args.top):
        print(f"{count / max(cached, 1):10.1f}  {name}")


if __name__ == "__main__":
    asyncio.run(main())
