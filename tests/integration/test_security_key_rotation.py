"""Rotating the payload key leaves running journeys working (issue 6 acceptance).

A run starts under a ring with only k1. While it waits, its worker stops; the worker
and client come back with a ring where k2 is active and k1 still present. The run
finishes: its old payloads open with k1, new ones are sealed with k2. A ring without
k1 could not read that history, which is why old keys stay until their runs end.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlmodel import select
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHistory

from core.codec import ENCODING, METADATA_KEY_ID, EncryptionCodec, KeyRing, PayloadDecryptionError
from core.config import Settings
from core.db import Database
from core.models import JourneyVersion, OutboxMessage, Run
from core.temporal import connect, keyring
from services.enrollment import start_run
from tests.helpers import eventually
from tests.security_helpers import grant_consent, payloads_in, send_wait_send_journey
from worker import build_worker
from workflows.journey import workflow_id


def sealed(history: WorkflowHistory) -> list[Payload]:
    return [
        p for e in history.events for p in payloads_in(e) if p.metadata.get("encoding") == ENCODING
    ]


def key_ids(history: WorkflowHistory) -> set[str]:
    return {p.metadata[METADATA_KEY_ID].decode() for p in sealed(history)}


async def test_running_journey_survives_key_rotation(
    api: httpx.AsyncClient, db: Database, settings: Settings, key_for: Any
) -> None:
    tag = uuid.uuid4().hex[:8]
    old_id, new_id = f"rot1-{tag}", f"rot2-{tag}"
    old_key, new_key = KeyRing.generate_key_b64(), KeyRing.generate_key_b64()
    queue = f"rotation-{tag}"
    before = settings.model_copy(
        update={
            "codec_keys": f"{old_id}:{old_key}",
            "codec_active_key": old_id,
            "temporal_task_queue": queue,
        }
    )
    after = settings.model_copy(
        update={
            "codec_keys": f"{old_id}:{old_key},{new_id}:{new_key}",
            "codec_active_key": new_id,
            "temporal_task_queue": queue,
        }
    )
    address = f"rotation-{tag}@example.com"
    r = await api.post("/v1/contacts", json={"external_id": f"mrn-rot-{tag}", "email": address})
    cid = r.json()["id"]
    await grant_consent(db, cid)
    key = f"rotation-{tag}"
    await send_wait_send_journey(api, key, "PT3S")
    async with db.session() as s:
        version = (
            await s.exec(select(JourneyVersion).where(JourneyVersion.journey_key == key))
        ).one()

    # Under k1: start, send, reach the wait, stop the worker.
    client1 = await connect(before)
    worker1 = build_worker(client1, db, before)
    running1 = asyncio.create_task(worker1.run())
    assert await start_run(client1, queue, version, cid) is not None

    async def waiting() -> bool:
        async with db.session() as s:
            run = (await s.exec(select(Run).where(Run.journey_key == key))).first()
        return run is not None and run.step == "pause"

    await eventually(waiting, timeout=20)
    await worker1.shutdown()
    await running1
    handle1 = client1.get_workflow_handle(workflow_id(key, cid))
    assert key_ids(await handle1.fetch_history()) == {old_id}

    # Rotated: k2 active, k1 kept. The run goes on and completes.
    client2: Client = await connect(after)
    worker2 = build_worker(client2, db, after)
    running2 = asyncio.create_task(worker2.run())
    try:
        handle2 = client2.get_workflow_handle(workflow_id(key, cid))
        result = await asyncio.wait_for(handle2.result(), timeout=30)
        assert result["status"] == "completed"
        history = await handle2.fetch_history()
    finally:
        await worker2.shutdown()
        await running2
    assert key_ids(history) == {old_id, new_id}

    async with db.session() as s:
        received = [m for m in (await s.exec(select(OutboxMessage))).all() if address in m.rcpt_to]
    assert sorted(m.subject for m in received) == ["Hello 1", "Hello 2"]

    # Why k1 must stay in the ring until its runs end: without it the history is unreadable.
    only_new = EncryptionCodec(KeyRing.from_spec(f"{new_id}:{new_key}", new_id))
    with pytest.raises(PayloadDecryptionError, match="unknown key id"):
        await only_new.decode(sealed(history))
    # And the session's own ring (a different k1) cannot read it either: keys really differ.
    assert keyring(settings).active_id != old_id
