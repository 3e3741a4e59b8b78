"""The real send_email activity against the real database and SMTP sink: checks at the
moment of sending, the ledger, recovery after a crash, SMTP failures, DKIM."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import select
from temporalio.exceptions import ApplicationError

from activities.compose import DkimKey
from activities.sending import send_id_for, send_key_of
from core.config import Settings
from core.db import Database
from core.models import Contact, Send, TrackedLink, utcnow
from devstack.smtp_sink import SmtpSink
from mail import dkim
from mail.headers_check import check_marketing_headers
from mail.message import message_id_for
from services.context import ServiceContext
from services.suppressions import suppress
from tests.integration.sending_support import (
    activities_for,
    events_of,
    get_send,
    header,
    new_contact,
    new_template,
    outbox_for,
    run_send,
    send_input,
    set_grant,
    suppressions_of,
)

CAT = "care_reminders"


async def test_granted_send_goes_out_once_with_compliant_headers(
    db: Database, env: Settings
) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env, attributes={"first": "Alice"})
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)

    result = await run_send(acts, inp)
    assert result.status == "sent", result
    assert result.send_id == send_id_for(send_key_of(inp))
    send = await get_send(db, result.send_id)
    assert send.message_id == message_id_for(send_key_of(inp), env.mail_domain)
    assert send.attempts == 1 and send.sent_at is not None and send.email_hash

    [msg] = await outbox_for(db, send.message_id)
    assert msg.rcpt_to == [contact.email]
    assert msg.mail_from == "bounces@example.org"  # reports come back to the inbound address
    assert check_marketing_headers(msg.raw) == []
    assert header(msg.raw, "List-Id").endswith("<post-visit.example.org>")
    body = msg.raw.decode()
    assert "Hello Alice" in body
    assert "https://clinic.example/book" not in body  # the tracked URL replaces it
    assert "Springfield" in body  # physical address footer

    async with db.session() as s:
        links = (await s.exec(select(TrackedLink).where(TrackedLink.send_id == send.id))).all()
    assert sorted(link.kind for link in links) == ["click", "open", "trap", "unsub"]
    assert next(lk for lk in links if lk.kind == "click").url == "https://clinic.example/book"

    again = await run_send(acts, inp)  # a retried activity after success
    assert (again.status, again.send_id) == ("sent", result.send_id)
    assert len(await outbox_for(db, send.message_id)) == 1


async def test_untracked_template_keeps_links_and_has_no_pixel(db: Database, env: Settings) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db, track_opens=False, track_clicks=False)
    result = await run_send(acts, send_input(contact.id, tpl.key))
    send = await get_send(db, result.send_id or "")
    [msg] = await outbox_for(db, send.message_id)
    assert "https://clinic.example/book" in msg.raw.decode()
    async with db.session() as s:
        links = (await s.exec(select(TrackedLink).where(TrackedLink.send_id == send.id))).all()
    assert [link.kind for link in links] == ["unsub"]


@pytest.mark.parametrize(
    "case, reason",
    [
        ("never_granted", "no_consent"),
        ("revoked", "no_consent"),
        ("other_category", "no_consent"),
        ("suppressed_category", "suppressed"),
        ("suppressed_all", "suppressed"),
        ("suppressed_other_category", None),
        ("no_email", "no_email"),
        ("deleted", "contact_deleted"),
    ],
)
async def test_checks_at_the_moment_of_sending(
    db: Database, env: Settings, case: str, reason: str | None
) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env, email=None if case == "no_email" else "")
    if case != "never_granted":
        await set_grant(db, env, contact.id, "billing" if case == "other_category" else CAT)
    if case == "revoked":
        await set_grant(db, env, contact.id, CAT, granted=False)
    if case.startswith("suppressed"):
        category = {"suppressed_category": CAT, "suppressed_all": "*"}.get(case, "billing")
        async with db.session() as s:
            assert contact.email_hash
            await suppress(ServiceContext(s, env), contact.email_hash, category, "manual", "test")
            await s.commit()
    if case == "deleted":
        async with db.session() as s:
            row = await s.get(Contact, contact.id)
            assert row is not None
            row.deleted_at, row.email = utcnow(), None
            s.add(row)
            await s.commit()
    tpl = await new_template(db)

    result = await run_send(acts, send_input(contact.id, tpl.key))

    send = await get_send(db, result.send_id or "")
    if reason is None:
        assert result.status == "sent"
        assert len(await outbox_for(db, send.message_id)) == 1
        return
    assert (result.status, result.detail) == ("blocked", reason)
    assert (send.status, send.detail, send.attempts) == ("blocked", reason, 0)
    assert await outbox_for(db, send.message_id) == []


async def test_backfilled_older_grant_does_not_override_newer_revocation(
    db: Database, env: Settings
) -> None:
    from datetime import timedelta

    from services.consents import ConsentIn, set_consent

    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT, granted=False)
    async with db.session() as s:
        await set_consent(
            ServiceContext(s, env),
            contact.id,
            CAT,
            ConsentIn(granted=True, source="old-form", at=utcnow() - timedelta(days=30)),
        )
    tpl = await new_template(db)
    result = await run_send(acts, send_input(contact.id, tpl.key))
    assert (result.status, result.detail) == ("blocked", "no_consent")


async def test_render_failure_is_recorded_without_values(db: Database, env: Settings) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env, attributes={"first": "Secret-Name-123"})
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(
        db,
        html="<p>{{ contact.attributes.first }}</p>\n"
        "<p>{{ contact.attributes.missing.deeper }}</p>",
    )
    result = await run_send(acts, send_input(contact.id, tpl.key))
    assert result.status == "failed"
    assert result.detail is not None
    assert tpl.key in result.detail and "html part" in result.detail and "line 2" in result.detail
    assert "Secret-Name-123" not in result.detail and (contact.email or "") not in result.detail
    send = await get_send(db, result.send_id or "")
    assert await outbox_for(db, send.message_id) == []


async def test_missing_template_fails_the_send_not_the_run(db: Database, env: Settings) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    result = await run_send(acts, send_input(contact.id, "no-such-template"))
    assert result.status == "failed" and "no-such-template" in (result.detail or "")


async def _interrupted_send(db: Database, env: Settings) -> tuple[Send, str]:
    """A ledger row left `sending` by a worker that died before hearing SMTP's answer."""
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    key = send_key_of(inp)
    send = Send(
        id=send_id_for(key),
        send_key=key,
        run_id=inp.run_id,
        journey_key=inp.journey_key,
        version=1,
        step=inp.step,
        visit=1,
        contact_id=contact.id,
        template_key=tpl.key,
        category=CAT,
        message_id=message_id_for(key, env.mail_domain),
        status="sending",
        attempts=1,
    )
    async with db.session() as s:
        s.add(send)
        await s.commit()
    return send, tpl.key


async def test_recovery_finds_the_message_in_the_sink_outbox(db: Database, env: Settings) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    first = await run_send(acts, inp)
    # Simulate a worker killed after the sink accepted the message but before `sent`.
    async with db.session() as s:
        row = await s.get(Send, first.send_id)
        assert row is not None
        row.status, row.sent_at = "sending", None
        s.add(row)
        await s.commit()
    again = await run_send(acts, inp)
    assert (again.status, again.detail) == ("sent", "recovered")
    send = await get_send(db, first.send_id or "")
    assert len(await outbox_for(db, send.message_id)) == 1
    assert send.attempts == 1


async def test_recovery_resends_when_the_sink_never_got_it(db: Database, env: Settings) -> None:
    send, template_key = await _interrupted_send(db, env)
    inp = send_input(send.contact_id, template_key, run_id=send.run_id, step=send.step)
    result = await run_send(activities_for(db, env), inp)
    assert result.status == "sent"
    assert len(await outbox_for(db, send.message_id)) == 1


async def test_recovery_with_a_real_relay_marks_uncertain_and_does_not_resend(
    db: Database, env: Settings
) -> None:
    relay = env.model_copy(update={"smtp_builtin_sink": False})
    send, template_key = await _interrupted_send(db, relay)
    inp = send_input(send.contact_id, template_key, run_id=send.run_id, step=send.step)
    result = await run_send(activities_for(db, relay), inp)
    assert (result.status, result.detail) == ("uncertain", "interrupted_during_smtp")
    assert await outbox_for(db, send.message_id) == []
    again = await run_send(activities_for(db, relay), inp)
    assert again.status == "uncertain"
    assert await outbox_for(db, send.message_id) == []


@pytest.mark.parametrize("fault", ["451", "421"])
async def test_transient_refusal_retries_and_sends_once(
    db: Database, env: Settings, sink: SmtpSink, fault: str
) -> None:
    acts = activities_for(db, env.model_copy(update={"smtp_builtin_sink": False}))
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    assert contact.email
    sink.handler.faults.by_rcpt[contact.email.lower()] = [fault]
    with pytest.raises(ApplicationError) as info:
        await run_send(acts, inp)
    assert not info.value.non_retryable  # Temporal retries it with backoff
    send = await get_send(db, send_id_for(send_key_of(inp)))
    # The relay answered "no": safe to try again, even with a real relay.
    assert (send.status, send.detail) == ("reserved", f"smtp_{fault}")
    result = await run_send(acts, inp)
    assert result.status == "sent"
    assert len(await outbox_for(db, send.message_id)) == 1


async def test_dropped_connection_during_data(db: Database, env: Settings, sink: SmtpSink) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    assert contact.email
    sink.handler.faults.by_rcpt[contact.email.lower()] = ["drop"]
    with pytest.raises(ApplicationError):
        await run_send(acts, inp)
    send = await get_send(db, send_id_for(send_key_of(inp)))
    assert send.status == "sending"  # the answer was lost: unknown whether it was taken
    result = await run_send(acts, inp)  # with the sink, the outbox settles it
    assert result.status == "sent"
    assert len(await outbox_for(db, send.message_id)) == 1


@pytest.mark.parametrize("code", ["550", "551", "553"])
async def test_bad_mailbox_fails_suppresses_and_emits_bounce(
    db: Database, env: Settings, sink: SmtpSink, code: str
) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    assert contact.email
    sink.handler.faults.by_rcpt[contact.email.lower()] = [code]
    result = await run_send(acts, send_input(contact.id, tpl.key))
    assert result.status == "failed" and (result.detail or "").startswith(f"smtp_{code}")
    [sup] = await suppressions_of(db, env, contact.email)
    assert (sup.category, sup.reason) == ("*", "hard_bounce")
    [event] = await events_of(db, contact.id, "bounce")
    assert event.properties["send_id"] == result.send_id
    assert contact.email not in str(event.properties)
    later = await run_send(acts, send_input(contact.id, tpl.key))
    assert (later.status, later.detail) == ("blocked", "suppressed")


async def test_policy_rejection_fails_without_suppressing(
    db: Database, env: Settings, sink: SmtpSink
) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    assert contact.email
    sink.handler.faults.by_rcpt[contact.email.lower()] = ["554"]
    result = await run_send(acts, send_input(contact.id, tpl.key))
    assert result.status == "failed"
    assert await suppressions_of(db, env, contact.email) == []
    assert await events_of(db, contact.id, "bounce") == []


async def test_overlapping_attempts_send_once(db: Database, env: Settings) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    results = await asyncio.gather(*(run_send(acts, inp) for _ in range(4)), return_exceptions=True)
    sent = [r for r in results if not isinstance(r, BaseException)]
    busy = [r for r in results if isinstance(r, ApplicationError) and r.type == "SendBusy"]
    assert len(sent) + len(busy) == 4 and sent
    assert all(r.status == "sent" for r in sent)
    send = await get_send(db, send_id_for(send_key_of(inp)))
    assert len(await outbox_for(db, send.message_id)) == 1


async def test_dkim_signed_when_configured(db: Database, env: Settings) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    acts = activities_for(db, env, dkim_key=DkimKey("s2026", "example.org", private))
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    result = await run_send(acts, send_input(contact.id, tpl.key))
    send = await get_send(db, result.send_id or "")
    [msg] = await outbox_for(db, send.message_id)
    assert check_marketing_headers(msg.raw, require_dkim=True) == []
    assert dkim.verify(msg.raw, public)
    # The one-click header is under the signature: changing it breaks verification.
    tampered = msg.raw.replace(b"=One-Click", b"=One-Clicks", 1)
    assert tampered != msg.raw and dkim.verify(tampered, public) is False


async def test_the_builtin_sink_is_recognised_by_its_greeting(
    sink: SmtpSink, settings: Settings
) -> None:
    from aiosmtpd.smtp import SMTP

    from activities.smtp import SmtpTransport, parse_smtp_url
    from devstack.ports import free_port

    assert settings.smtp_url and settings.smtp_builtin_sink is None
    assert await SmtpTransport(parse_smtp_url(settings.smtp_url, True)).is_builtin_sink()

    class Accept:
        async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
            return "250 OK"

    port = free_port()
    loop = asyncio.get_running_loop()
    other = await loop.create_server(lambda: SMTP(Accept()), host="127.0.0.1", port=port)
    try:
        relay = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{port}", True))
        assert await relay.is_builtin_sink() is False
    finally:
        other.close()
        await other.wait_closed()
