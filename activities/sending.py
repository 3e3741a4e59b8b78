"""The send_email activity: ledger first, then SMTP, so a send happens once per (run, step, visit)."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from email.utils import formatdate

from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.smtp import PermanentSmtpError, SmtpTransport, TransientSmtpError
from core.config import Settings
from core.db import Database
from core.models import Contact, OutboxMessage, Send, Template, utcnow
from services.report_rollup import on_send_status
from workflows.types import SendInput, SendResult

_env = SandboxedEnvironment(autoescape=True, undefined=StrictUndefined)


def message_id_for(send_key: str, domain: str) -> str:
    return f"<{hashlib.sha256(send_key.encode()).hexdigest()[:32]}@{domain}>"


class SendActivities:
    def __init__(self, db: Database, settings: Settings, transport: SmtpTransport) -> None:
        self.db = db
        self.settings = settings
        self.transport = transport

    @activity.defn(name="send_email")
    async def send_email(self, inp: SendInput) -> SendResult:
        send_key = f"{inp.run_id}/{inp.step}/{inp.visit}"
        message_id = message_id_for(send_key, self.settings.mail_domain)
        async with self.db.session() as s:
            await s.exec(  # type: ignore[call-overload]
                insert(Send)
                .values(
                    id=f"s_{hashlib.sha256(send_key.encode()).hexdigest()[:20]}",
                    send_key=send_key,
                    run_id=inp.run_id,
                    journey_key=inp.journey_key,
                    version=inp.version,
                    step=inp.step,
                    visit=inp.visit,
                    contact_id=inp.contact_id,
                    template_key=inp.template_key,
                    category=inp.category,
                    message_id=message_id,
                    status="reserved",
                    attempts=0,
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["send_key"])
            )
            await s.commit()
            send = (
                await s.exec(select(Send).where(Send.send_key == send_key).with_for_update())
            ).one()
            if send.status in ("sent", "blocked", "failed", "uncertain"):
                return SendResult(send.status, send.id, send.detail)
            if send.status == "sending" and await self._already_delivered(s, message_id):
                send.status, send.sent_at = "sent", utcnow()
                s.add(send)
                await s.flush()
                await on_send_status(s, send.id)
                await s.commit()
                return SendResult("sent", send.id)
            contact = await s.get(Contact, inp.contact_id)
            template = await s.get(Template, inp.template_key)
            if contact is None or contact.deleted_at is not None or not contact.email:
                return await self._finish(s, send, "blocked", "no_contact")
            if template is None:
                raise ApplicationError("template missing", non_retryable=True)
            ctx = {
                "contact": {
                    "email": contact.email,
                    "external_id": contact.external_id,
                    "timezone": contact.timezone,
                    "attributes": contact.attributes,
                },
                "journey": {"key": inp.journey_key, "name": inp.journey_name},
                "link": lambda name, url: url,
            }
            msg = EmailMessage()
            msg["From"] = self.settings.mail_from
            msg["To"] = contact.email
            msg["Subject"] = _env.from_string(template.subject).render(ctx)
            msg["Date"] = formatdate(localtime=False)
            msg["Message-ID"] = message_id
            msg.set_content(_env.from_string(template.text or "").render(ctx) or " ")
            msg.add_alternative(_env.from_string(template.html).render(ctx), subtype="html")
            send.status = "sending"
            send.attempts += 1
            s.add(send)
            await s.commit()
            try:
                await self.transport.send(
                    self.settings.mail_from, contact.email, msg.as_bytes()
                )
            except TransientSmtpError as exc:
                raise ApplicationError(f"transient SMTP failure: {exc}") from None
            except PermanentSmtpError as exc:
                return await self._finish(s, send, "failed", f"smtp_{exc.code}")
            return await self._finish(s, send, "sent", None)

    async def _already_delivered(self, s: object, message_id: str) -> bool:
        """A previous attempt died after SMTP accepted the message but before we noted it.

        With the built-in sink the outbox is authoritative; a real relay cannot be asked,
        so the send is marked `uncertain` rather than risk a duplicate.
        """
        from sqlmodel.ext.asyncio.session import AsyncSession

        assert isinstance(s, AsyncSession)
        found = (
            await s.exec(select(OutboxMessage.id).where(OutboxMessage.message_id == message_id))
        ).first()
        return found is not None

    async def _finish(self, s: object, send: Send, status: str, detail: str | None) -> SendResult:
        from sqlmodel.ext.asyncio.session import AsyncSession

        assert isinstance(s, AsyncSession)
        send.status = status
        send.detail = detail
        if status == "sent":
            send.sent_at = utcnow()
        s.add(send)
        await s.flush()
        await on_send_status(s, send.id)  # report counters change with the status, atomically
        await s.commit()
        return SendResult(status, send.id, detail)
