"""Latency of the tracking endpoints and how fast the judge drains what they record.

    .venv/bin/python bench/tracking_latency.py [--requests 2000] [--messages 200]

Starts a throwaway embedded PostgreSQL, mints links for `--messages` sent messages, then
sends `--requests` click and open requests through the ASGI app (no network hop), one
at a time, and prints the median, p95 and p99 request time. The background judge runs
in the same process, as in the API; once the requests are done the script waits for
the queue to drain and prints the judged events per second. No Temporal is needed:
nothing here belongs to a run, so no signal is sent.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import func  # noqa: E402
from sqlmodel import col, select  # noqa: E402

from core.config import Settings  # noqa: E402
from core.db import Database  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402
from core.models import Send, TrackingEvent, utcnow  # noqa: E402
from devstack.ports import free_port  # noqa: E402
from devstack.postgres import EmbeddedPostgres  # noqa: E402
from services.tracking_links import mint_message_links, save_links  # noqa: E402

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36"
)


def run(requests: int, messages: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="journeys-bench-"))
    work.chmod(0o755)
    pg = EmbeddedPostgres(work / "pg", free_port(), fast_unsafe=True)
    pg.start()
    try:
        asyncio.run(main(pg, work, requests, messages))
    finally:
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)


async def main(pg: EmbeddedPostgres, work: Path, requests: int, messages: int) -> None:
    from api.main import create_app

    await pg.wait_ready()
    await upgrade_async(pg.url())
    settings = Settings(
        journeys_home=work / "home",
        database_url=pg.url(),
        public_base_url="http://bench",
        _env_file=None,  # type: ignore[call-arg]
    )
    db = Database(pg.url())
    paths: list[str] = []
    async with db.session() as s:
        for _ in range(messages):
            send_id = f"s_{uuid.uuid4().hex[:20]}"
            s.add(
                Send(
                    id=send_id,
                    send_key=f"r_{uuid.uuid4().hex}/hello/1",
                    run_id="r_bench",
                    journey_key="bench",
                    version=1,
                    step="hello",
                    visit=1,
                    contact_id="c_bench",
                    template_key="t",
                    message_id=f"<{uuid.uuid4().hex}@bench>",
                    status="sent",
                    sent_at=utcnow() - timedelta(minutes=10),
                )
            )
            links = mint_message_links(
                settings, send_id, now=utcnow(), track_opens=True, track_clicks=True
            )
            paths.append(links.link_url("book", "https://portal.example.org/book"))
            assert links.pixel_url
            paths.append(links.pixel_url)
            await save_links(s, links)
        await s.commit()
    paths = [p.removeprefix("http://bench") for p in paths]

    app = create_app(settings, db=db, temporal=None)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    timings: list[float] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for n in range(requests):
            headers = {
                "user-agent": CHROME,
                "accept": "text/html,*/*;q=0.8",
                "x-forwarded-for": f"73.{n % 200}.{n % 250}.{n % 251}",
            }
            started = time.perf_counter()
            r = await client.get(paths[n % len(paths)], headers=headers)
            timings.append(time.perf_counter() - started)
            assert r.status_code in (200, 302), r.status_code
        sent_done = time.perf_counter()
        ms = sorted(t * 1000 for t in timings)
        print(f"{requests} tracking requests over ASGI against embedded PostgreSQL")
        print(
            f"  request time: median {statistics.median(ms):.2f} ms, "
            f"p95 {ms[int(len(ms) * 0.95)]:.2f} ms, p99 {ms[int(len(ms) * 0.99)]:.2f} ms"
        )

        async def pending() -> int:
            async with db.session() as s:
                q = select(func.count()).where(col(TrackingEvent.verdict).is_(None))
                return int((await s.exec(q)).one())

        while await pending():  # noqa: ASYNC110 (polling the database queue)
            await asyncio.sleep(0.05)
        drained = time.perf_counter() - sent_done
        await app.state.tracking_judge.stop()
    print(f"  judge caught up {drained * 1000:.0f} ms after the last request")
    await db.dispose()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=200)
    args = parser.parse_args()
    run(args.requests, args.messages)
