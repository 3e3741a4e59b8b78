"""Tracking endpoints under load from a second process, against a bare uvicorn app.

    .venv/bin/python bench/tracking_load.py --seconds 10

Both servers are single uvicorn processes on loopback started the same way; this
script is the load generator (HTTP/1.1 keep-alive over asyncio streams). Figures:
closed-loop requests/s with --connections connections (pixel and click mixed), and
p50/p99 latency at a fixed --rate (open loop). Ratio = ours / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert  # noqa: E402

from bench.stack import BenchStack, bench_stack  # noqa: E402
from core.models import Send, utcnow  # noqa: E402
from devstack.ports import free_port  # noqa: E402
from services.tracking_links import mint_message_links, save_links  # noqa: E402


async def make_urls(stack: BenchStack, base: str, messages: int) -> list[str]:
    settings = stack.settings.model_copy(update={"public_base_url": base})
    paths: list[str] = []
    async with stack.db.session() as s:
        rows = []
        for i in range(messages):
            sid = f"s_load{i:06d}"
            rows.append(
                dict(
                    id=sid,
                    send_key=f"load/{i}",
                    run_id=f"r{i}",
                    journey_key="load",
                    version=1,
                    step="mail",
                    visit=1,
                    contact_id=f"c_load{i}",
                    template_key="t",
                    message_id=f"<load{i}@example.org>",
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
        await s.execute(insert(Send), rows)
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


async def closed_loop(port: int, paths: list[str], conns: int, seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(k: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = k
        while time.perf_counter() < stop:
            await one(reader, writer, paths[i % len(paths)])
            i += conns
            done += 1
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(conns)))
    return done / (time.perf_counter() - t0)


async def open_loop(port: int, paths: list[str], rate: float, seconds: float) -> list[float]:
    """Fixed arrival rate; each request on a free pooled connection (latency incl. queueing)."""
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    lat: list[float] = []
    tasks = []

    async def fire(path: str, due: float) -> None:
        conn = await pool.get()
        try:
            await one(*conn, path)
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


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def wait_up(port: int) -> None:
    for _ in range(100):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError("server did not start")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--messages", type=int, default=2000)
    args = ap.parse_args()
    async with bench_stack() as stack:
        ours_port, bare_port = free_port(), free_port()
        base = f"http://127.0.0.1:{ours_port}"
        ours = stack.spawn("-m", "cli.main", "api", "--port", str(ours_port), PUBLIC_BASE_URL=base)
        bare = stack.spawn(
            "-m",
            "uvicorn",
            "bench.bare_app:app",
            "--port",
            str(bare_port),
            "--log-level",
            "warning",
            "--no-access-log",
        )
        try:
            paths = await make_urls(stack, base, args.messages)
            await wait_up(ours_port)
            await wait_up(bare_port)
            await closed_loop(ours_port, paths, 4, 1.0)  # warm up
            await closed_loop(bare_port, paths, 4, 1.0)
            rps_bare = await closed_loop(bare_port, paths, args.connections, args.seconds)
            rps_ours = await closed_loop(ours_port, paths, args.connections, args.seconds)
            lat_bare = await open_loop(bare_port, paths, args.rate, args.seconds)
            lat_ours = await open_loop(ours_port, paths, args.rate, args.seconds)
        finally:
            for p in (ours, bare):
                p.terminate()
                p.wait()
    ms = 1000
    print(f"closed loop, {args.connections} connections, {args.seconds:.0f}s each:")
    print(f"  bare uvicorn: {rps_bare:8.0f} req/s")
    print(
        f"  tracking:     {rps_ours:8.0f} req/s   ratio {rps_ours / rps_bare:.2f} (target >= 0.5)"
    )
    print(f"open loop at {args.rate:.0f} req/s:")
    print(
        f"  bare:     p50 {statistics.median(lat_bare) * ms:5.1f} ms  p99 {pct(lat_bare, 99) * ms:5.1f} ms"
    )
    print(
        f"  tracking: p50 {statistics.median(lat_ours) * ms:5.1f} ms  p99 {pct(lat_ours, 99) * ms:5.1f} ms (target p99 <= 25 ms)"
    )


if __name__ == "__main__":
    asyncio.run(main())
