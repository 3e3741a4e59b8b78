"""Faults mid-journey: every contact ends with each send made exactly once and no step lost."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import func, text
from sqlmodel import col, select

from core.models import OutboxMessage, Run, Send
from tests.fault.conftest import FaultStack, make_journey
from tests.helpers import eventually

pytestmark = [pytest.mark.fault, pytest.mark.xdist_group("fault")]


async def _assert_exactly_once(stack: FaultStack, key: str, ids: list[str], timeout: float) -> None:
    async def all_done() -> bool:
        async with stack.db.session() as s:
            n = (
                await s.exec(
                    select(func.count()).select_from(Run).where(
                        Run.journey_key == key, Run.status == "completed"
                    )
                )
            ).one()
        return int(n) == len(ids)

    await eventually(all_done, timeout=timeout, interval=0.5)
    async with stack.db.session() as s:
        sends = (await s.exec(select(Send).where(Send.journey_key == key))).all()
        assert len(sends) == 2 * len(ids)
        assert {x.status for x in sends} == {"sent"}
        mids = [x.message_id for x in sends]
        rows = (
            await s.exec(
                select(OutboxMessage.message_id, func.count())
                .where(col(OutboxMessage.message_id).in_(mids))
                .group_by(OutboxMessage.message_id)
            )
        ).all()
        counts = dict(rows)
        assert len(counts) == len(mids), "a send never reached the sink"
        assert max(counts.values()) == 1, "a message was sent twice"
        lost = (
            await s.exec(  # type: ignore[call-overload]
                text(
                    "SELECT count(*) FROM run r WHERE r.journey_key = :k AND NOT EXISTS "
                    "(SELECT 1 FROM step_log l WHERE l.run_id = r.id AND l.step = 'done' "
                    "AND l.action = 'entered')"
                ).bindparams(k=key)
            )
        ).one()
        assert lost[0] == 0, "a run skipped a step"


async def _first_sends(stack: FaultStack, key: str) -> None:
    """Mid-journey for sure: the worker is up (a worker still starting when Temporal goes
    away exits at its preflight, and the journey would never move) and sends go out."""

    async def sending() -> bool:
        async with stack.db.session() as s:
            n = (await s.exec(select(func.count()).select_from(Send).where(Send.journey_key == key))).one()
        return int(n) > 0

    await eventually(sending, timeout=60, interval=0.2)


async def test_sigkill_worker_repeatedly(fault_stack: FaultStack) -> None:
    rnd = random.Random(7)
    fault_stack.start_worker()
    key, ids = await make_journey(fault_stack, 300, wait="PT2S")
    for _ in range(6):
        await asyncio.sleep(rnd.uniform(0.5, 2.0))
        fault_stack.kill_workers()
        await asyncio.sleep(rnd.uniform(0.0, 0.5))
        fault_stack.start_worker()
    await _assert_exactly_once(fault_stack, key, ids, timeout=180)
    fault_stack.kill_workers()


async def test_smtp_transient_failures_and_drops(fault_stack: FaultStack) -> None:
    faults = fault_stack.sink.handler.faults
    faults.queue[:] = (["421"] * 10 + ["451"] * 10 + ["drop"] * 10) * 2
    fault_stack.start_worker()
    key, ids = await make_journey(fault_stack, 100)
    await _assert_exactly_once(fault_stack, key, ids, timeout=180)
    assert not faults.queue, "the sink's faults were all exercised"
    fault_stack.kill_workers()


async def test_restart_temporal_and_postgres_mid_journey(fault_stack: FaultStack) -> None:
    fault_stack.start_worker()
    key, ids = await make_journey(fault_stack, 100, wait="PT4S")
    await _first_sends(fault_stack, key)
    fault_stack.temporal.stop()
    await asyncio.sleep(1.0)
    fault_stack.temporal.start()
    await fault_stack.temporal.wait_ready()
    await asyncio.sleep(1.0)
    fault_stack.pg.kill()
    await asyncio.sleep(1.0)
    fault_stack.pg.start()
    await fault_stack.pg.wait_ready()
    await _assert_exactly_once(fault_stack, key, ids, timeout=240)
    fault_stack.kill_workers()
