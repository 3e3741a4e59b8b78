"""Shared set-up for the sending tests: contacts, consents, templates, the real activity."""

from __future__ import annotations

import re
import uuid
from email import message_from_bytes, policy
from typing import Any

from sqlmodel import col, select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.compose import DkimKey
from activities.sending import SendActivities
from activities.smtp import SmtpTransport, parse_smtp_url
from core.config import Settings
from core.db import Database
from core.models import Contact, Event, OutboxMessage, Send, Suppression, Template
from services.consents import ConsentIn, set_consent
from services.contacts import ContactIn, upsert_contact
from services.context import ServiceContext
from services.identity import email_hash
from workflows.types import SendInput, SendResult

PUBLIC = "https://journeys.test"


def tag() -> str:
    return uuid.uuid4().hex[:10]


def sending_settings(settings: Settings, **overrides: Any) -> Settings:
    """The session settings with an https base URL (RFC 8058 wants https)."""
    values: dict[str, Any] = {"public_base_url": PUBLIC}
    values.update(overrides)
    return settings.model_copy(update=values)


def activities_for(
    db: Database, settings: Settings, dkim_key: DkimKey | None = None
) -> SendActivities:
    assert settings.smtp_url
    transport = SmtpTransport(parse_smtp_url(settings.smtp_url, settings.smtp_allow_plaintext))
    return SendActivities(db, settings, transport, dkim_key=dkim_key)


async def run_send(
    acts: SendActivities, inp: SendInput, client: Client | None = None
) -> SendResult:
    return await ActivityEnvironment(client=client).run(acts.send_email, inp)


async def new_contact(
    db: Database,
    settings: Settings,
    *,
    email: str | None = "",
    attributes: dict[str, Any] | None = None,
) -> Contact:
    t = tag()
    address = f"pat-{t}@example.com" if email == "" else email
    async with db.session() as s:
        contact, _ = await upsert_contact(
            ServiceContext(s, settings),
            ContactIn(external_id=f"mrn-{t}", email=address, attributes=attributes or {}),
        )
    return contact


async def set_grant(
    db: Database, settings: Settings, contact_id: str, category: str, granted: bool = True
) -> None:
    async with db.session() as s:
        await set_consent(
            ServiceContext(s, settings),
            contact_id,
            category,
            ConsentIn(granted=granted, source="test"),
        )


async def new_template(
    db: Database,
    *,
    html: str = '<p>Hello {{ contact.attributes.get("first", "there") }}</p>'
    '<p>{{ link("book", "https://clinic.example/book") }}</p>',
    subject: str = "Your visit",
    text: str | None = None,
    track_opens: bool = True,
    track_clicks: bool = True,
) -> Template:
    t = Template(
        key=f"tpl-{tag()}",
        subject=subject,
        html=html,
        text=text,
        track_opens=track_opens,
        track_clicks=track_clicks,
    )
    async with db.session() as s:
        s.add(t)
        await s.commit()
    return t


def send_input(
    contact_id: str,
    template_key: str,
    category: str = "care_reminders",
    *,
    run_id: str | None = None,
    step: str = "thanks",
    visit: int = 1,
) -> SendInput:
    return SendInput(
        run_id=run_id or f"run-{tag()}",
        journey_key="post-visit",
        journey_name="Post-visit follow-up",
        version=1,
        contact_id=contact_id,
        step=step,
        visit=visit,
        template_key=template_key,
        category=category,
    )


async def outbox_for(db: Database, message_id: str) -> list[OutboxMessage]:
    async with db.session() as s:
        return list(
            (
                await s.exec(select(OutboxMessage).where(OutboxMessage.message_id == message_id))
            ).all()
        )


async def outbox_to(db: Database, address: str) -> list[OutboxMessage]:
    async with db.session() as s:
        rows = (await s.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
    return [m for m in rows if address in m.rcpt_to]


async def get_send(db: Database, send_id: str) -> Send:
    async with db.session() as s:
        send = await s.get(Send, send_id)
    assert send is not None
    return send


async def suppressions_of(db: Database, settings: Settings, address: str) -> list[Suppression]:
    hashed = email_hash(address, str(settings.secret_values()["api_key_pepper"]))
    async with db.session() as s:
        return list(
            (await s.exec(select(Suppression).where(Suppression.email_hash == hashed))).all()
        )


async def events_of(db: Database, contact_id: str, name: str) -> list[Event]:
    async with db.session() as s:
        return list(
            (
                await s.exec(
                    select(Event).where(Event.contact_id == contact_id, Event.name == name)
                )
            ).all()
        )


def header(raw: bytes, name: str) -> str:
    msg = message_from_bytes(raw, policy=policy.default)
    return str(msg[name] or "")


def unsubscribe_path(raw: bytes) -> str:
    """The /u/{token} path from the message's List-Unsubscribe https URI."""
    value = header(raw, "List-Unsubscribe")
    match = re.search(r"<https?://[^/>]+(/u/[^>]+)>", value)
    assert match, "no https unsubscribe URI"
    return match.group(1)
