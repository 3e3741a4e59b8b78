"""The environment a child process (worker, API) needs to join a running stack.

Used by `journeys dev`-like launchers in benchmarks and fault tests, so every child
configures itself from the environment exactly as in production.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    s = settings
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JOURNEYS_HOME": str(s.journeys_home),
        "DATABASE_URL": str(s.database_url),
        "TEMPORAL_ADDRESS": str(s.temporal_address),
        "TEMPORAL_TASK_QUEUE": s.temporal_task_queue,
        "SMTP_URL": str(s.smtp_url),
        "SMTP_ALLOW_PLAINTEXT": "true",
        "PUBLIC_BASE_URL": s.public_base_url,
        **extra,
    }
