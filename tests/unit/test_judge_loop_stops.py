"""The judge's loop stops when cancelled, even when the cancellation lands in the same
tick as a wake-up (Python 3.11's asyncio.wait_for swallowed it there, and an API
shutdown then waited for ever on the judge)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.config import Settings
from services.tracking_judge import TrackingJudge


async def test_a_cancel_that_lands_with_a_wake_up_stops_the_loop(tmp_path: Path) -> None:
    settings = Settings.model_validate({"home": tmp_path})
    judge = TrackingJudge(None, settings, None, poll_interval=30.0)  # type: ignore[arg-type]

    async def no_warm_up() -> None:
        return None

    async def no_work(*, sweep: bool = True) -> int:
        return 0

    judge.warm_up = no_warm_up  # type: ignore[method-assign]
    judge.work_once = no_work  # type: ignore[method-assign]
    for _ in range(20):
        task = asyncio.create_task(judge._run())
        for _ in range(3):
            await asyncio.sleep(0)  # the loop is waiting for a wake-up
        judge._wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, "the judge loop ignored its cancellation"


async def test_the_sweep_runs_once_a_poll_interval_not_after_every_round(
    tmp_path: Path,
) -> None:
    """A burst is many rounds of the loop; the sweep of unsignalled rows (a query and a
    transaction) runs once a poll interval, not after each of them."""
    settings = Settings.model_validate({"home": tmp_path})
    judge = TrackingJudge(None, settings, None, poll_interval=30.0)  # type: ignore[arg-type]
    rounds = sweeps = 0

    async def no_warm_up() -> None:
        pass

    async def busy_round() -> int:
        nonlocal rounds
        rounds += 1
        return 1 if rounds < 50 else 0  # 49 rounds that judged something, then idle

    async def sweep() -> int:
        nonlocal sweeps
        sweeps += 1
        return 0

    judge.warm_up = no_warm_up  # type: ignore[method-assign]
    judge.judge_pending = busy_round  # type: ignore[method-assign]
    judge.signal_pending = sweep  # type: ignore[method-assign]
    judge.start()
    try:
        async with asyncio.timeout(5):
            while rounds < 50:
                await asyncio.sleep(0.01)
    finally:
        await judge.stop()
    assert sweeps == 1
