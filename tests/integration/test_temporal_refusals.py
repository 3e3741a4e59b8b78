"""Temporal refusing a call because the deployment is misconfigured (here: the namespace
does not exist) is never taken for a run that ended, outside event dispatch too: the
tracking judge keeps the engagement signal queued until it is fixed, and erasure reports
the runs it could not stop."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client

from core.codec import data_converter
from core.config import Settings
from core.db import Database
from core.models import Run, Send, TrackingEvent, utcnow
from core.temporal import keyring
from services.context import ServiceContext
from services.erasure import ErasureResult, _exit_runs
from services.tracking_judge import SIGNAL_RUN_ENDED, SIGNAL_SENT, TrackingJudge
from tests.helpers import eventually
from tests.integration.entry_support import contact, definition, published, tag
from tests.integration.test_event_redelivery import _runs
from workflows.journey import workflow_id


@pytest_asyncio.fixture
async def wrong_namespace(settings: Settings, temporal: Client) -> AsyncIterator[Client]:
    yield await Client.connect(
        temporal.service_client.config.target_host,
        namespace=f"missing-{uuid.uuid4().hex[:8]}",
        data_converter=data_converter(keyring(settings)),
    )


async def _running_run(api: httpx.AsyncClient, db: Database) -> Run:
    t = tag()
    key = await published(api, definition(f"hold-{t}"))
    cid = await contact(api)
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1
    runs = await eventually(lambda: _runs(db, key, cid), timeout=20)
    assert runs[0].workflow_id == workflow_id(key, cid) and runs[0].status == "running"
    return runs[0]


async def test_judge_keeps_a_signal_refused_for_a_wrong_namespace_queued_until_fixed(
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
    wrong_namespace: Client,
) -> None:
    run = await _running_run(api, db)
    send = Send(
        id=f"s_{tag()}",
        send_key=f"{run.id}/hold/1",
        run_id=run.id,
        journey_key=run.journey_key,
        version=run.version,
        step="hold",
        visit=1,
        contact_id=run.contact_id,
        template_key="none",
        message_id=f"<{tag()}@example.org>",
    )
    hit = TrackingEvent(id=f"te_{tag()}", send_id=send.id, kind="open", at=utcnow())
    judge = TrackingJudge(db, settings, wrong_namespace, listen=False)
    # Neither a run that ended nor a final refusal: left queued (None) for the next sweep.
    assert await judge._signal(hit, send, run) is None
    # Once the namespace is right, the queued signal reaches the run.
    fixed = TrackingJudge(db, settings, temporal, listen=False)
    assert await fixed._signal(hit, send, run) == SIGNAL_SENT
    # The real namespace still tells an ended run apart.
    ended = Run(**{**run.model_dump(), "workflow_id": f"journey/none/{tag()}"})
    assert await fixed._signal(hit, send, ended) == SIGNAL_RUN_ENDED


async def test_erasure_reports_runs_it_could_not_stop_when_the_namespace_is_missing(
    api: httpx.AsyncClient, db: Database, settings: Settings, wrong_namespace: Client
) -> None:
    run = await _running_run(api, db)
    result = ErasureResult(run.contact_id)
    async with db.session() as s:
        await _exit_runs(ServiceContext(s, settings, wrong_namespace), run.contact_id, result)
    assert result.runs_signalled == 0 and result.runs_not_signalled == [run.workflow_id]


async def test_an_unreadable_history_payload_is_logged_by_type_and_run_not_content(
    temporal: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Redelivery's origin checks treat an unreadable payload as 'cannot tell'; it is
    logged (error type, run id), never silently, and never with the payload's bytes."""
    from temporalio.api.common.v1 import Payload

    from core.codec import ENCODING, METADATA_ENCODING, METADATA_KEY_ID
    from services.dispatch import _Origins, _Writes
    from workflows.types import EventSignal

    secret = b"patient@example.org"
    bad = Payload(metadata={METADATA_ENCODING: ENCODING, METADATA_KEY_ID: b"gone-key"}, data=secret)
    run_id = f"run-{tag()}"
    with caplog.at_level(logging.WARNING, logger="journeys.dispatch"):
        got = await _Origins(temporal, {}, _Writes())._decode([bad], EventSignal, run_id)
    assert got is None
    (record,) = [r for r in caplog.records if r.name == "journeys.dispatch"]
    message = record.getMessage()
    assert run_id in message and "EventSignal" in message
    assert "patient" not in message and record.exc_info is None
