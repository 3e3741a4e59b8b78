"""Contacts and segments at 100,000 contacts, through the real HTTP API (ASGI, in process)
against real PostgreSQL.

    .venv/bin/python bench/segments.py [--contacts 100000] [--database-url URL] [--repeat 50]

Without --database-url an embedded PostgreSQL is started in a temporary directory.
Prints: import time of N contacts in one POST /v1/contacts/import (CSV, streamed) and the
process's peak memory; the full build of two rule segments; member count latency (GET
/v1/segments/{key}, median of --repeat); preview latency; the latency of one contact
change reaching its membership (PATCH -> member/not member, median of 20); and a 10,000-row
re-import while the segments exist (the incremental path). Exits 1 if the median count
takes a second or more.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402

from core.config import Settings  # noqa: E402
from core.db import Database  # noqa: E402
from core.migrate import upgrade_async  # noqa: E402

STATES = ["MA", "NY", "CA", "TX", "FL", "WA", "IL", "OH"]


async def rows(count: int, tag: str, seed: int = 1) -> AsyncIterator[bytes]:
    """A CSV generated on the fly, 1,000 rows per chunk (never the whole file in memory)."""
    rng = random.Random(seed)
    yield b"external_id,email,timezone,cohort,gender,age,state,zip,vip,last_visit,conditions\n"
    lines: list[str] = []
    for i in range(count):
        state = rng.choice(STATES)
        if state == "MA":
            zip_code = f"021{rng.randint(0, 99):02d}"
        else:
            zip_code = f"{rng.randint(1000, 99999):05d}"
        lines.append(
            f"{tag}-{i},patient{i}.{tag}@example.org,America/New_York,{tag},"
            f"{rng.choice('FM')},{rng.randint(18, 90)},{state},{zip_code},"
            f"{rng.choice(['true', 'false'])},"
            f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d},"
            f"{rng.choice(['diabetes', 'asthma', 'diabetes|asthma', ''])}\n"
        )
        if len(lines) == 1000:
            yield "".join(lines).encode()
            lines = []
    if lines:
        yield "".join(lines).encode()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


async def run(args: argparse.Namespace, database_url: str, home: Path) -> int:
    from api.main import create_app
    from services.apikeys import create_key

    await upgrade_async(database_url)
    settings = Settings(journeys_home=home, database_url=database_url, dev_mode=False,
                        _env_file=None)  # type: ignore[call-arg]
    db = Database(database_url)
    async with db.session() as s:
        key = await create_key(s, "admin", str(settings.secret_values()["api_key_pepper"]))
    app = create_app(settings, db=db, temporal=None)
    transport = httpx.ASGITransport(app=app)
    tag = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                 headers={"Authorization": f"Bearer {key}"},
                                 timeout=3600) as api:
        n = args.contacts
        # ZIP codes are text (02139): declared, or the first one seen would type them.
        assert (await api.put("/v1/attributes/zip", json={"type": "string"})).status_code < 300
        started, cpu = time.perf_counter(), time.process_time()
        r = await api.post("/v1/contacts/import", content=rows(n, tag),
                           headers={"content-type": "text/csv"})
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        report = r.json()
        assert r.status_code == 200 and report["created"] == n, r.text[:500]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"import   {n} contacts (CSV, one call): {took:.1f} s "
              f"({n / took:,.0f} rows/s; API process CPU {cpu:.1f} s), "
              f"peak RSS {peak_mb:.0f} MB")

        async with db.session() as s:
            await s.exec(text("ANALYZE contact"))  # type: ignore[call-overload]
            await s.commit()

        segments = {
            f"screening-{tag}": {"all": [
                {"attr": "cohort", "op": "eq", "value": tag},
                {"attr": "gender", "op": "eq", "value": "F"},
                {"attr": "age", "op": "gte", "value": 50},
                {"attr": "zip", "op": "gte", "value": "02100"},
                {"attr": "zip", "op": "lt", "value": "02200"},
                {"not": {"engagement": "open", "within": "P90D"}},
            ]},
            f"over50-{tag}": {"all": [{"attr": "cohort", "op": "eq", "value": tag},
                                      {"attr": "age", "op": "gte", "value": 50}]},
        }
        for seg_key, rule in segments.items():
            started = time.perf_counter()
            r = await api.post("/v1/segments", json={"key": seg_key, "rule": rule})
            took = time.perf_counter() - started
            assert r.status_code == 201, r.text
            print(f"build    {seg_key.split('-')[0]:<10} {r.json()['member_count']:>7} members "
                  f"of {n}: {ms(took)}")

        big = f"over50-{tag}"
        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            r = await api.get(f"/v1/segments/{big}")
            timings.append(time.perf_counter() - started)
        count_median = statistics.median(timings)
        print(f"count    GET /v1/segments/{{key}} ({r.json()['member_count']} members): median "
              f"{ms(count_median)}, p95 {ms(sorted(timings)[int(len(timings) * 0.95) - 1])} "
              f"(n={args.repeat})")

        timings = []
        for _ in range(10):
            started = time.perf_counter()
            r = await api.post("/v1/segments/preview", json={"rule": segments[big]})
            timings.append(time.perf_counter() - started)
        print(f"preview  over50 rule over {n} contacts: median {ms(statistics.median(timings))}")

        # One contact crossing the threshold: the PATCH returns with membership updated.
        r = await api.post("/v1/contacts", json={"external_id": f"{tag}-probe",
                                                 "attributes": {"cohort": tag, "age": 30}})
        probe = r.json()["id"]
        timings = []
        for i in range(20):
            age = 60 if i % 2 == 0 else 30
            started = time.perf_counter()
            await api.patch(f"/v1/contacts/{probe}", json={"attributes": {"age": age}})
            timings.append(time.perf_counter() - started)
            async with db.session() as s:
                found = (await s.exec(text(  # type: ignore[call-overload]
                    "SELECT count(*) FROM segment_membership WHERE segment_key = :k AND "
                    "contact_id = :c").bindparams(k=big, c=probe))).scalar_one()
            assert found == (1 if age == 60 else 0), (i, found)
        print(f"change   PATCH one contact -> membership (+ segment_entry/exit event): median "
              f"{ms(statistics.median(timings))} (n=20)")

        started = time.perf_counter()
        r = await api.post("/v1/contacts/import", content=rows(10_000, tag, seed=2),
                           headers={"content-type": "text/csv"})
        took = time.perf_counter() - started
        assert r.json()["updated"] == 10_000, r.text[:300]
        print(f"update   10000 existing contacts re-imported with 2 rule segments live: "
              f"{took:.1f} s ({10_000 / took:,.0f} rows/s)")
    await db.dispose()
    return 0 if count_median < 1.0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="journeys-bench-"))
    home.chmod(0o755)
    pg = None
    try:
        url = args.database_url
        if not url:
            from devstack.ports import free_port
            from devstack.postgres import EmbeddedPostgres

            pg = EmbeddedPostgres(home / "pg", free_port(), fast_unsafe=True)
            pg.start()
            asyncio.run(pg.wait_ready())
            url = pg.url()
        return asyncio.run(run(args, url, home / "home"))
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
