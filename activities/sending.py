"""The send_email activity: a send happens at most once per (run, step, visit), and
exactly once unless the relay leaves us unable to know.

The ledger row (`send`, unique `send_key` = "{run_id}/{step}/{visit}") goes through

    reserved --checks--> blocked | failed
    reserved --render, links saved--> sending --SMTP 250--> sent
                                      sending --5xx--> failed
                                      sending --4xx before/after DATA--> reserved (retry)

Every attempt holds a PostgreSQL advisory lock on the send key for its whole duration
(on the connection it works through), so two attempts of the same send never overlap,
and a worker killed mid-send releases the lock with its connection. An attempt that
finds `sending` knows a predecessor died between committing `sending` and recording
the SMTP answer; it settles the send without mailing twice:

- built-in sink (SMTP_BUILTIN_SINK): the sink stores a message before it answers 250,
  so the outbox is the truth: there -> `sent`; absent -> the relay never accepted it,
  send again.
- real relay: nobody can be asked whether the message was accepted, and mailing a
  patient twice is worse than not knowing, so the send becomes `uncertain`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.compose import DkimKey, compose, load_dkim
from activities.smtp import PermanentSmtpError, SmtpTransport, TransientSmtpError
from core.config import Settings
from core.db import Database
from core.models import Contact, OutboxMessage, Send, Template, utcnow
from mail.message import message_id_for
from mail.render import TemplateRenderError
from services.consents import has_valid_grant
from services.context import ServiceContext
from services.identity import email_hash
from services.mail_outcomes import record_outcome
from services.report_rollup import on_send_status
from services.suppressions import find_suppression
from services.tracking_links import save_links
from workflows.types import SendInput, SendResult

log = logging.getLogger("journeys.sending")

FINAL = frozenset({"sent", "blocked", "failed", "uncertain"})
HEARTBEAT_EVERY = 1.0  # seconds; the workflow's heartbeat timeout is a few times this


def send_key_of(inp: SendInput) -> str:
    return f"{inp.run_id}/{inp.step}/{inp.visit}"


def send_id_for(send_key: str) -> str:
    """Deterministic, so every attempt (and the ledger insert race) agrees on it."""
    return f"s_{hashlib.sha256(send_key.encode()).hexdigest()[:20]}"


async def insert_reservation(s: AsyncSession, inp: SendInput, mail_domain: str) -> Send | None:
    """The ledger row in state `reserved`, unless it exists (then None; caller commits)."""
    send_key = send_key_of(inp)
    stmt = (
        insert(Send)
        .values(
            id=send_id_for(send_key),
            send_key=send_key,
            run_id=inp.run_id,
            journey_key=inp.journey_key,
            version=inp.version,
            step=inp.step,
            visit=inp.visit,
            contact_id=inp.contact_id,
            template_key=inp.template_key,
            category=inp.category,
            message_id=message_id_for(send_key, mail_domain),
            status="reserved",
            attempts=0,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["send_key"])
        .returning(Send)
    )
    return (await s.scalars(stmt)).first()


def _advisory_key(namespace: bytes, key: str) -> int:
    digest = hashlib.sha256(namespace + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_key(send_key: str) -> int:
    return _advisory_key(b"journeys/send-lock", send_key)


def cap_lock_key(contact_id: str) -> int:
    """The advisory lock serialising a contact's frequency-cap decisions and new sends."""
    return _advisory_key(b"journeys/cap-lock", contact_id)


@asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the attempt runs, so a dead worker is noticed in seconds rather
    than after the start-to-close timeout. The heartbeat timeout runs from the start, so
    the first beat can wait: a send done within a second costs no heartbeat call."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            activity.heartbeat()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def _temporal_client() -> Client | None:
    try:
        return activity.client()
    except RuntimeError:
        return None  # e.g. run outside a worker (ActivityEnvironment)


class SendActivities:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        transport: SmtpTransport,
        dkim_key: DkimKey | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.transport = transport
        self.dkim_key = dkim_key if dkim_key is not None else load_dkim(settings)

    @activity.defn(name="send_email")
    async def send_email(self, inp: SendInput) -> SendResult:
        send_key = send_key_of(inp)
        async with _heartbeating(), self._locked(send_key) as session:
            ctx = ServiceContext(session, self.settings, _temporal_client())
            return await self._attempt(ctx, inp, send_key)

    @asynccontextmanager
    async def _locked(self, send_key: str) -> AsyncIterator[AsyncSession]:
        """A session on one connection for the whole attempt, holding the send's advisory
        lock. The lock belongs to the connection, not the transaction: it is taken as the
        first statement of the attempt's first transaction and outlives its commits."""
        key = _lock_key(send_key)
        async with self.db.engine.connect() as conn:
            session = AsyncSession(bind=conn, expire_on_commit=False)
            got = False
            try:
                lock = text("SELECT pg_try_advisory_lock(:k)").bindparams(k=key)
                got = bool((await session.exec(lock)).scalar())  # type: ignore[call-overload]
                if not got:
                    # Another attempt of this send still runs (one that timed out but lives on).
                    raise ApplicationError(
                        "another attempt of this send is still running", type="SendBusy"
                    )
                yield session
            finally:
                try:
                    await session.close()  # rolls back whatever the attempt left open
                    if got:
                        await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        await conn.commit()
                except Exception:
                    # Never hand a connection that may still hold the lock back to the pool.
                    await conn.invalidate()

    async def _attempt(self, ctx: ServiceContext, inp: SendInput, send_key: str) -> SendResult:
        s = ctx.session
        send = await self._reserve(s, inp, send_key)
        if send.status in FINAL:
            return SendResult(send.status, send.id, send.detail)
        if send.status == "sending":
            settled = await self._settle_interrupted(s, send)
            if settled is not None:
                return settled

        # Contact and template in one round trip; apart when one is missing (to say which).
        both = (
            await s.exec(
                select(Contact, Template).where(
                    Contact.id == inp.contact_id, Template.key == inp.template_key
                )
            )
        ).first()
        contact, template = both if both else (await s.get(Contact, inp.contact_id), None)
        if contact is None or contact.deleted_at is not None:
            return await self._finish(s, send, "blocked", "contact_deleted")
        if not contact.email:
            return await self._finish(s, send, "blocked", "no_email")
        template = template or await s.get(Template, inp.template_key)
        if template is None:
            return await self._finish(s, send, "failed", f"template {inp.template_key!r} not found")
        send.category = inp.category or template.category
        hashed = contact.email_hash or email_hash(contact.email, ctx.pepper)
        # The checks of SPEC section 7, at the moment of sending, under the send's lock.
        if await find_suppression(ctx, hashed, send.category) is not None:
            return await self._finish(s, send, "blocked", "suppressed")
        if not await has_valid_grant(ctx, contact.id, send.category):
            return await self._finish(s, send, "blocked", "no_consent")

        now = utcnow()
        try:
            composed = compose(
                self.settings,
                send=send,
                contact=contact,
                template=template,
                journey_name=inp.journey_name,
                now=now,
                dkim_key=self.dkim_key,
            )
        except TemplateRenderError as exc:
            return await self._finish(s, send, "failed", str(exc))
        except ValueError as exc:
            # build_message names the offending field, never its value.
            return await self._finish(s, send, "failed", f"message: {exc}")

        send.status = "sending"
        send.attempts += 1
        send.email_hash = hashed
        send.detail = None
        s.add(send)
        await save_links(s, composed.links)
        await s.commit()

        try:
            await self.transport.send(self.settings.envelope_sender, contact.email, composed.raw)
        except TransientSmtpError as exc:
            if not exc.delivered_unknown:
                # The relay certainly did not take it: the next attempt starts afresh.
                send.status, send.detail = "reserved", exc.detail
                s.add(send)
                await s.commit()
            # Otherwise stay `sending`: the next attempt settles it (see module doc).
            raise ApplicationError(
                f"transient SMTP failure ({exc.detail})", type="SmtpTransient"
            ) from None
        except PermanentSmtpError as exc:
            return await self._permanent_failure(ctx, send, hashed, exc)
        return await self._finish(s, send, "sent", None)

    async def _reserve(self, s: AsyncSession, inp: SendInput, send_key: str) -> Send:
        # The frequency-cap check (activities.lookups.send_cap) may have reserved it already.
        # A new row is committed under the contact's cap lock, so the cap decisions of the
        # contact's other runs (capped journeys) count this send from now on.
        lock = text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=cap_lock_key(inp.contact_id))
        await s.exec(lock)  # type: ignore[call-overload]
        send = await insert_reservation(s, inp, self.settings.mail_domain)
        await s.commit()
        if send is None:  # a later attempt: the row is there
            send = (await s.exec(select(Send).where(Send.send_key == send_key))).one()
        return send

    async def _settle_interrupted(self, s: AsyncSession, send: Send) -> SendResult | None:
        """A previous attempt died after `sending` was committed (module doc)."""
        in_outbox = (
            await s.exec(
                select(OutboxMessage.id).where(OutboxMessage.message_id == send.message_id)
            )
        ).first()
        if in_outbox is not None:
            return await self._finish(s, send, "sent", "recovered")
        builtin = self.settings.smtp_builtin_sink
        if builtin is None:
            try:
                builtin = await self.transport.is_builtin_sink()
            except TransientSmtpError as exc:
                raise ApplicationError(
                    f"cannot reach SMTP to settle an interrupted send ({exc.detail})",
                    type="SmtpTransient",
                ) from None
        if builtin:
            return None  # the sink never stored it: it did not accept it, send again
        log.warning("send %s interrupted during SMTP; marked uncertain, not resent", send.id)
        return await self._finish(s, send, "uncertain", "interrupted_during_smtp")

    async def _permanent_failure(
        self, ctx: ServiceContext, send: Send, hashed: str, exc: PermanentSmtpError
    ) -> SendResult:
        send.status = "failed"
        send.detail = f"smtp_{exc.code}" + (f"_{exc.enhanced}" if exc.enhanced else "")
        ctx.session.add(send)
        await ctx.session.flush()
        await on_send_status(ctx.session, send.id)
        if not exc.bad_mailbox:
            await ctx.session.commit()
            return SendResult("failed", send.id, send.detail)
        # Suppression, failed status and the bounce event commit together.
        await record_outcome(
            ctx,
            contact_id=send.contact_id,
            event="bounce",
            properties={
                "send_id": send.id,
                "journey": send.journey_key,
                "step": send.step,
                "hard": True,
                "status": exc.enhanced or f"{exc.code}",
                "source": "smtp",
            },
            idempotency_key=f"report/bounce/{send.id}",
            suppress_hash=hashed,
            suppress_reason="hard_bounce",
            suppress_source=f"smtp:{send.id}",
        )
        return SendResult("failed", send.id, send.detail)

    async def _finish(
        self, s: AsyncSession, send: Send, status: str, detail: str | None
    ) -> SendResult:
        send.status = status
        send.detail = detail
        if status == "sent":
            send.sent_at = utcnow()
        s.add(send)
        await s.flush()
        await on_send_status(s, send.id)  # report counters move with the status, atomically
        await s.commit()
        return SendResult(status, send.id, detail)
