"""A relay that hangs up on pooled connections mid-journey: it drops idle clients after a
fraction of a second, cuts or 421s them at MAIL, 421s and drops during DATA, and
restarts (every open connection gone). The worker (a subprocess with its SMTP pool)
still sends each message exactly once."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func
from sqlmodel import select

from core.models import Send
from tests.fault.conftest import FaultStack, make_journey
from tests.fault.test_exactly_once import _assert_exactly_once
from tests.helpers import eventually

pytestmark = [pytest.mark.fault, pytest.mark.xdist_group("fault")]


async def test_relay_hanging_up_on_pooled_connections(fault_stack: FaultStack) -> None:
    sink = fault_stack.sink
    await sink.stop()
    # Far below the pool's idle timeout (30 s): the relay hangs up first. Not much below the
    # journey's 1 s wait either, so a loaded machine still reuses connections.
    sink.idle_timeout = 0.8
    await sink.start()
    faults = sink.handler.faults
    faults.at_mail[:] = (["drop"] * 5 + ["421"] * 5) * 2
    faults.queue[:] = ["421", "drop", "451"] * 4
    fault_stack.start_worker()
    key, ids = await make_journey(fault_stack, 80, wait="PT1S")

    async def some_sent() -> bool:
        async with fault_stack.db.session() as s:
            n = (
                await s.exec(
                    select(func.count())
                    .select_from(Send)
                    .where(Send.journey_key == key, Send.status == "sent")
                )
            ).one()
        return int(n) >= 20

    await eventually(some_sent, timeout=90, interval=0.2)
    await sink.stop()  # the relay restarts with the worker's connections in its pool
    await asyncio.sleep(0.5)
    await sink.start()
    await _assert_exactly_once(fault_stack, key, ids, timeout=180)
    assert not faults.at_mail and not faults.queue, "every fault was exercised"
    assert sink.connections.opened < 2 * len(ids), "connections were reused"
    fault_stack.kill_workers()
