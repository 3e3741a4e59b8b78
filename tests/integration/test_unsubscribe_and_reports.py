"""Unsubscribe (page and RFC 8058 one-click) and bounce/complaint reports, over the real
stack: messages from real runs, the API, and the SMTP sink's inbound address."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest_asyncio
from sqlmodel import select
from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.models import OutboxMessage, Send
from devstack.inbound import InboundMail
from devstack.ports import free_port
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store
from tests.helpers import eventually
from tests.integration.sending_support import (
    activities_for,
    events_of,
    get_send,
    new_contact,
    new_template,
    outbox_for,
    run_send,
    send_input,
    set_grant,
    suppressions_of,
    tag,
    unsubscribe_path,
)
from tests.security_helpers import send_wait_send_journey

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mail"
CAT = "care_reminders"


async def _journey_with_a_long_wait(api: httpx.AsyncClient, category: str = CAT) -> str:
    key = f"unsub-{tag()}"
    await send_wait_send_journey(
        api, key, "PT1H", subject="Message", html="<p>Hello</p>", category=category
    )
    return key


async def _enrolled_contact(
    api: httpx.AsyncClient, key: str, grant: bool = True
) -> tuple[str, str]:
    t = tag()
    email = f"pat-{t}@example.com"
    r = await api.post("/v1/contacts", json={"external_id": f"mrn-{t}", "email": email})
    cid = r.json()["id"]
    if grant:
        await api.put(f"/v1/contacts/{cid}/consents/{CAT}", json={"granted": True, "source": "t"})
    r = await api.post(f"/v1/journeys/{key}/enrollments", json={"contact_ids": [cid]})
    assert r.json()["enrolled"] == 1, r.text
    return cid, email


async def _first_message(db: Database, email: str) -> OutboxMessage:
    async def probe() -> OutboxMessage | None:
        async with db.session() as s:
            rows = (await s.exec(select(OutboxMessage))).all()
        mine = [m for m in rows if email in m.rcpt_to]
        return mine[0] if mine else None

    found = await eventually(probe, timeout=20)
    assert found is not None
    return found


async def _run(api: httpx.AsyncClient, key: str, cid: str) -> dict[str, Any]:
    r = await api.get(f"/v1/journeys/{key}/runs/{cid}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_one_click_unsubscribe_suppresses_records_and_ends_the_run(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    key = await _journey_with_a_long_wait(api)
    cid, email = await _enrolled_contact(api, key)
    msg = await _first_message(db, email)
    path = unsubscribe_path(msg.raw)
    assert email not in path and cid not in path

    async def waiting() -> bool:
        return (await _run(api, key, cid))["step"] == "pause"

    await eventually(waiting)

    # GET (what a link scanner does) only shows the page.
    r = await api.get(path, headers={"Authorization": ""})
    assert r.status_code == 200 and "<form" in r.text and 'method="post"' in r.text
    assert email not in r.text
    assert await suppressions_of(db, settings, email) == []
    assert (await _run(api, key, cid))["status"] == "running"

    # RFC 8058 one-click: no API key, no cookies, form body.
    async with httpx.AsyncClient(transport=api._transport, base_url="http://testserver") as bare:
        r = await bare.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200, r.text
        assert "location" not in r.headers and "set-cookie" not in r.headers
        again = await bare.post(
            path,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert again.status_code == 200

    [sup] = await suppressions_of(db, settings, email)
    assert (sup.category, sup.reason) == (CAT, "unsubscribe")
    [event] = await events_of(db, cid, "unsubscribe")  # once, though posted twice
    assert event.properties["category"] == CAT and email not in str(event.properties)

    async def exited() -> dict[str, Any] | None:
        run = await _run(api, key, cid)
        return run if run["status"] == "exited" else None

    run = await eventually(exited)
    assert run is not None
    assert run["exit_reason"] == "unsubscribed"
    r = await api.get(f"/v1/journeys/{key}/runs/{cid}")
    assert "second" not in r.json()["visits"]


async def test_unsubscribe_page_can_stop_everything(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    key = await _journey_with_a_long_wait(api)
    cid, email = await _enrolled_contact(api, key)
    msg = await _first_message(db, email)
    r = await api.post(
        unsubscribe_path(msg.raw),
        content=b"List-Unsubscribe=One-Click&scope=all",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and "any emails" in r.text
    [sup] = await suppressions_of(db, settings, email)
    assert sup.category == "*"
    # Every later send to this address is blocked, whatever its category.
    acts = activities_for(db, settings)
    tpl = await new_template(db)
    await set_grant(db, settings, cid, "billing")
    result = await run_send(acts, send_input(cid, tpl.key, "billing"))
    assert (result.status, result.detail) == ("blocked", "suppressed")


async def test_bad_unsubscribe_tokens_get_a_404_page(app_client: httpx.AsyncClient) -> None:
    for token in ("nonsense", "A" * 44, "x" * 5000, "%00%ff"):
        for method in ("GET", "POST"):
            r = await app_client.request(method, f"/u/{token}")
            assert r.status_code == 404, (method, token)
            assert r.headers["content-type"].startswith("text/html")


async def test_forged_unsubscribe_token_is_404(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    contact = await new_contact(db, settings)
    await set_grant(db, settings, contact.id, CAT)
    tpl = await new_template(db)
    result = await run_send(activities_for(db, settings), send_input(contact.id, tpl.key))
    send = await get_send(db, result.send_id or "")
    [msg] = await outbox_for(db, send.message_id)
    path = unsubscribe_path(msg.raw)
    token = path.rsplit("/", 1)[1]
    forged = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    assert (await api.post(f"/u/{forged}")).status_code == 404
    # An open-pixel token of the same message is not an unsubscribe token (purposes are signed).
    html = message_from_bytes(msg.raw, policy=policy.default).get_body(("html",))
    assert html is not None
    pixel = re.search(r"/t/o/([A-Za-z0-9_-]{44})", html.get_content())  # type: ignore[attr-defined]
    assert pixel
    assert (await api.post(f"/u/{pixel.group(1)}")).status_code == 404
    assert (await api.get(f"/u/{pixel.group(1)}")).status_code == 404
    assert contact.email
    assert await suppressions_of(db, settings, contact.email) == []
    assert (await api.get(path)).status_code == 200  # the real token still works


# --- reports -----------------------------------------------------------------------------


def _dsn_for(message_id: str, rcpt: str) -> bytes:
    raw = (FIXTURES / "dsn_hard_bounce.eml").read_bytes()
    raw = raw.replace(b"<3dfb628faa4ceadb0122b1ea6797dc8a@clinic.example>", message_id.encode())
    return raw.replace(b"no-such-patient@example.org", rcpt.encode())


def _arf_for(message_id: str, rcpt: str) -> bytes:
    raw = (FIXTURES / "arf_abuse.eml").read_bytes()
    raw = raw.replace(b"<5e5e5e5e0a0a0a0a5e5e5e5e0a0a0a0a@clinic.example>", message_id.encode())
    return raw.replace(b"angry.patient@isp.example.net", rcpt.encode())


async def _sent(db: Database, settings: Settings) -> tuple[Send, str]:
    contact = await new_contact(db, settings)
    await set_grant(db, settings, contact.id, CAT)
    tpl = await new_template(db)
    result = await run_send(activities_for(db, settings), send_input(contact.id, tpl.key))
    assert result.status == "sent" and contact.email
    return await get_send(db, result.send_id or ""), contact.email


async def test_bounce_report_via_api(
    app_client: httpx.AsyncClient,
    api: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    key_for,  # type: ignore[no-untyped-def]
) -> None:
    send, email = await _sent(db, settings)
    integration = {
        "Authorization": f"Bearer {await key_for('integration')}",
        "content-type": "message/rfc822",
    }
    dsn = _dsn_for(send.message_id, email)
    r = await app_client.post("/v1/reports/inbound", content=dsn, headers=integration)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["processed"] and body["kind"] == "bounce" and body["hard"] is True
    assert body["send_id"] == send.id and body["status"] == "5.1.1" and email not in r.text
    assert (await get_send(db, send.id)).delivery == "bounced"
    [sup] = await suppressions_of(db, settings, email)
    assert sup.reason == "hard_bounce" and sup.category == "*"
    [event] = await events_of(db, send.contact_id, "bounce")
    assert event.properties["send_id"] == send.id

    r = await app_client.post("/v1/reports/inbound", content=dsn, headers=integration)
    assert r.json()["duplicate"] is True
    assert len(await events_of(db, send.contact_id, "bounce")) == 1

    marketer = {"Authorization": f"Bearer {await key_for('marketer')}"}
    assert (
        await app_client.post("/v1/reports/inbound", content=dsn, headers=marketer)
    ).status_code == 403


async def test_complaint_report_via_api(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    send, email = await _sent(db, settings)
    r = await api.post(
        "/v1/reports/inbound",
        content=_arf_for(send.message_id, email),
        headers={"content-type": "message/rfc822"},
    )
    assert r.status_code == 200 and r.json()["kind"] == "complaint", r.text
    assert (await get_send(db, send.id)).delivery == "complained"
    [sup] = await suppressions_of(db, settings, email)
    assert sup.reason == "complaint"
    assert len(await events_of(db, send.contact_id, "complaint")) == 1


async def test_reports_that_cannot_act(
    api: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    rfc = {"content-type": "message/rfc822"}
    r = await api.post("/v1/reports/inbound", content=b"", headers=rfc)
    assert r.status_code == 422
    plain = (FIXTURES / "plain_message.eml").read_bytes()
    r = await api.post("/v1/reports/inbound", content=plain, headers=rfc)
    assert r.status_code == 200 and r.json()["processed"] is False
    # A well-formed bounce for a message we never sent suppresses nobody.
    stranger = f"stranger-{tag()}@example.net"
    r = await api.post(
        "/v1/reports/inbound",
        content=_dsn_for(f"<{uuid.uuid4().hex}@example.org>", stranger),
        headers=rfc,
    )
    assert r.json() == {"processed": False, "kind": "bounce", "reason": "unknown_message"}
    assert await suppressions_of(db, settings, stranger) == []
    # A soft bounce (4.2.2 mailbox full, given up) marks the delivery but keeps the address.
    send, email = await _sent(db, settings)
    soft = (
        (FIXTURES / "dsn_soft_bounce.eml")
        .read_bytes()
        .replace(b"<9a1c0e77b6f24d0c8e5d3a2b1c0f9e8d@clinic.example>", send.message_id.encode())
    )
    r = await api.post("/v1/reports/inbound", content=soft, headers=rfc)
    body = r.json()
    assert (body["processed"], body["kind"], body["hard"]) == (True, "bounce", False), body
    assert (await get_send(db, send.id)).delivery == "bounced"
    assert await suppressions_of(db, settings, email) == []
    # A delay is not a bounce.
    delay = (FIXTURES / "dsn_delay.eml").read_bytes()
    r = await api.post("/v1/reports/inbound", content=delay, headers=rfc)
    assert r.json()["processed"] is False


@pytest_asyncio.fixture
async def inbound_sink(
    db: Database, settings: Settings, temporal: Client
) -> AsyncIterator[SmtpSink]:
    s = SmtpSink(
        SinkHandler(db_store(db), inbound=InboundMail(db, settings, temporal)), port=free_port()
    )
    await s.start()
    yield s
    await s.stop()


async def test_bounce_and_mailto_unsubscribe_via_the_sink(
    inbound_sink: SmtpSink, db: Database, settings: Settings
) -> None:
    send, email = await _sent(db, settings)
    await aiosmtplib.send(
        _dsn_for(send.message_id, email),
        sender="MAILER-DAEMON@mx1.example.org",
        recipients=["bounces@example.org"],
        hostname="127.0.0.1",
        port=inbound_sink.port,
    )
    assert (await get_send(db, send.id)).delivery == "bounced"
    assert [s.reason for s in await suppressions_of(db, settings, email)] == ["hard_bounce"]
    async with db.session() as s:
        rows = (await s.exec(select(OutboxMessage))).all()
    assert [
        m for m in rows if "bounces@example.org" in m.rcpt_to
    ] == []  # processed, not stored as outbox mail

    other = await new_contact(db, settings)
    assert other.email
    await aiosmtplib.send(
        b"From: " + other.email.encode() + b"\r\nSubject: unsubscribe\r\n\r\nplease\r\n",
        sender=other.email,
        recipients=["unsubscribe@example.org"],
        hostname="127.0.0.1",
        port=inbound_sink.port,
    )
    [sup] = await suppressions_of(db, settings, other.email)
    assert (sup.category, sup.reason) == ("*", "unsubscribe")
    assert len(await events_of(db, other.id, "unsubscribe")) == 1
