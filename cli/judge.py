"""`journeys judge`: the tracking judge in a process of its own.

Run one or more beside API processes started with TRACKING_JUDGE_IN_API=false: the API
processes record hits and NOTIFY tracking_hits, the judges classify them and signal the
journeys of people who clicked. Judges share the queue through database locks, so
adding one adds capacity and losing one loses nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from core.config import Settings


def register(app: typer.Typer) -> None:
    @app.command()
    def judge(
        tasks: Annotated[int, typer.Option(help="judging transactions at once")] = 4,
        signal_concurrency: Annotated[int, typer.Option(help="engagement signals in flight")] = 16,
        poll_interval: Annotated[
            float, typer.Option(help="seconds between polls when no NOTIFY arrives")
        ] = 1.0,
        verbose: Annotated[bool, typer.Option(help="log each round's timings (DEBUG)")] = False,
    ) -> None:
        """Judge recorded opens and clicks and signal humans' journeys (no HTTP)."""
        from core.config import get_settings
        from devstack.preflight import PreflightError, check_all

        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
        )
        if verbose:
            logging.getLogger("journeys.tracking.judge").setLevel(logging.DEBUG)
        settings = get_settings()
        try:
            asyncio.run(check_all(settings))
        except PreflightError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        asyncio.run(_main(settings, tasks, signal_concurrency, poll_interval))


async def _main(settings: Settings, tasks: int, signal_concurrency: int, poll: float) -> None:
    from services.tracking_judge import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # finish the round in hand, then exit
    await serve(
        settings,
        stop=stop,
        judge_tasks=tasks,
        signal_concurrency=signal_concurrency,
        poll_interval=poll,
    )
