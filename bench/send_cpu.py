"""CPU per send of our send path, in process: the send_email activity and record_steps for
each contact, against a bare SMTP send of the same message, measured in the same run.

    PYTHONPATH=$PWD .venv/bin/python bench/send_cpu.py --contacts 2000 --rounds 3

Embedded PostgreSQL (bench/stack.py), contacts with a consent and a template and journey
as bench/enrollment.py makes them; the SMTP sink (devstack/smtp_sink.py, storing every
message in outbox_message as in the tests and benches) runs in a child process, so CPU is
split three ways: this process (our Python: the activities and the SMTP client), the
PostgreSQL cluster, and the sink.

Two phases, alternating each round, `--concurrency` in flight:
- bare: the prebuilt message of the first send, handed to the sink through SmtpTransport's
  pooled connections (no database work in this process): what any sender pays to put a
  message on the wire, and the sink's own cost of storing it.
- ours: send_email (ledger row under the advisory and cap locks, the SPEC section 7
  checks, render, tracked links, MIME, SMTP, counters) then record_steps (run row, step
  log, counters) for an ended send -> exit run, both through ActivityEnvironment.
Printed: CPU µs per send by process (medians over rounds) and ours / bare.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from sqlmodel import select  # noqa: E402
from temporalio.testing import ActivityEnvironment  # noqa: E402

from activities.runs import RunActivities  # noqa: E402
from activities.sending import SendActivities  # noqa: E402
from activities.smtp import SmtpTransport  # noqa: E402
from core.models import Consent, Contact, OutboxMessage, utcnow  # noqa: E402
from devstack.ports import free_port, port_in_use  # noqa: E402
from services.context import ServiceContext  # noqa: E402
from services.identity import email_hash  # noqa: E402
from services.journeys import create_journey, publish_journey  # noqa: E402
from services.templates import TemplateIn, create_template  # noqa: E402
from workflows.journey import workflow_id  # noqa: E402
from workflows.types import RecordInput, SendInput, StepRecord  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CATEGORY = "care"


async def serve_sink(port: int, database_url: str) -> None:
    """The stack's sink (store + stored check), in a process of its own."""
    from core.db import Database
    from devstack.smtp_sink import SinkHandler, SmtpSink, db_store, db_stored

    db = Database(database_url)
    sink = SmtpSink(SinkHandler(db_store(db), stored=db_stored(db)), port=port)
    await sink.start()
    await asyncio.Event().wait()


def cpu(p: psutil.Process, tree: bool = False) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    total = t.user + t.system
    if tree:  # PostgreSQL: backends that exited are in the postmaster's children_* times
        total += t.children_user + t.children_system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
            except psutil.Error:
                continue
            total += ct.user + ct.system
    return total


class Meter:
    def __init__(self, pg: psutil.Process, sink: psutil.Process) -> None:
        self.procs = {
            "ours": (psutil.Process(), False),
            "postgres": (pg, True),
            "sink": (sink, False),
        }

    def snap(self) -> dict[str, float]:
        return {k: cpu(p, tree) for k, (p, tree) in self.procs.items()}

    @staticmethod
    def per_send_us(a: dict[str, float], b: dict[str, float], n: int) -> dict[str, float]:
        return {k: 1e6 * (b[k] - a[k]) / n for k in a}


async def setup(stack, n: int) -> tuple[list[str], str, str, int]:  # type: ignore[no-untyped-def]
    """Contacts with their hash and a consent, a template and a published journey, as
    bench/enrollment.py makes them."""
    tag = uuid.uuid4().hex[:8]
    async with stack.db.session() as s:
        ctx = ServiceContext(s, stack.settings, None)
        rows = [
            {"id": f"c_sc{tag}{i:07d}", "external_id": f"sc-{tag}-{i}",
             "email": f"p{i}@example.com", "timezone": "UTC", "attributes": {},
             "email_hash": email_hash(f"p{i}@example.com", ctx.pepper)}
            for i in range(n)
        ]  # fmt: skip
        await s.exec(insert(Contact), params=rows)  # type: ignore[call-overload]
        await s.exec(  # type: ignore[call-overload]
            insert(Consent),
            params=[
                {"contact_id": r["id"], "category": CATEGORY, "granted": True, "source": "bench"}
                for r in rows
            ],
        )
        await s.commit()
        await create_template(ctx, TemplateIn(key=f"sc{tag}", subject="Hi", html="<p>Hello</p>"))
        journey = f"sc-{tag}"
        await create_journey(ctx, {
            "key": journey, "name": "bench", "category": CATEGORY,
            "trigger": {"type": "manual"}, "start": "send",
            "steps": {"send": {"type": "send_email", "template": f"sc{tag}", "next": "done"},
                      "done": {"type": "exit"}},
        })  # fmt: skip
        await publish_journey(ctx, journey)
    return [str(r["id"]) for r in rows], f"sc{tag}", journey, 1


def send_input(
    run_id: str, contact_id: str, template: str, journey: str, version: int
) -> SendInput:
    return SendInput(
        run_id=run_id, journey_key=journey, journey_name="bench", version=version,
        contact_id=contact_id, step="send", visit=1, template_key=template, category=CATEGORY,
    )  # fmt: skip


def record_input(run_id: str, contact_id: str, journey: str, version: int) -> RecordInput:
    now = utcnow()
    return RecordInput(
        run_id=run_id,
        workflow_id=workflow_id(journey, contact_id),
        journey_key=journey,
        version=version,
        contact_id=contact_id,
        records=[
            StepRecord(1, "send", 1, "entered", now),
            StepRecord(2, "send", 1, "left", now, "done"),
            StepRecord(3, "done", 1, "exited", now, "completed"),
        ],
        status="completed",
        step=None,
        visits={"send": 1, "done": 1},
        exit_reason="completed",
    )


async def ours_round(
    sends: SendActivities,
    runs: RunActivities,
    meter: Meter,
    ids: list[str],
    template: str,
    journey: str,
    version: int,
    concurrency: int,
) -> tuple[float, dict[str, float]]:
    env = ActivityEnvironment()
    sem = asyncio.Semaphore(concurrency)
    rtag = uuid.uuid4().hex[:8]

    async def one(i: int, cid: str) -> None:
        run_id = f"r-{rtag}-{i}"
        async with sem:
            res = await env.run(
                sends.send_email, send_input(run_id, cid, template, journey, version)
            )
            if res.status != "sent":
                raise RuntimeError(f"send {i} ended {res.status} ({res.detail})")
            await env.run(runs.record_steps, record_input(run_id, cid, journey, version))

    c0, t0 = meter.snap(), time.perf_counter()
    await asyncio.gather(*(one(i, cid) for i, cid in enumerate(ids)))
    elapsed = time.perf_counter() - t0
    return len(ids) / elapsed, meter.per_send_us(c0, meter.snap(), len(ids))


async def bare_round(
    transport: SmtpTransport, meter: Meter, raw: bytes, n: int, concurrency: int, sender: str
) -> tuple[float, dict[str, float]]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await transport.send(sender, f"p{i}@example.com", raw)

    c0, t0 = meter.snap(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    return n / elapsed, meter.per_send_us(c0, meter.snap(), n)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contacts", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=20, help="sends in flight")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["ours", "bare"], help="one phase (for profiling)")
    ap.add_argument("--serve-sink", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sink:
        await serve_sink(int(args.serve_sink[0]), args.serve_sink[1])
        return

    from bench.stack import bench_stack

    async with bench_stack() as stack:
        port = free_port()
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve-sink", str(port), str(stack.settings.database_url)],
            cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        try:
            while not port_in_use(port):
                await asyncio.sleep(0.05)
            settings = stack.settings.model_copy(
                update={
                    "smtp_url": f"smtp://127.0.0.1:{port}",
                    "smtp_pool_size": args.concurrency,
                }
            )
            assert stack.pg.proc is not None
            meter = Meter(psutil.Process(stack.pg.proc.pid), psutil.Process(child.pid))
            ids, template, journey, version = await setup(stack, args.contacts)
            transport = SmtpTransport.from_settings(settings)
            sends = SendActivities(stack.db, settings, transport)
            runs = RunActivities(stack.db, settings)
            # The bare phase's message: the one our path stores for the first contact.
            warm = ids[: min(50, len(ids))]
            await ours_round(sends, runs, meter, warm, template, journey, version, args.concurrency)
            async with stack.db.session() as s:
                first = (await s.exec(select(OutboxMessage.raw).limit(1))).first()
            assert first is not None
            raw = bytes(first)
            results: dict[str, list[tuple[float, dict[str, float]]]] = {"bare": [], "ours": []}
            for _ in range(args.rounds):
                if args.only != "ours":
                    results["bare"].append(
                        await bare_round(
                            transport, meter, raw, len(ids), args.concurrency,
                            settings.envelope_sender,
                        )
                    )  # fmt: skip
                if args.only != "bare":
                    results["ours"].append(
                        await ours_round(
                            sends, runs, meter, ids, template, journey, version, args.concurrency
                        )
                    )
            await transport.pool.close()
        finally:
            child.terminate()
            child.wait()

    print(f"contacts={args.contacts} concurrency={args.concurrency} rounds={args.rounds} "
          f"message={len(raw)} bytes (medians; CPU µs per send)")  # fmt: skip
    med: dict[str, dict[str, float]] = {}
    for phase, rows in results.items():
        if not rows:
            continue
        rate = statistics.median(r[0] for r in rows)
        med[phase] = {k: statistics.median(r[1][k] for r in rows) for k in rows[0][1]}
        med[phase]["total"] = sum(med[phase].values())
        each = "  ".join(
            f"{k} {v:7.0f} ({'/'.join(f'{r[1][k]:.0f}' for r in rows)})"
            for k, v in med[phase].items()
            if k != "total"
        )
        print(f"  {phase:4s} {rate:6.0f} sends/s  {each}  total {med[phase]['total']:.0f}")
    if "bare" in med and "ours" in med:
        b, o = med["bare"], med["ours"]
        print("  ours/bare: " + "  ".join(f"{k} x{o[k] / b[k]:.2f}" for k in o if b[k] > 0))


if __name__ == "__main__":
    asyncio.run(main())
