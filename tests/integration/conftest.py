"""Fixtures shared by the integration tests of one area (the session's are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from core.config import Settings
from devstack.smtp_sink import SmtpSink
from tests.integration.sending_support import sending_settings


@pytest_asyncio.fixture
async def env(settings: Settings, sink: SmtpSink) -> AsyncIterator[Settings]:
    """Settings for calling the send activity directly, with the session's SMTP sink up."""
    yield sending_settings(settings)
