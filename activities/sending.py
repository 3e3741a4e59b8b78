"""The send_email activity: a send happens at most once per (run, step, visit), and
exactly once unless the relay leaves us unable to know.

The ledger row (`send`, unique `send_key` = "{run_id}/{step}/{visit}") goes through

    reserved --checks--> blocked | failed
    reserved --render, links saved--> sending --SMTP 250--> sent
                                      sending --5xx--> failed
                                      sending --4xx before/after DATA--> reserved (retry)
                                      sending --cancelled before DATA--> reserved

The pooled SMTP connection is taken before `sending` is committed, so a row is `sending`
only while a message may actually be on its way to the relay.

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
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncClientCursor
from psycopg.pq import TransactionStatus
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.compose import DkimKey, compose, load_dkim
from activities.smtp import (
    PermanentSmtpError,
    SendProgress,
    SmtpTransport,
    TransientSmtpError,
)
from activities.sql_batch import first, run_transaction
from core.config import Settings
from core.db import Database
from core.models import Contact, Send, Template, utcnow
from mail.message import message_id_for
from mail.render import TemplateRenderError
from services.context import ServiceContext
from services.identity import email_hash
from services.mail_outcomes import record_outcome
from services.report_rollup import SEND_ROLLUP_ONE
from services.suppressions import find_suppression
from services.tracking_links import token_signer
from workflows.types import SendInput, SendResult

log = logging.getLogger("journeys.sending")

FINAL = frozenset({"sent", "blocked", "failed", "uncertain"})
HEARTBEAT_EVERY = 1.0  # seconds; the workflow's heartbeat timeout is a few times this


def send_key_of(inp: SendInput) -> str:
    return f"{inp.run_id}/{inp.step}/{inp.visit}"


def send_id_for(send_key: str) -> str:
    """Deterministic, so every attempt (and the ledger insert race) agrees on it."""
    return f"s_{hashlib.sha256(send_key.encode()).hexdigest()[:20]}"


# The ledger row in state `reserved` unless it exists: one statement shared by the send's
# own reservation (_RESERVE_AND_CHECK) and the frequency-cap check's (insert_reservation).
RESERVE_SQL = """\
INSERT INTO send (id, send_key, run_id, journey_key, version, step, visit, contact_id,
                  template_key, category, message_id, status, attempts, created_at)
VALUES (%(id)s, %(send_key)s, %(run_id)s, %(journey_key)s, %(version)s, %(step)s,
        %(visit)s, %(contact_id)s, %(template_key)s, %(category)s, %(message_id)s,
        'reserved', 0, %(created_at)s)
ON CONFLICT (send_key) DO NOTHING
RETURNING *"""


def reservation_params(inp: SendInput, mail_domain: str) -> dict[str, Any]:
    send_key = send_key_of(inp)
    return {
        "id": send_id_for(send_key),
        "send_key": send_key,
        "run_id": inp.run_id,
        "journey_key": inp.journey_key,
        "version": inp.version,
        "step": inp.step,
        "visit": inp.visit,
        "contact_id": inp.contact_id,
        "template_key": inp.template_key,
        "category": inp.category,
        "message_id": message_id_for(send_key, mail_domain),
        "created_at": utcnow(),
    }


async def insert_reservation(s: AsyncSession, inp: SendInput, mail_domain: str) -> Send | None:
    """The ledger row in state `reserved`, unless it exists (then None; caller commits)."""
    conn = await s.connection()
    result = await conn.exec_driver_sql(RESERVE_SQL, reservation_params(inp, mail_domain))
    row = result.mappings().first()
    return Send(**{k: row[k] for k in _SEND_COLUMNS}) if row is not None else None


def _advisory_key(namespace: bytes, key: str) -> int:
    digest = hashlib.sha256(namespace + b"\0" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_key(send_key: str) -> int:
    return _advisory_key(b"journeys/send-lock", send_key)


def cap_lock_key(contact_id: str) -> int:
    """The advisory lock serialising a contact's frequency-cap decisions and new sends."""
    return _advisory_key(b"journeys/cap-lock", contact_id)


# The hot path's statements, written once as driver-level SQL (psycopg's %(name)s
# parameters): no ORM statement building per send, one statement where the ORM path took
# several, and each transaction sent as one message (_Held.batch, activities/sql_batch.py).

# The contact's cap lock, as a statement of its own before _RESERVE_AND_CHECK (same
# batched transaction): under READ COMMITTED each statement takes its snapshot when it
# starts, so the checks and the reservation below see whatever was committed while this
# one waited (an erasure, an unsubscribe, a revoked consent, the cap check's reservation).
_CAP_LOCK = "SELECT pg_advisory_xact_lock(%(cap_key)s)"

# Reserve the ledger row and read, in the same statement, the row (new or earlier), the
# contact, the template and the SPEC section 7 checks: a suppression of the address for
# the category or globally, and whether the newest consent is a grant.
_RESERVE_AND_CHECK = f"""\
WITH ins AS (
{RESERVE_SQL}
), snd AS (
  SELECT * FROM ins
  UNION ALL
  SELECT * FROM send WHERE send_key = %(send_key)s AND NOT EXISTS (SELECT 1 FROM ins)
), chk AS (
  SELECT c.id AS c_id, c.external_id AS c_external_id, c.email AS c_email,
         c.email_hash AS c_email_hash, c.timezone AS c_timezone,
         c.attributes AS c_attributes, c.deleted_at AS c_deleted_at,
         t.key AS t_key, t.subject AS t_subject, t.html AS t_html, t.text AS t_text,
         t.category AS t_category, t.track_opens AS t_track_opens,
         t.track_clicks AS t_track_clicks,
         coalesce(nullif(%(category)s, ''), t.category) AS eff_category
  FROM (SELECT 1) AS one
  LEFT JOIN contact c ON c.id = %(contact_id)s
  LEFT JOIN template t ON t.key = %(template_key)s
)
SELECT snd.*, chk.*,
  EXISTS (
    SELECT 1 FROM suppression sp
    WHERE sp.email_hash = chk.c_email_hash
      AND (chk.eff_category IS NULL OR sp.category IN ('*', chk.eff_category))
  ) AS suppressed,
  coalesce((
    SELECT cn.granted FROM consent cn
    WHERE cn.contact_id = %(contact_id)s AND cn.category = chk.eff_category
    ORDER BY cn.at DESC, cn.id DESC LIMIT 1
  ), false) AS granted
FROM snd CROSS JOIN chk
"""

# `sending`, the attempt counted, and the message's tracked links, in one statement (the
# data-modifying CTE runs whether or not the INSERT reads it).
_MARK_SENDING = """\
WITH upd AS (
  UPDATE send SET status = 'sending', attempts = attempts + 1, email_hash = %(email_hash)s,
                  detail = NULL, category = %(category)s
  WHERE id = %(send_id)s RETURNING attempts
)
INSERT INTO tracked_link (id, send_id, kind, name, url)
SELECT l.id, %(send_id)s, l.kind, l.name, l.url
FROM unnest(CAST(%(ids)s AS text[]), CAST(%(kinds)s AS text[]), CAST(%(names)s AS text[]),
            CAST(%(urls)s AS text[])) AS l(id, kind, name, url)
ON CONFLICT (id) DO NOTHING
"""

# A final status, with the send's report state row made to exist and locked in the same
# statement (ON CONFLICT DO UPDATE locks an existing row, waiting for a rollup in flight);
# the rollup's next statement then reads a snapshot taken after the lock, as
# services.report_rollup.rollup_sends does with its two lock statements.
_SET_STATUS_AND_LOCK = """\
WITH upd AS (
  UPDATE send SET status = %(status)s, detail = %(detail)s, category = %(category)s,
                  sent_at = coalesce(%(sent_at)s, sent_at)
  WHERE id = %(send_id)s RETURNING id
)
INSERT INTO report_send_state (send_id) SELECT id FROM upd
ON CONFLICT (send_id) DO UPDATE SET send_id = EXCLUDED.send_id
"""

_RESET_RESERVED = "UPDATE send SET status = 'reserved', detail = %(detail)s WHERE id = %(send_id)s"
# After a cancellation before DATA: nothing reached the relay, so the send is not in flight.
_UNMARK_SENDING = (
    "UPDATE send SET status = 'reserved', detail = 'cancelled_before_data'"
    " WHERE id = %s AND status = 'sending' RETURNING id"
)
_IN_OUTBOX = "SELECT id FROM outbox_message WHERE message_id = %(message_id)s LIMIT 1"
_UNLOCK = "SELECT pg_advisory_unlock(%(key)s)"

_SEND_COLUMNS = tuple(Send.model_fields)


@dataclass
class _Held:
    """One attempt's connection, holding the send's advisory lock: the ORM session for the
    rare paths (a bounce's suppression and event), the driver connection for the hot path."""

    session: AsyncSession
    raw: Any  # psycopg AsyncConnection under the session's connection
    lock_key: int
    released: bool = False

    async def batch(
        self, statements: Sequence[tuple[str, Mapping[str, Any]]], *, unlock: bool = False
    ) -> list[dict[str, Any] | None]:
        """BEGIN, the statements, COMMIT (then, with unlock, the send's lock released after
        the commit) in one round trip (activities/sql_batch.py). PostgreSQL runs them one
        after another, each statement with its own snapshot, as if sent one by one; a
        failing statement rolls the transaction back (and the lock stays held, released
        by _locked). Returns each statement's first row (None when it returns none)."""
        after = [(_UNLOCK, {"key": self.lock_key})] if unlock else []
        results = await run_transaction(self.raw, statements, after_commit=after)
        if unlock:
            self.released = True
        return [first(rows) for rows in results[: len(statements)]]


@asynccontextmanager
async def _heartbeating() -> AsyncIterator[None]:
    """Heartbeat while the attempt runs, so a dead worker is noticed in seconds rather
    than after the start-to-close timeout. The heartbeat timeout runs from the start, so
    the first beat can wait: a send done within a second costs no heartbeat call."""

    async def pulse() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_EVERY)
            activity.heartbeat()

    if activity.info().is_local:
        yield  # a local activity (runs from patch local-step-activities on): no task to keep alive
        return
    task = asyncio.create_task(pulse())
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
        self.signer = token_signer(settings)  # the tracking keys, read once like the DKIM key

    @activity.defn(name="send_email")
    async def send_email(self, inp: SendInput) -> SendResult:
        send_key = send_key_of(inp)
        async with _heartbeating(), self._locked(send_key) as held:
            ctx = ServiceContext(held.session, self.settings, _temporal_client())
            return await self._attempt(ctx, held, inp, send_key)

    @asynccontextmanager
    async def _locked(self, send_key: str) -> AsyncIterator[_Held]:
        """One connection for the whole attempt, holding the send's advisory lock. The
        lock belongs to the connection, not the transaction: it outlives the attempt's
        commits. It is taken with one autocommit statement (no BEGIN/COMMIT around it) and
        released with the attempt's last commit, or here when the attempt ended otherwise."""
        key = _lock_key(send_key)
        async with self.db.engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            held = _Held(AsyncSession(bind=conn, expire_on_commit=False), raw, key)
            got = False
            try:
                got = await _autocommit_scalar(raw, "SELECT pg_try_advisory_lock(%s)", key)
                if not got:
                    # Another attempt of this send still runs (one that timed out but lives on).
                    raise ApplicationError(
                        "another attempt of this send is still running", type="SendBusy"
                    )
                yield held
            finally:
                try:
                    await held.session.close()  # rolls back whatever the attempt left open
                    if raw.info.transaction_status != TransactionStatus.IDLE:
                        await raw.rollback()  # a batched transaction that failed
                    if got and not held.released:
                        await _autocommit_scalar(raw, "SELECT pg_advisory_unlock(%s)", key)
                except Exception:
                    # Never hand a connection that may still hold the lock back to the pool.
                    await conn.invalidate()

    async def _attempt(
        self, ctx: ServiceContext, held: _Held, inp: SendInput, send_key: str
    ) -> SendResult:
        row = await self._reserve_and_check(held, inp, send_key)
        send = Send(**{k: row[k] for k in _SEND_COLUMNS})
        if send.status in FINAL:
            return SendResult(send.status, send.id, send.detail)
        if send.status == "sending":
            settled = await self._settle_interrupted(held, send)
            if settled is not None:
                return settled

        if row["c_id"] is None or row["c_deleted_at"] is not None:
            return await self._finish(held, send, "blocked", "contact_deleted")
        if not row["c_email"]:
            return await self._finish(held, send, "blocked", "no_email")
        if row["t_key"] is None:
            return await self._finish(
                held, send, "failed", f"template {inp.template_key!r} not found"
            )
        contact = Contact(
            id=row["c_id"],
            external_id=row["c_external_id"],
            email=row["c_email"],
            email_hash=row["c_email_hash"],
            timezone=row["c_timezone"],
            attributes=row["c_attributes"] or {},
        )
        template = Template(
            key=row["t_key"],
            subject=row["t_subject"],
            html=row["t_html"],
            text=row["t_text"],
            category=row["t_category"],
            track_opens=row["t_track_opens"],
            track_clicks=row["t_track_clicks"],
        )
        assert contact.email is not None
        send.category = row["eff_category"]
        # The checks of SPEC section 7, read under the send's lock with the reservation.
        if contact.email_hash:
            hashed, suppressed = contact.email_hash, bool(row["suppressed"])
        else:  # a contact stored without its hash: look the address up the long way
            hashed = email_hash(contact.email, ctx.pepper)
            suppressed = await find_suppression(ctx, hashed, send.category) is not None
            await ctx.session.commit()  # ends the read, before the batched transactions
        if suppressed:
            return await self._finish(held, send, "blocked", "suppressed")
        if not (send.category and row["granted"]):
            return await self._finish(held, send, "blocked", "no_consent")

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
                signer=self.signer,
            )
        except TemplateRenderError as exc:
            return await self._finish(held, send, "failed", str(exc))
        except ValueError as exc:
            # build_message names the offending field, never its value.
            return await self._finish(held, send, "failed", f"message: {exc}")

        links = composed.links.rows
        # The connection first: waiting for a pool slot happens while the row is still
        # `reserved`, so a cancellation or a busy pool leaves nothing to settle.
        try:
            conn = await self.transport.acquire()
        except TransientSmtpError as exc:
            raise ApplicationError(
                f"transient SMTP failure ({exc.detail})", type="SmtpTransient"
            ) from None
        progress = SendProgress()
        try:
            await held.batch(
                [
                    (
                        _MARK_SENDING,
                        {
                            "send_id": send.id,
                            "email_hash": hashed,
                            "category": send.category,
                            "ids": [r.id for r in links],
                            "kinds": [r.kind for r in links],
                            "names": [r.name for r in links],
                            "urls": [r.url for r in links],
                        },
                    )
                ]
            )
        except BaseException as exc:
            await self.transport.release(conn)
            if isinstance(exc, asyncio.CancelledError):
                await self._unmark_sending(held, send.id)  # it may have committed
            raise
        send.status, send.detail = "sending", None
        send.attempts, send.email_hash = send.attempts + 1, hashed

        try:
            await self.transport.send(
                self.settings.envelope_sender,
                contact.email,
                composed.raw,
                conn=conn,
                progress=progress,
            )
        except asyncio.CancelledError:
            if not progress.data_started:
                await self._unmark_sending(held, send.id)
            raise  # during DATA: stays `sending`, settled by the next attempt
        except TransientSmtpError as exc:
            if not exc.delivered_unknown:
                # The relay certainly did not take it: the next attempt starts afresh.
                await held.batch(
                    [(_RESET_RESERVED, {"detail": exc.detail, "send_id": send.id})]
                )
            # Otherwise stay `sending`: the next attempt settles it (see module doc).
            raise ApplicationError(
                f"transient SMTP failure ({exc.detail})", type="SmtpTransient"
            ) from None
        except PermanentSmtpError as exc:
            return await self._permanent_failure(ctx, send, hashed, exc)
        return await self._finish(held, send, "sent", None)

    async def _reserve_and_check(
        self, held: _Held, inp: SendInput, send_key: str
    ) -> dict[str, Any]:
        """The ledger row (the frequency-cap check, activities.lookups.send_cap, may have
        reserved it already) with what the checks need; one statement in its own
        transaction. A new row is committed under the contact's cap lock, so the cap
        decisions of the contact's other runs (capped journeys) count this send from now on."""
        params = reservation_params(inp, self.settings.mail_domain)
        _, row = await held.batch(
            [
                (_CAP_LOCK, {"cap_key": cap_lock_key(inp.contact_id)}),
                (_RESERVE_AND_CHECK, params),
            ]
        )
        if row is None:  # the row vanished between the INSERT's conflict and the read
            raise ApplicationError("send ledger row not found; retrying", type="SendLedgerRace")
        return row

    async def _unmark_sending(self, held: _Held, send_id: str) -> None:
        """Back to `reserved` after a cancellation before DATA (worker shutdown, the
        attempt's time running out), so the next attempt sends rather than settles: a row
        is `sending` only while a message may be on its way to the relay. Shielded from
        the cancellation; if the connection is unusable the row stays `sending` and the
        next attempt settles it as before."""

        async def reset() -> None:
            raw = held.raw
            if raw.info.transaction_status != TransactionStatus.IDLE:
                await raw.rollback()
            await _autocommit_scalar(raw, _UNMARK_SENDING, send_id)

        try:
            await asyncio.shield(reset())
        except Exception as exc:  # type only: messages of database errors can quote rows
            log.warning("send %s left sending after cancellation (%s)", send_id, type(exc).__name__)

    async def _settle_interrupted(self, held: _Held, send: Send) -> SendResult | None:
        """A previous attempt died after `sending` was committed (module doc)."""
        [in_outbox] = await held.batch([(_IN_OUTBOX, {"message_id": send.message_id})])
        if in_outbox is not None:
            return await self._finish(held, send, "sent", "recovered")
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
        return await self._finish(held, send, "uncertain", "interrupted_during_smtp")

    def _status_statements(
        self, send: Send, status: str, detail: str | None
    ) -> list[tuple[str, Mapping[str, Any]]]:
        """A final status and the report counters that move with it: two statements (the
        counters' lock rides on the status update), for the caller's transaction."""
        send.status = status
        send.detail = detail
        if status == "sent":
            send.sent_at = utcnow()
        return [
            (
                _SET_STATUS_AND_LOCK,
                {
                    "send_id": send.id,
                    "status": status,
                    "detail": detail,
                    "category": send.category,
                    "sent_at": send.sent_at if status == "sent" else None,
                },
            ),
            (SEND_ROLLUP_ONE, {"send_id": send.id}),
        ]

    async def _permanent_failure(
        self, ctx: ServiceContext, send: Send, hashed: str, exc: PermanentSmtpError
    ) -> SendResult:
        detail = f"smtp_{exc.code}" + (f"_{exc.enhanced}" if exc.enhanced else "")
        # In the session's transaction: the bounce's suppression and event commit with it.
        conn = await ctx.session.connection()
        for sql, params in self._status_statements(send, "failed", detail):
            await conn.exec_driver_sql(sql, dict(params))
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

    async def _finish(self, held: _Held, send: Send, status: str, detail: str | None) -> SendResult:
        """The status with its report counters, committed, and the send's lock released,
        in one round trip."""
        await held.batch(self._status_statements(send, status, detail), unlock=True)
        return SendResult(status, send.id, detail)


async def _autocommit_scalar(conn: Any, sql: str, *params: Any) -> Any:
    """One statement outside any transaction on a psycopg connection that has none open
    (between the attempt's commits): one round trip and one message (bound client-side),
    no BEGIN/COMMIT."""
    await conn.set_autocommit(True)
    try:
        async with AsyncClientCursor(conn) as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
    finally:
        await conn.set_autocommit(False)
    return row[0] if row else None
