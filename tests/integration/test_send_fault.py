"""SIGKILL a worker process at random moments during a 200-contact, two-send journey:
every contact still gets each message exactly once (SPEC section 6).

The worker is the real `journeys worker` command in a subprocess, pointed at the
session's Temporal, PostgreSQL and SMTP sink. It polls a task queue of its own so that
the in-process test worker cannot quietly do the work in its place.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import Consent, Contact, JourneyVersion, OutboxMessage, Send
from devstack.smtp_sink import SmtpSink
from services.enrollment import start_run
from services.identity import email_hash
from tests.helpers import eventually
from tests.integration.sending_support import tag
from tests.security_helpers import send_wait_send_journey

REPO = Path(__file__).resolve().parents[2]
CONTACTS = 200
KILLS = 4
CAT = "care_reminders"


class WorkerProcess:
    """`python -m cli.main worker` that can be killed -9 and started again."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n--- start {self.starts} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker"],
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@pytest_asyncio.fixture
async def worker_process(settings: Settings, workdir: Path) -> AsyncIterator[WorkerProcess]:
    assert settings.database_url and settings.temporal_address and settings.smtp_url
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        JOURNEYS_HOME=str(settings.home),  # same codec/token keys and pepper
        DATABASE_URL=settings.database_url,
        TEMPORAL_ADDRESS=settings.temporal_address,
        TEMPORAL_NAMESPACE=settings.temporal_namespace,
        TEMPORAL_TASK_QUEUE=f"fault-{tag()}",
        SMTP_URL=settings.smtp_url,
        SMTP_ALLOW_PLAINTEXT="true",  # SMTP_BUILTIN_SINK unset: the worker asks the sink
        PUBLIC_BASE_URL=settings.public_base_url,
    )
    wp = WorkerProcess(env, workdir / f"worker-{tag()}.log")
    yield wp
    wp.stop()


async def _contacts(db: Database, settings: Settings, n: int) -> list[str]:
    pepper = str(settings.secret_values()["api_key_pepper"])
    t = tag()
    contacts = [Contact(external_id=f"f-{t}-{i}", email=f"f-{t}-{i}@example.com") for i in range(n)]
    for c in contacts:
        assert c.email
        c.email_hash = email_hash(c.email, pepper)
    async with db.session() as s:
        s.add_all(contacts)
        await s.flush()
        s.add_all(
            Consent(contact_id=c.id, category=CAT, granted=True, source="fault-test")
            for c in contacts
        )
        await s.commit()
    return [c.id for c in contacts]


@pytest.mark.fault
async def test_sigkill_during_a_200_contact_journey_sends_each_message_once(
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
    sink: SmtpSink,
    worker_process: WorkerProcess,
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    t = tag()
    key = f"fault-{t}"
    await send_wait_send_journey(
        api, key, "PT1S", subject="Reminder", html="<p>Hello</p>", category=CAT
    )
    async with db.session() as s:
        version = await s.get(JourneyVersion, (key, 1))
    assert version is not None
    contact_ids = await _contacts(db, settings, CONTACTS)
    queue = worker_process.env["TEMPORAL_TASK_QUEUE"]

    began = time.monotonic()
    worker_process.start()
    sem = asyncio.Semaphore(50)

    async def enrol(cid: str) -> None:
        async with sem:
            assert await start_run(temporal, queue, version, cid)

    await asyncio.gather(*(enrol(cid) for cid in contact_ids))

    async def counts() -> tuple[int, int]:
        async with db.session() as s:
            rows = (
                await s.exec(
                    select(Send.status, func.count())
                    .where(Send.journey_key == key)
                    .group_by(Send.status)
                )
            ).all()
        by = dict(rows)
        return by.get("sent", 0), sum(by.values())

    # Kill at random points of progress, so kills land while messages are in flight
    # (and some while the worker is still starting), not only before the first send.
    thresholds = sorted(rng.sample(range(5, 2 * CONTACTS - 100), KILLS))
    kills: list[tuple[float, int]] = []
    for threshold in thresholds:

        async def reached(target: int = threshold) -> bool:
            return (await counts())[0] >= target

        await eventually(reached, timeout=40, interval=0.05)
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        worker_process.kill()
        kills.append((round(time.monotonic() - began, 1), (await counts())[0]))
        worker_process.start()

    async def all_sent() -> bool:
        sent, _ = await counts()
        return sent == 2 * CONTACTS

    try:
        # About 30 s on an idle 2-core machine; the margin is for a busy one.
        await eventually(all_sent, timeout=150, interval=0.5)
    except AssertionError:
        tail = worker_process.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"seed={seed} kills={kills} (sent, total)={await counts()}\n{tail}")

    async with db.session() as s:
        sends = (await s.exec(select(Send).where(Send.journey_key == key))).all()
        per_message = dict(
            (
                await s.exec(
                    select(OutboxMessage.message_id, func.count())
                    .where(col(OutboxMessage.message_id).in_([x.message_id for x in sends]))
                    .group_by(col(OutboxMessage.message_id))
                )
            ).all()
        )
    context = f"seed={seed} kills={kills}"
    assert len(sends) == 2 * CONTACTS, context
    assert {x.status for x in sends} == {"sent"}, context
    assert len(per_message) == 2 * CONTACTS, context
    assert set(per_message.values()) == {1}, context  # no message twice, none missing
    assert {(x.contact_id, x.step) for x in sends} == {
        (cid, step) for cid in contact_ids for step in ("first", "second")
    }
    assert worker_process.starts == KILLS + 1
    recovered = sum(x.detail == "recovered" for x in sends)
    retried = sum(x.attempts > 1 for x in sends)
    print(
        f"{context}; all {2 * CONTACTS} sends once in {time.monotonic() - began:.1f}s "
        f"({recovered} settled from the outbox, {retried} sent on a later attempt)"
    )
