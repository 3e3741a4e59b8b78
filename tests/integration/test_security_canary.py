"""The canary (issue 6 acceptance): a contact whose e-mail, external id and attributes
hold a distinctive string walks a journey (send, wait, send). The string must appear
nowhere in Temporal — the raw history as `temporal workflow show --output json` and
`fetch_history` give it, search attributes, memo — nor in logs captured meanwhile,
the URLs of the messages sent, or the tracking tables. Workflows carry ids only, so
decoding the history through the codec server shows the contact id and still not the
string; a payload that does contain it round-trips through /codec/encode and /decode.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import logging
import os
import re
import uuid
from typing import Any

import httpx
import pytest
import uvicorn
from google.protobuf import json_format
from sqlalchemy import text
from sqlmodel import select
from temporalio.api.common.v1 import Payloads
from temporalio.client import Client
from temporalio.converter import DataConverter

from core.codec import ENCODING
from core.config import Settings
from core.db import Database
from core.models import OutboxMessage
from devstack.ports import free_port
from devstack.temporal import TemporalDevServer, temporal_binary
from tests.helpers import eventually
from tests.security_helpers import enroll, grant_consent, payloads_in, send_wait_send_journey
from workflows.journey import workflow_id

URL = re.compile(r"https?://[^\s\"'<>)]+")


def spellings(secret: str) -> list[bytes]:
    """The string as is and base64-encoded at each alignment (JSON output of binary data)."""
    raw = secret.encode()
    out = [raw]
    for shift in range(3):
        b64 = base64.b64encode(b"\0" * shift + raw)[4:-4]  # the stable middle part
        out.append(b64)
    return out


def assert_absent(secret: str, blob: str | bytes, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for form in spellings(secret):
        assert form not in data, f"canary found in {where}"


def cli_payloads(node: Any) -> list[tuple[bytes, bytes]]:
    """(encoding, data) of every payload in `temporal workflow show --output json`."""
    found: list[tuple[bytes, bytes]] = []
    if isinstance(node, dict):
        meta = node.get("metadata")
        if isinstance(meta, dict) and "encoding" in meta and "data" in node:
            found.append((base64.b64decode(meta["encoding"]), base64.b64decode(node["data"])))
        for value in node.values():
            found += cli_payloads(value)
    elif isinstance(node, list):
        for value in node:
            found += cli_payloads(value)
    return found


async def run_cli(*args: str) -> str:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    proc = await asyncio.create_subprocess_exec(
        str(temporal_binary()),
        *args,
        "--disable-config-file",
        "--disable-config-env",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.slow
async def test_canary_never_leaves_the_database_in_clear(
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    temporal: Client,
    temporal_server: TemporalDevServer,
    key_for: Any,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = f"zqxcanary{uuid.uuid4().hex}"
    tag = uuid.uuid4().hex[:8]
    address = f"{canary}@example.com"

    r = await api.post(
        "/v1/contacts",
        json={
            "external_id": f"mrn-{canary}",
            "email": address,
            "timezone": "America/New_York",
            "attributes": {"first": canary, "diagnosis": f"type 2 diabetes {canary}"},
        },
    )
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert canary not in cid
    await grant_consent(db, cid)
    key = f"canary-{tag}"
    await send_wait_send_journey(
        api,
        key,
        "PT1S",
        subject="Hello {{ contact.attributes.first }}",
        html="<p>Dear {{ contact.attributes.first }}</p>"
        "<p><a href=\"{{ link('book', 'https://example.org/book') }}\">Book a visit</a></p>",
    )
    await enroll(api, key, cid)

    async def completed() -> bool:
        r = await api.get(f"/v1/journeys/{key}/runs/{cid}")
        return r.status_code == 200 and r.json()["status"] == "completed"

    await eventually(completed, timeout=30)
    wid = workflow_id(key, cid)
    handle = temporal.get_workflow_handle(wid)

    # 1. The raw history, as Temporal stores it: through the CLI and through the SDK.
    shown = await run_cli(
        "workflow",
        "show",
        "--workflow-id",
        wid,
        "--address",
        temporal_server.address,
        "--namespace",
        settings.temporal_namespace,
        "--output",
        "json",
    )
    assert cid in shown  # it is the right history, and ids are in clear
    assert base64.b64encode(ENCODING).decode() in shown or ENCODING.decode() in shown
    assert_absent(canary, shown, "temporal workflow show --output json")

    history = await handle.fetch_history()
    raw = b"".join(e.SerializeToString() for e in history.events)
    assert len(history.events) > 10 and cid.encode() in raw
    assert_absent(canary, raw, "the raw history (fetch_history)")

    # 2. Search attributes and memo.
    description = await handle.describe()
    assert_absent(canary, str(description.raw_description), "search attributes / memo")
    assert description.typed_search_attributes  # JourneyKey, ContactId, ...

    # 3. The messages: the canary is in the greeting (so it really was rendered), never in a URL.
    async with db.session() as s:
        sent = [m for m in (await s.exec(select(OutboxMessage))).all() if address in m.rcpt_to]
    assert len(sent) == 2
    for m in sent:
        msg = email.message_from_bytes(m.raw, policy=email.policy.default)
        bodies = [
            part.get_content() for part in msg.walk() if part.get_content_maintype() == "text"
        ]
        assert any(canary in b for b in bodies)
        urls = [
            u for text_ in [*bodies, *(str(v) for _, v in msg.items())] for u in URL.findall(text_)
        ]
        assert urls, "the message has links"
        assert_absent(canary, " ".join(urls), "a URL of a sent message")
        assert_absent(canary, str(msg["Message-ID"]), "the Message-ID")

    # 4. Tracking tables and everything else that only holds ids.
    async with db.session() as s:
        for table in ("tracked_link", "tracking_event", "send", "run", "step_log", "audit_log"):
            hits = (
                await s.exec(  # type: ignore[call-overload]
                    text(f"SELECT count(*) FROM {table} t WHERE t::text LIKE :p").bindparams(
                        p=f"%{canary}%"
                    )
                )
            ).one()[0]
            assert hits == 0, f"canary found in table {table}"

    # 5. Decoding the history through the codec server: ids, and still no canary.
    sealed = [
        p for e in history.events for p in payloads_in(e) if p.metadata.get("encoding") == ENCODING
    ]
    assert len(sealed) >= 5
    op = await key_for("operator")
    body = json_format.MessageToDict(Payloads(payloads=sealed))
    r = await api.post(
        "/codec/decode",
        headers={"Authorization": f"Bearer {op}", "X-Namespace": "default"},
        json=body,
    )
    assert r.status_code == 200, r.text
    clear = json_format.ParseDict(r.json(), Payloads()).payloads
    assert all(p.metadata.get("encoding") != ENCODING for p in clear)
    decoded = b"\n".join(p.data for p in clear)
    assert cid.encode() in decoded and b'"contact_id"' in decoded
    assert_absent(canary, decoded, "the decoded payloads")

    # ... and a payload that holds the canary is sealed by /encode and opened by /decode.
    plain = DataConverter.default.payload_converter.to_payloads([{"note": canary}])
    r = await api.post(
        "/codec/encode",
        headers={"Authorization": f"Bearer {op}"},
        json=json_format.MessageToDict(Payloads(payloads=plain)),
    )
    assert_absent(canary, json.dumps(r.json()), "an encoded payload")
    assert_absent(canary, base64.b64decode(r.json()["payloads"][0]["data"]), "ciphertext")
    r = await api.post("/codec/decode", headers={"Authorization": f"Bearer {op}"}, json=r.json())
    back = json_format.ParseDict(r.json(), Payloads()).payloads
    assert DataConverter.default.payload_converter.from_payloads(list(back)) == [{"note": canary}]

    # 6. The Temporal CLI through the codec server over real HTTP (as the UI uses it).
    from api.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, db=db, temporal=temporal),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=True,
            lifespan="off",
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: asyncio.sleep(0, result=server.started), timeout=10)
        decoded_show = await run_cli(
            "workflow",
            "show",
            "--workflow-id",
            wid,
            "--address",
            temporal_server.address,
            "--namespace",
            settings.temporal_namespace,
            "--output",
            "json",
            "--codec-endpoint",
            f"http://127.0.0.1:{port}/codec",
            "--codec-auth",
            f"Bearer {op}",
        )
    finally:
        server.should_exit = True
        await serving
    shown_payloads = cli_payloads(json.loads(decoded_show))
    inputs = [data for encoding, data in shown_payloads if encoding == b"json/plain"]
    assert any(b'"contact_id"' in d and cid.encode() in d for d in inputs)
    assert ENCODING not in {encoding for encoding, _ in shown_payloads}  # every payload opened
    assert_absent(canary, decoded_show, "the history decoded by the CLI")
    assert_absent(
        canary, b"\n".join(data for _, data in shown_payloads), "payloads decoded by the CLI"
    )

    # 7. Logs of the API, the worker and uvicorn captured during all of this.
    logging.getLogger("temporalio.activity").warning("control record for %s", cid)
    try:
        raise RuntimeError(f"library error quoting {canary}")
    except RuntimeError:
        logging.getLogger("journeys.test").exception("control failure")
    captured = capfd.readouterr()
    assert cid in caplog.text  # the capture works...
    assert "/codec/decode" in caplog.text  # ...and saw uvicorn's access log
    assert_absent(canary, caplog.text, "captured log records")
    assert_absent(canary, captured.out + captured.err, "captured stdout/stderr")
