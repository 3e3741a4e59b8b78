"""Human click to next step started: p50/p95 over N runs waiting in wait_for_engagement.

    .venv/bin/python bench/click_latency.py --runs 200

The click goes over HTTP to `journeys api` (a separate process, loopback), is recorded,
judged by the background judge and signalled; the worker (another process) moves the
run to its `yes` step. Latency = when the workflow entered `yes` (its step log) minus
when the click was sent. Baseline, same run: the same journey's runs signalled
directly with `engagement` through the Temporal client (no HTTP, no judge), in the same
shape (as many at a time, the same pause).

The default is 200 runs clicked as a burst (4 at a time, 50 ms apart). With
`--judge-process` the API runs with TRACKING_JUDGE_IN_API=false beside a `journeys judge`
process (the production topology). The breakdown splits each click's latency into
recorded (click sent -> row stored), judged, signalled and next step started.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlmodel import col, select  # noqa: E402
from temporalio.client import Client  # noqa: E402

from bench.stack import CHILD_LOG, BenchStack, bench_stack  # noqa: E402
from core.models import (  # noqa: E402
    Consent,
    Contact,
    OutboxMessage,
    Send,
    StepLog,
    TrackingEvent,
)
from core.temporal import connect  # noqa: E402
from devstack.ports import free_port  # noqa: E402
from services.context import ServiceContext  # noqa: E402
from services.enrollment import enroll  # noqa: E402
from services.journeys import create_journey, publish_journey  # noqa: E402
from services.templates import TemplateIn, create_template  # noqa: E402
from workflows.journey import workflow_id  # noqa: E402
from workflows.types import EngagementSignal  # noqa: E402

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36"
)
BOOK = re.compile(r'href="([^"]+/t/c/[^"]+)"[^>]*>Book now<')


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its descendants: the live ones plus the children they
    reaped (PostgreSQL backends, which leave the process group, are found by parent)."""
    parent: dict[int, int] = {}
    cpu: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the name: state ppid pgrp ... utime stime cutime cstime (fields 11-14).
        parent[int(d.name)] = int(fields[1])
        cpu[int(d.name)] = sum(int(x) for x in fields[11:15])
    total = 0
    for pid in cpu:
        p = pid
        while p not in (0, 1, root) and p in parent:
            p = parent[p]
        if p == root:
            total += cpu[pid]
    return total / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used per process tree between two readings (the load is not ours to control,
    the cost per click is)."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups
        self.start = self.read()

    def read(self) -> dict[str, float]:
        return {name: tree_cpu(pid) for name, pid in self.groups.items()}

    def used(self) -> dict[str, float]:
        end = self.read()
        return {name: end[name] - self.start[name] for name in self.groups}


async def journey_side(client: Client, wids: list[str]) -> dict[str, list[float]]:
    """From the runs' Temporal histories: engagement signal -> the workflow task that
    handles it started, and the activity that task scheduled -> started."""
    out: dict[str, list[float]] = {
        "signal -> workflow task started": [],
        "activity scheduled -> started (eager: 0)": [],
    }
    for wid in wids:
        events = (await client.get_workflow_handle(wid).fetch_history()).events
        signalled = scheduled = None
        seen_signal = False  # only what the signal set off, not the send before the wait
        for e in events:
            at = e.event_time.ToDatetime()
            if e.HasField("workflow_execution_signaled_event_attributes"):
                signalled = at
                seen_signal = True
            elif e.HasField("workflow_task_started_event_attributes") and signalled is not None:
                out["signal -> workflow task started"].append((at - signalled).total_seconds())
                signalled = None
            elif e.HasField("activity_task_scheduled_event_attributes") and seen_signal:
                scheduled = at
            elif e.HasField("activity_task_started_event_attributes") and scheduled is not None:
                out["activity scheduled -> started (eager: 0)"].append(
                    (at - scheduled).total_seconds()
                )
                scheduled = None
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def setup(stack: BenchStack, n: int, tag: str) -> tuple[str, list[str]]:
    client = await connect(stack.settings)
    ids = [f"c_clk{tag}{i:05d}" for i in range(n)]
    async with stack.db.session() as s:
        await s.exec(  # type: ignore[call-overload]
            insert(Contact),
            params=[
                {
                    "id": cid,
                    "external_id": f"clk-{tag}-{i}",
                    "email": f"clk{tag}.{i}@example.com",
                    "timezone": "UTC",
                    "attributes": {},
                }
                for i, cid in enumerate(ids)
            ],
        )
        await s.exec(  # type: ignore[call-overload]
            insert(Consent),
            params=[
                {"contact_id": cid, "category": "care", "granted": True, "source": "bench"}
                for cid in ids
            ],
        )
        await s.commit()
        ctx = ServiceContext(s, stack.settings, client)
        await create_template(
            ctx,
            TemplateIn(
                key=f"clk{tag}",
                subject="Your visit",
                html="<p>Hi</p><p><a href=\"{{ link('book', 'https://example.org/book') }}\">Book now</a></p>",
            ),
        )
        key = f"clk-{tag}"
        await create_journey(
            ctx,
            {
                "key": key,
                "name": "click bench",
                "category": "care",
                "trigger": {"type": "manual"},
                "start": "mail",
                "steps": {
                    "mail": {"type": "send_email", "template": f"clk{tag}", "next": "engaged?"},
                    "engaged?": {
                        "type": "wait_for_engagement",
                        "send_step": "mail",
                        "event": "click",
                        "link": "book",
                        "timeout": "P1D",
                        "yes": "yes",
                        "no": "no",
                    },
                    "yes": {"type": "exit", "reason": "clicked"},
                    "no": {"type": "exit"},
                },
            },
        )
        await publish_journey(ctx, key)
        await enroll(ctx, key, ids)
    return key, ids


async def wait_sent(stack: BenchStack, n: int) -> None:
    while True:
        async with stack.db.session() as s:
            rows = (await s.exec(select(OutboxMessage.id))).all()
        if len(rows) >= n:
            return
        await asyncio.sleep(0.2)


async def entered_yes(stack: BenchStack, key: str) -> dict[str, datetime]:
    async with stack.db.session() as s:
        rows = (
            await s.exec(
                select(StepLog.contact_id, StepLog.at).where(
                    StepLog.journey_key == key, StepLog.step == "yes", StepLog.action == "entered"
                )
            )
        ).all()
    return dict(rows)


async def waiting(stack: BenchStack, key: str, n: int) -> None:
    """Every run has entered the wait (so a click reaches a waiting run)."""
    while True:
        async with stack.db.session() as s:
            rows = (
                await s.exec(
                    select(StepLog.id).where(
                        StepLog.journey_key == key,
                        StepLog.step == "engaged?",
                        StepLog.action == "entered",
                    )
                )
            ).all()
        if len(rows) >= n:
            return
        await asyncio.sleep(0.2)


async def breakdown(
    stack: BenchStack, key: str, sent_at: dict[str, datetime], done: dict[str, datetime]
) -> dict[str, list[float]]:
    """Per click: sent -> stored, stored -> judged, judged -> signal recorded (the
    signaller stores the outcome after its batch of RPCs), signal -> next step started."""
    async with stack.db.session() as s:
        rows = (
            await s.exec(
                select(
                    Send.contact_id,
                    TrackingEvent.at,
                    TrackingEvent.judged_at,
                    TrackingEvent.signalled_at,
                )
                .join(Send, col(Send.id) == col(TrackingEvent.send_id))
                .where(Send.journey_key == key)
                .where(TrackingEvent.verdict == "human")
            )
        ).all()
    out: dict[str, list[float]] = {
        "click sent -> hit stored": [],
        "hit stored -> verdict": [],
        "verdict -> signal RPCs returned": [],
        "signal returned -> next step started": [],
    }
    # A judging transaction stamps its events with one judged_at.
    batches = {judged_at for _, _, judged_at, _ in rows if judged_at is not None}
    out["judging transactions"] = [float(len(batches))]
    for cid, at, judged_at, signalled_at in rows:
        if cid not in sent_at or judged_at is None or signalled_at is None or cid not in done:
            continue
        out["click sent -> hit stored"].append((at - sent_at[cid]).total_seconds())
        out["hit stored -> verdict"].append((judged_at - at).total_seconds())
        out["verdict -> signal RPCs returned"].append((signalled_at - judged_at).total_seconds())
        out["signal returned -> next step started"].append(
            (done[cid] - signalled_at).total_seconds()
        )
    return out


def profile(groups: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """BENCH_PROFILE=<seconds>: py-spy records the API (and judge) process during the
    clicks into /tmp/click_prof_<name>.txt (raw folded stacks)."""
    seconds = os.environ.get("BENCH_PROFILE")
    spy = Path(sys.executable).parent / "py-spy"
    if not seconds or not spy.exists():
        return []
    return [
        subprocess.Popen(
            [
                str(spy),
                "record",
                "-r",
                "200",
                "-d",
                seconds,
                "--nonblocking",
                "-f",
                "raw",
                "-o",
                f"/tmp/click_prof_{name}.txt",
                "-p",
                str(groups[name]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("api", "judge")
        if name in groups
    ]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--baseline-runs", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.05, help="pause after each click (s)")
    ap.add_argument(
        "--judge-process", action="store_true", help="judge in `journeys judge`, not the API"
    )
    ap.add_argument("--verbose", action="store_true", help="the judge logs its rounds (DEBUG)")
    args = ap.parse_args()
    async with bench_stack() as stack:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        worker = stack.spawn("-m", "cli.main", "worker", PUBLIC_BASE_URL=base)  # mints the URLs
        in_api = "false" if args.judge_process else "true"
        api = stack.spawn(
            "-m",
            "cli.main",
            "api",
            "--port",
            str(port),
            PUBLIC_BASE_URL=base,
            TRACKING_JUDGE_IN_API=in_api,
        )
        children = [api, worker]
        if args.judge_process:
            extra = ["--verbose"] if args.verbose else []
            children.append(stack.spawn("-m", "cli.main", "judge", *extra))
        try:
            key, ids = await setup(stack, args.runs, "h")
            bkey, bids = await setup(stack, args.baseline_runs, "b")
            await wait_sent(stack, args.runs + args.baseline_runs)
            await waiting(stack, key, args.runs)
            await waiting(stack, bkey, args.baseline_runs)
            await asyncio.sleep(6)  # past the classifier's too-fast window for clicks
            async with stack.db.session() as s:
                msgs = (await s.exec(select(OutboxMessage))).all()
                sends = {x.message_id: x for x in (await s.exec(select(Send))).all()}
            urls: dict[str, str] = {}
            for m in msgs:
                parsed = email.message_from_bytes(m.raw, policy=email.policy.default)
                send = sends.get(m.message_id or "")
                if send is None or send.journey_key != key:
                    continue
                html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
                found = BOOK.search(html)
                if found:
                    urls[send.contact_id] = found.group(1).replace("&amp;", "&")
            assert len(urls) == args.runs, f"found {len(urls)} click links"
            sent_at: dict[str, datetime] = {}
            sem = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(timeout=10) as http:
                for _ in range(150):  # the API process is up
                    try:
                        await http.get(f"{base}/healthz")
                        break
                    except httpx.HTTPError:
                        if api.poll() is not None:
                            raise RuntimeError(
                                "the API process exited; see " + str(CHILD_LOG)
                            ) from None
                        await asyncio.sleep(0.2)

                async def click(cid: str, url: str, i: int) -> None:
                    async with sem:
                        sent_at[cid] = datetime.now(UTC)
                        r = await http.get(
                            url,
                            headers={
                                "user-agent": CHROME,
                                "accept": "text/html,application/xhtml+xml",
                                "accept-language": "en-US,en;q=0.9",
                                "sec-fetch-mode": "navigate",
                                "sec-fetch-dest": "document",
                                "sec-fetch-user": "?1",
                                "x-forwarded-for": f"73.{i % 200 + 1}.{i // 200 + 10}.{i % 250 + 1}",
                            },
                        )
                        assert r.status_code == 302, r.status_code
                        await asyncio.sleep(args.interval)

                groups = {"api": api.pid, "worker": worker.pid}
                if args.judge_process:
                    groups["judge"] = children[-1].pid
                for name, part in (("temporal", stack.temporal.proc), ("postgres", stack.pg.proc)):
                    if part is not None:
                        groups[name] = part.pid
                meter = CpuMeter(groups)
                spies = profile(groups)
                await asyncio.gather(*(click(c, u, i) for i, (c, u) in enumerate(urls.items())))
            deadline = time.monotonic() + 120
            while (
                len(done := await entered_yes(stack, key)) < args.runs
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
            cpu = meter.used()
            for spy in spies:
                spy.wait()
            lat = [(done[c] - sent_at[c]).total_seconds() for c in done if c in sent_at]
            phases = await breakdown(stack, key, sent_at, done)

            client = await connect(stack.settings)
            async with stack.db.session() as s:
                bsends = {
                    x.contact_id: x
                    for x in (await s.exec(select(Send).where(col(Send.journey_key) == bkey))).all()
                }
            bsent: dict[str, datetime] = {}

            async def direct(i: int, cid: str) -> None:
                # The clicks' shape (concurrency, pause), without HTTP and judge.
                async with sem:
                    bsent[cid] = datetime.now(UTC)
                    await client.get_workflow_handle(workflow_id(bkey, cid)).signal(
                        "engagement",
                        EngagementSignal(
                            f"bench-{i}", bsends[cid].id, "mail", "click", "book", bsent[cid]
                        ),
                    )
                    await asyncio.sleep(args.interval)

            bmeter = CpuMeter(groups)
            await asyncio.gather(*(direct(i, cid) for i, cid in enumerate(bids)))
            deadline = time.monotonic() + 60
            while (
                len(bdone := await entered_yes(stack, bkey)) < len(bids)
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.2)
            bcpu = bmeter.used()
            blat = [(bdone[c] - bsent[c]).total_seconds() for c in bdone]
            sample = 40  # histories read from the server after the runs
            waits = {
                "clicks": await journey_side(client, [workflow_id(key, c) for c in ids[:sample]]),
                "direct": await journey_side(client, [workflow_id(bkey, c) for c in bids[:sample]]),
            }
        finally:
            for p in children:
                p.terminate()
                p.wait()
    ms = 1000
    print(
        f"runs={args.runs} moved={len(lat)} (every click judged human and signalled: {len(lat) == args.runs})"
    )
    print(
        f"click -> next step: p50 {statistics.median(lat) * ms:.0f} ms, p95 {pct(lat, 95) * ms:.0f} ms (target p95 <= 1000 ms)"
    )
    print(
        f"baseline direct signal -> next step: p50 {statistics.median(blat) * ms:.0f} ms, p95 {pct(blat, 95) * ms:.0f} ms"
    )
    print(f"ratio p95 click/direct: {pct(lat, 95) / pct(blat, 95):.2f}")
    print("CPU per click, ms (clicks / direct signals), from each process tree's counters:")
    for name in cpu:
        print(
            f"  {name:<10} {cpu[name] * ms / max(1, len(lat)):6.1f} / "
            f"{bcpu[name] * ms / max(1, len(blat)):6.1f}"
        )
    transactions = phases.pop("judging transactions", [0.0])[0]
    print(
        f"judging transactions: {transactions:.0f}, "
        f"clicks per transaction {len(lat) / max(1.0, transactions):.1f}"
    )
    print("where the time goes (p50 / p95 ms):")
    for name, xs in phases.items():
        if xs:
            print(f"  {name:<34} {statistics.median(xs) * ms:6.0f} / {pct(xs, 95) * ms:6.0f}")
    print("journey side, from the Temporal histories (p50 / p95 ms, clicks | direct):")
    for name in waits["clicks"]:
        parts = []
        for case in ("clicks", "direct"):
            xs = waits[case][name]
            parts.append(
                f"{statistics.median(xs) * ms:6.0f} / {pct(xs, 95) * ms:6.0f}" if xs else "  n/a"
            )
        print(f"  {name:<34} {parts[0]} | {parts[1]}")


if __name__ == "__main__":
    asyncio.run(main())
