"""Mail transport: sends through SmtpTransport to the built-in sink, pooled connections
against one connection per message (SMTP_POOL_MAX_MESSAGES=1, what every send did
before the pool), measured in the same run; then the sink's header parsing against
parsing the whole message (what the sink did before).

    .venv/bin/python bench/smtp_transport.py --messages 2000 --concurrency 20 --rounds 3

The sink (devstack/smtp_sink.py's aiosmtpd handler, messages counted in memory, no
database) is a child process, so the figures split CPU between the sender (this
process: the worker's share) and the sink (the relay's share). Messages are real
composed ones (~4 KB, multipart text + HTML). Printed: sends/s and CPU ms per send
for each mode (medians over --rounds, the modes alternating), and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from activities.smtp import SmtpTransport, parse_smtp_url  # noqa: E402
from devstack.ports import free_port, port_in_use  # noqa: E402
from devstack.smtp_sink import ReceivedMessage, SinkHandler, SmtpSink, outbox_headers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def sample_message() -> bytes:
    from datetime import UTC, datetime

    from mail.message import build_message, message_bytes
    from mail.template_types import Rendered

    html = "<html><body>" + "<p>Hello Alice, thanks for your visit to Riverside.</p>" * 40
    html += '<a href="https://journeys.example/t/c/AbCdEf">Book</a></body></html>'
    msg = build_message(
        Rendered(subject="Thanks for your visit — Riverside", html=html, text="Hello\n" * 20,
                 links=()),
        from_addr="Riverside Clinic <care@clinic.example>",
        to_addr="pat.doe@example.org",
        message_id="<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>",
        date=datetime(2026, 1, 5, 10, 0, tzinfo=UTC),
        unsubscribe_url="https://journeys.example/u/" + "Qw3" * 40,
        unsubscribe_mailto="unsubscribe@clinic.example",
        list_id="post-visit.clinic.example",
        physical_address="Riverside Clinic\n12 Harbor Road\nSpringfield, IL 62701",
        pixel_url="https://journeys.example/t/o/PiXeL",
        trap_url="https://journeys.example/t/c/TrAp",
    )  # fmt: skip
    return message_bytes(msg)


async def serve_sink(port: int) -> None:
    async def store(msg: ReceivedMessage) -> None:
        pass  # counted by the handler; the transport is what is measured

    sink = SmtpSink(SinkHandler(store), port=port)
    await sink.start()
    await asyncio.Event().wait()


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


async def one_round(
    port: int, sink: psutil.Process, raw: bytes, n: int, concurrency: int, max_messages: int
) -> tuple[float, float, float, int]:
    """(sends/s, sender CPU ms/send, sink CPU ms/send, connections opened)"""
    t = SmtpTransport(
        parse_smtp_url(f"smtp://127.0.0.1:{port}", True),
        pool_size=concurrency,
        max_messages=max_messages,
    )
    me = psutil.Process()
    sem = asyncio.Semaphore(concurrency)

    async def send(i: int) -> None:
        async with sem:
            await t.send("bounces@clinic.example", f"p{i}@example.org", raw)

    c_me, c_sink, t0 = cpu(me), cpu(sink), time.perf_counter()
    await asyncio.gather(*(send(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    await t.pool.close()
    return (
        n / elapsed,
        1000 * (cpu(me) - c_me) / n,
        1000 * (cpu(sink) - c_sink) / n,
        t.pool.stats.opened,
    )


def parse_figures(raw: bytes, n: int) -> tuple[float, float]:
    """CPU µs per message: whole-message parse (before) and header block (now)."""

    def whole() -> None:
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        str(parsed.get("Subject", "")), str(parsed.get("Message-ID", ""))

    out = []
    for f in (whole, lambda: outbox_headers(raw)):
        t0 = time.process_time()
        for _ in range(n):
            f()
        out.append(1e6 * (time.process_time() - t0) / n)
    return out[0], out[1]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=20, help="sends in flight (= pool size)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sink:
        await serve_sink(args.serve_sink)
        return

    raw = sample_message()
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-sink", str(port)], cwd=ROOT, start_new_session=True
    )
    try:
        while not port_in_use(port):
            await asyncio.sleep(0.05)
        sink = psutil.Process(child.pid)
        modes = {"one connection per message": 1, "pooled": 100}
        got: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in modes}
        for _ in range(args.rounds):
            for mode, cap in modes.items():
                got[mode].append(
                    await one_round(port, sink, raw, args.messages, args.concurrency, cap)
                )
    finally:
        child.terminate()
        child.wait()

    print(f"messages={args.messages} ({len(raw)} bytes) concurrency={args.concurrency} "
          f"rounds={args.rounds} (medians)")  # fmt: skip
    med: dict[str, list[float]] = {}
    for mode, rows in got.items():
        med[mode] = [statistics.median(r[i] for r in rows) for i in range(4)]
        rate, sender, sink_ms, opened = med[mode]
        print(f"  {mode:27s} {rate:7.0f} sends/s  sender CPU {sender:5.2f} ms/send  "
              f"sink CPU {sink_ms:5.2f} ms/send  connections {opened:.0f}")  # fmt: skip
    old, new = med["one connection per message"], med["pooled"]
    print(f"  pooled/one-per-message: sends/s x{new[0] / old[0]:.2f}, "
          f"sender CPU x{new[1] / old[1]:.2f}, sink CPU x{new[2] / old[2]:.2f}")  # fmt: skip
    whole, headers = parse_figures(raw, 500)
    print(f"sink header parsing: whole message {whole:.0f} µs, header block {headers:.0f} µs "
          f"(x{headers / whole:.2f})")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
