"""Tracking endpoints under load from a second process, against a bare uvicorn app.

    .venv/bin/python bench/tracking_load.py --seconds 10 [--workers-too]

Both servers are `python -m uvicorn` on loopback with the SAME options (httptools,
uvloop, no access log, no proxy headers; ours is `api.serve:app_factory`, what `journeys
api` serves); this script is the load generator (HTTP/1.1 keep-alive over asyncio
streams), a separate process. The API runs with TRACKING_JUDGE_IN_API=false where that
setting exists (the judge then belongs to `journeys judge`); otherwise the judge runs
in the API process and the figures include it (printed).

Figures (medians of --repeat rounds, bare and ours alternating):
- closed loop, --connections connections, pixel and click mixed, every link seen
  before (warm link cache): requests/s, ratio ours/bare (target >= 0.5, one process);
- the same over links never seen (each one costs the cache a lookup): requests/s;
- open loop at --rate req/s: p50/p99 latency including queueing (target p99 <= 25 ms);
- with --workers-too, ours again with `--workers 2` (closed loop only).
Then the servers stop (ours flushes its buffer) and the count of tracking_event rows
must equal the 200/302 answers: every answered hit was written.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from bench.stack import BenchStack, bench_stack  # noqa: E402
from core.config import Settings  # noqa: E402
from core.models import Send, utcnow  # noqa: E402
from devstack.ports import free_port  # noqa: E402
from services.tracking_links import mint_message_links, save_links  # noqa: E402

UVICORN_OPTIONS = (
    "--http", "httptools", "--loop", "uvloop", "--log-level", "warning",
    "--no-access-log", "--no-proxy-headers", "--host", "127.0.0.1",
)  # fmt: skip


@dataclass
class Tally:
    """Answers by status; 200 and 302 are hits the server must have written."""

    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def recorded(self) -> int:
        return self.statuses[200] + self.statuses[302]


async def make_urls(stack: BenchStack, base: str, messages: int, tag: str) -> list[str]:
    settings = stack.settings.model_copy(update={"public_base_url": base})
    paths: list[str] = []
    async with stack.db.session() as s:
        rows = []
        for i in range(messages):
            sid = f"s_{tag}{i:06d}"
            rows.append(
                dict(
                    id=sid,
                    send_key=f"{tag}/{i}",
                    run_id=f"r{tag}{i}",
                    journey_key="load",
                    version=1,
                    step="mail",
                    visit=1,
                    contact_id=f"c_{tag}{i}",
                    template_key="t",
                    message_id=f"<{tag}{i}@example.org>",
                    status="sent",
                    attempts=1,
                    created_at=utcnow(),
                    sent_at=utcnow(),
                )
            )
            links = mint_message_links(
                settings, sid, now=utcnow(), track_opens=True, track_clicks=True
            )
            paths.append(links.pixel_url or "")
            paths.append(links.link_url("book", "https://example.org/book"))
            await save_links(s, links)
        await (await s.connection()).execute(insert(Send), rows)
        await s.commit()
    return [p.removeprefix(base) for p in paths]


def request_bytes(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0; "
        "Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0.0.0 Safari/537.36\r\n"
        "Accept: text/html,image/*\r\n\r\n"
    ).encode()


async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    writer.write(request_bytes(path))
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if length:
        await reader.readexactly(length)
    return status


async def closed_loop(
    port: int, paths: list[str], conns: int, seconds: float, tally: Tally, once: bool = False
) -> float:
    """Requests/s with `conns` connections for `seconds` (or one pass over `paths`)."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while (i < len(paths)) if once else (time.perf_counter() < stop):
            tally.statuses[await one(reader, writer, paths[i % len(paths)])] += 1
            i += conns
            done += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conns)))
    return done / (time.perf_counter() - t0)


async def open_loop(
    port: int, paths: list[str], rate: float, seconds: float, tally: Tally
) -> list[float]:
    """Fixed arrival rate; each request on a free pooled connection (latency incl. queueing)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    lat: list[float] = []
    tasks = []

    async def fire(path: str, due: float) -> None:
        conn = await pool.get()
        try:
            tally.statuses[await one(*conn, path)] += 1
        finally:
            pool.put_nowait(conn)
        lat.append(time.perf_counter() - due)

    t0 = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(paths[i % len(paths)], due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait()[1].close()
    return lat


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


async def measured(
    pids: list[int],
    port: int,
    paths: list[str],
    conns: int,
    seconds: float,
    tally: Tally,
    once: bool = False,
) -> tuple[float, list[float]]:
    """(requests/s, CPU microseconds per request of each of `pids`' process trees and,
    last, of this process: the load generator).

    CPU per request is the machine-independent figure: a busy shared machine changes
    requests/s (the load generator competes too) far more than it changes this."""
    before = [tree_cpu(p) for p in pids]
    n0 = sum(tally.statuses.values())
    own = time.process_time()
    rps = await closed_loop(port, paths, conns, seconds, tally, once)
    own = time.process_time() - own
    n = max(1, sum(tally.statuses.values()) - n0)
    cpu = [(tree_cpu(p) - b) / n * 1e6 for p, b in zip(pids, before, strict=True)]
    return rps, [*cpu, own / n * 1e6]  # the last: this load generator's own


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def wait_up(port: int) -> None:
    for _ in range(150):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: uvicorn runs the lifespan's shutdown (our buffer's last flush)."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spawn_ours(stack: BenchStack, port: int, base: str, workers: int) -> subprocess.Popen[bytes]:
    return stack.spawn(
        "-m", "uvicorn", "--factory", "api.serve:app_factory", *UVICORN_OPTIONS,
        "--port", str(port), "--workers", str(workers),
        PUBLIC_BASE_URL=base, TRACKING_JUDGE_IN_API="false",
    )  # fmt: skip


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--messages", type=int, default=2000, help="warm set (2 links each)")
    ap.add_argument("--cold-messages", type=int, default=2000, help="never-seen set")
    ap.add_argument("--repeat", type=int, default=3, help="closed-loop rounds (median)")
    ap.add_argument("--workers-too", action="store_true", help="also ours with --workers 2")
    args = ap.parse_args()
    judge_off = "tracking_judge_in_api" in Settings.model_fields
    ours_tally, bare_tally = Tally(), Tally()
    async with bench_stack() as stack:
        ours_port, bare_port = free_port(), free_port()
        base = f"http://127.0.0.1:{ours_port}"
        ours = spawn_ours(stack, ours_port, base, 1)
        bare = stack.spawn(
            "-m", "uvicorn", "bench.bare_app:app", *UVICORN_OPTIONS, "--port", str(bare_port)
        )
        try:
            paths = await make_urls(stack, base, args.messages, "warm")
            cold = await make_urls(stack, base, args.cold_messages, "cold")
            await wait_up(ours_port)
            await wait_up(bare_port)
            # Warm up both; every warm link is seen once (the cache's steady state).
            await closed_loop(ours_port, paths, 8, 0, ours_tally, once=True)
            await closed_loop(bare_port, paths, 8, 1.0, bare_tally)
            rps_bare, rps_ours = [], []
            cpu_bare, cpu_ours, cpu_pg = [], [], []
            gen_bare, gen_ours = [], []
            assert stack.pg.proc is not None
            pg = stack.pg.proc.pid
            for _ in range(args.repeat):
                r, (c, gen) = await measured(
                    [bare.pid], bare_port, paths, args.connections, args.seconds, bare_tally
                )
                rps_bare.append(r)
                cpu_bare.append(c)
                gen_bare.append(gen)
                r, (c, c_pg, gen) = await measured(
                    [ours.pid, pg], ours_port, paths, args.connections, args.seconds, ours_tally
                )
                rps_ours.append(r)
                cpu_ours.append(c)
                cpu_pg.append(c_pg)
                gen_ours.append(gen)
            rps_cold, (cpu_cold, cpu_cold_pg, _) = await measured(
                [ours.pid, pg], ours_port, cold, args.connections, 0, ours_tally, True
            )
            lat_bare = await open_loop(bare_port, paths, args.rate, args.seconds, bare_tally)
            lat_ours = await open_loop(ours_port, paths, args.rate, args.seconds, ours_tally)
        finally:
            stop(bare)
            stop(ours)
        rps_two: list[float] = []
        if args.workers_too:
            two = spawn_ours(stack, ours_port, base, 2)
            try:
                await wait_up(ours_port)
                await closed_loop(ours_port, paths, 8, 1.0, ours_tally)
                for _ in range(args.repeat):
                    rps_two.append(
                        await closed_loop(
                            ours_port, paths, args.connections, args.seconds, ours_tally
                        )
                    )
            finally:
                stop(two)
        async with stack.db.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT count(*) FROM tracking_event"))).scalar_one()
    ms = 1000
    med_bare, med_ours = statistics.median(rps_bare), statistics.median(rps_ours)
    print(
        f"judge in the API process: {'no' if judge_off else 'YES (no TRACKING_JUDGE_IN_API yet)'}"
    )
    print(
        f"closed loop, {args.connections} connections, {args.seconds:.0f}s x {args.repeat}"
        " (median), warm link cache:"
    )
    print(f"  bare uvicorn: {med_bare:8.0f} req/s   rounds {[round(x) for x in rps_bare]}")
    print(
        f"  tracking:     {med_ours:8.0f} req/s   rounds {[round(x) for x in rps_ours]}"
        f"   ratio {med_ours / med_bare:.2f} (target >= 0.5)"
    )
    print(f"  tracking, {len(cold)} never-seen links (one lookup each): {rps_cold:8.0f} req/s")
    print("server CPU per request (median; PostgreSQL's share shown apart):")
    print(f"  bare uvicorn: {statistics.median(cpu_bare):6.0f} us")
    print(
        f"  tracking:     {statistics.median(cpu_ours):6.0f} us   + PostgreSQL"
        f" {statistics.median(cpu_pg):4.0f} us   (never-seen links: {cpu_cold:.0f} + {cpu_cold_pg:.0f} us)"
    )
    print(
        f"  ratio of bare to ours (API process only): {statistics.median(cpu_bare) / statistics.median(cpu_ours):.2f}"
    )
    # It shares the two cores: what it spends per answer (more header lines to parse, fewer
    # answers per wake-up when the server is slower) is throughput neither server gets.
    print(
        f"load generator CPU per request: bare {statistics.median(gen_bare):.0f} us,"
        f" tracking {statistics.median(gen_ours):.0f} us"
    )
    if rps_two:
        med_two = statistics.median(rps_two)
        print(
            f"  tracking --workers 2: {med_two:8.0f} req/s   ratio to one-process bare"
            f" {med_two / med_bare:.2f}"
        )
    print(f"open loop at {args.rate:.0f} req/s, {args.seconds:.0f}s:")
    print(
        f"  bare:     p50 {statistics.median(lat_bare) * ms:5.1f} ms  p99 {pct(lat_bare, 99) * ms:5.1f} ms"
    )
    print(
        f"  tracking: p50 {statistics.median(lat_ours) * ms:5.1f} ms  p99 {pct(lat_ours, 99) * ms:5.1f} ms"
        " (target p99 <= 25 ms)"
    )
    answered = ours_tally.recorded
    print(f"answers (ours): {dict(sorted(ours_tally.statuses.items()))}")
    print(
        f"tracking_event rows: {rows} for {answered} answered 200/302"
        f" -> {'OK' if rows == answered else 'MISMATCH'}"
    )
    if rows != answered:
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
