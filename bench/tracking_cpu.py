"""CPU per tracking hit of our own code, without an HTTP server or a load generator.

    .venv/bin/python bench/tracking_cpu.py [--requests 60000] [--repeat 3]

`api.serve.Front` over the app with its lifespan (link cache, hit buffer and writer on
the same uvloop loop, judge out of the process as `bench/tracking_load.py` runs it) is
called directly with ASGI scopes by 32 concurrent callers over 2,000 warm messages
(pixel and click), and so is the baseline, `bench/bare_app.py`, in the same process and
run. Printed: process CPU per request of each (the difference is what our request path
and writer cost), and PostgreSQL's CPU per hit written. Process CPU time is what a busy
shared machine distorts least, so this is the figure to compare changes with while others
load the machine; `bench/tracking_load.py` stays the end-to-end measure.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvloop  # noqa: E402

from bench import bare_app  # noqa: E402
from bench.stack import bench_stack  # noqa: E402
from bench.tracking_load import make_urls, tree_cpu  # noqa: E402
from core.temporal import connect  # noqa: E402

HEADERS = [
    (b"host", b"127.0.0.1"),
    (
        b"user-agent",
        b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        b" Chrome/142.0.0.0 Safari/537.36",
    ),
    (b"accept", b"text/html,image/*"),
]
CALLERS = 32

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
        "method": "GET", "root_path": "", "path": path, "raw_path": path.encode(),
        "query_string": b"", "headers": HEADERS,
    }  # fmt: skip


async def drive(app: App, paths: list[str], n: int, statuses: Counter[int]) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] += 1

    async def caller(k: int) -> None:
        for i in range(k, n, CALLERS):
            await app(scope(paths[i % len(paths)]), receive, send)
            await asyncio.sleep(0)  # as a server would, between requests

    await asyncio.gather(*(caller(k) for k in range(CALLERS)))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=60_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from api.main import create_app
    from api.serve import Front
    from services.tracking_buffer import flush_all

    async with bench_stack() as stack:
        base = "http://127.0.0.1:9"
        settings = stack.settings.model_copy(
            update={"tracking_judge_in_api": False, "public_base_url": base}
        )
        paths = await make_urls(stack, base, 2000, "warm")
        app = create_app(settings, db=stack.db, temporal=await connect(settings))
        front = Front(app)
        assert stack.pg.proc is not None
        pg = stack.pg.proc.pid
        ours, bare, pg_cpu = [], [], []
        statuses: Counter[int] = Counter()
        async with app.router.lifespan_context(app):
            await drive(front, paths, len(paths), Counter())  # every link seen once
            await flush_all()
            cache = app.state.tracking_endpoints.cache
            lookups0, refreshed0 = cache.lookups, cache.refreshed
            for _ in range(args.repeat):
                c0 = time.process_time()
                await drive(bare_app.app, paths, args.requests, Counter())
                bare.append((time.process_time() - c0) / args.requests * 1e6)
                c0, p0 = time.process_time(), tree_cpu(pg)
                await drive(front, paths, args.requests, statuses)
                await flush_all()
                ours.append((time.process_time() - c0) / args.requests * 1e6)
                pg_cpu.append((tree_cpu(pg) - p0) / args.requests * 1e6)
            lookups, refreshed = cache.lookups - lookups0, cache.refreshed - refreshed0
    print(f"in-process CPU per request, {args.requests} x {args.repeat} (median; rounds):")
    print(f"  bare app:  {statistics.median(bare):5.1f} us   {[round(x, 1) for x in bare]}")
    print(f"  tracking:  {statistics.median(ours):5.1f} us   {[round(x, 1) for x in ours]}")
    print(
        f"  our request path + writer: {statistics.median(ours) - statistics.median(bare):5.1f} us"
    )
    print(
        f"PostgreSQL CPU per hit: {statistics.median(pg_cpu):5.1f} us   {[round(x, 1) for x in pg_cpu]}"
    )
    print(f"answers: {dict(sorted(statuses.items()))}")
    print(f"link cache while measured: {lookups} lookups renewing {refreshed} entries")


if __name__ == "__main__":
    uvloop.install()
    asyncio.run(main())
