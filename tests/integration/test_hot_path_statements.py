"""Statements of a run's hot path: each statement, BEGIN and COMMIT is work for PostgreSQL
and the worker (and, unless pipelined, a wait), so the hot path is held to a budget."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg.pq import Trace
from sqlalchemy import event, text
from sqlmodel import select
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment

from activities.runs import RunActivities
from activities.sql_batch import STATEMENT_SEPARATOR
from core.config import Settings
from core.db import Database
from core.models import Send, StepLog, utcnow
from services.context import ServiceContext
from services.identity import email_hash
from services.suppressions import suppress
from tests.integration.sending_support import (
    activities_for,
    new_contact,
    new_template,
    run_send,
    send_input,
    set_grant,
    tag,
)
from workflows.types import RecordInput, StepRecord

CAT = "care_reminders"


@contextmanager
def statements_sent(db: Database, messages: list[str] | None = None) -> Iterator[list[str]]:
    """The statements the engine's connections send PostgreSQL, read from the libpq
    protocol trace (so BEGIN, COMMIT and driver-level calls count too). The SMTP sink of the tests
    shares the engine; its checkouts (storing the message) are left out."""
    engine = db.engine.sync_engine
    traces: list[tuple[Any, Any]] = []

    def on_checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        pgconn = dbapi_conn.driver_connection.pgconn
        log = tempfile.TemporaryFile(mode="w+")
        pgconn.trace(log.fileno())
        pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS)
        traces.append((pgconn, log))

    def on_checkin(dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is not None:
            dbapi_conn.driver_connection.pgconn.untrace()

    seen: list[str] = []
    messages = messages if messages is not None else []  # every message's type
    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine.pool, "checkin", on_checkin)
    try:
        yield seen
    finally:
        event.remove(engine.pool, "checkout", on_checkout)
        event.remove(engine.pool, "checkin", on_checkin)
        for pgconn, log in traces:
            pgconn.untrace()
            log.seek(0)
            text = log.read()
            log.close()
            # The sink's store, and the session's tracking judge (it shares this pool and
            # may poll meanwhile; the send path never reads tracking_event), are not the send's.
            if "INSERT INTO outbox_message" in text or "tracking_event" in text:
                continue
            for kind, body in _frontend_messages(text):
                messages.append(kind)
                if kind == "Parse":
                    seen.append(body.removeprefix('"" ').strip('"')[:60])
                elif kind == "Query":
                    # A batched transaction (activities/sql_batch.py) is one Query message
                    # holding several statements: each one counts, except the PREPARE
                    # of a statement's first use on a connection.
                    for statement in body.strip('"').split(STATEMENT_SEPARATOR):
                        if not statement.startswith("PREPARE "):
                            seen.append(statement.strip()[:60])


def _frontend_messages(trace: str) -> list[tuple[str, str]]:
    """(type, body) of each message the client sent, from a libpq trace; a message whose
    text holds line breaks spans several lines of the trace."""
    out: list[tuple[str, str]] = []
    current: list[str] | None = None
    for line in trace.splitlines():
        part = line.split("\t")
        if len(part) >= 3 and part[0] in ("F", "B") and part[1].isdigit():
            current = None
            if part[0] == "F":
                current = [part[2], "\t".join(part[3:]).strip()]
                out.append((current[0], current[1]))
        elif current is not None:  # continuation of a multi-line message text
            current[1] += "\n" + line
            out[-1] = (current[0], current[1])
    return out


async def test_a_granted_send_makes_few_statements_sent(db: Database, env: Settings) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    messages: list[str] = []
    with statements_sent(db, messages) as seen:
        result = await run_send(acts, send_input(contact.id, tpl.key))
    assert result.status == "sent"
    # The lock, then each transaction, as one message each: psycopg's pipeline sent
    # Parse/Bind/Describe/Execute for every statement, each written and awaited on its own.
    assert messages == ["Query"] * 4, " ".join(messages)
    # Lock; BEGIN, cap lock, reserve + read + checks, COMMIT; BEGIN, `sending` + links,
    # COMMIT; (SMTP) BEGIN, `sent` + counter lock, counters, COMMIT, BEGIN, unlock, COMMIT.
    # (Before: 21, each waited for; now the three transactions are batched. The cap lock
    # is a statement of its own so the checks' snapshot follows it: no extra round trip.)
    assert len(seen) <= 15, "\n".join(seen)


async def test_recording_an_ended_run_makes_few_statements_sent(
    db: Database, env: Settings, temporal: Client
) -> None:
    """record_steps at the end of a send -> exit run: run row, step log, step and run
    counters; no segment reads this journey, so the segment hook costs no transaction."""
    acts = RunActivities(db, env)
    run_id = f"run-{tag()}"
    now = utcnow()
    records = [
        StepRecord(1, "send", 1, "entered", now),
        StepRecord(2, "send", 1, "left", now, "done"),
        StepRecord(3, "done", 1, "exited", now, "completed"),
    ]
    inp = RecordInput(
        run_id=run_id,
        workflow_id=f"journey/rt-{tag()}/c_x",
        journey_key=f"rt-{tag()}",
        version=1,
        contact_id="c_x",
        records=records,
        status="completed",
        step=None,
        visits={"send": 1, "done": 1},
        exit_reason="completed",
    )
    messages: list[str] = []
    with statements_sent(db, messages) as seen:
        await ActivityEnvironment(client=temporal).run(acts.record_steps, inp)
    async with db.session() as s:
        logged = (await s.exec(select(StepLog).where(StepLog.run_id == run_id))).all()
    assert len(logged) == 3
    # BEGIN; run row + step log + run state lock; step counters; run counters; segment
    # list; COMMIT. (Before: 11, in two transactions.)
    assert len(seen) <= 6, "\n".join(seen)
    # The transaction as one message.
    assert messages == ["Query"], " ".join(messages)


async def test_a_contact_stored_without_its_hash_is_still_checked(
    db: Database, env: Settings
) -> None:
    """The one-statement check reads the stored hash; a contact without one (written
    around the services) takes the long way and is still blocked when suppressed."""
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    async with db.session() as s:
        ctx = ServiceContext(s, env)
        assert contact.email is not None
        await suppress(ctx, email_hash(contact.email, ctx.pepper), CAT, "manual", "test")
        await s.commit()
        await s.exec(  # type: ignore[call-overload]
            text("UPDATE contact SET email_hash = NULL WHERE id = :id"), params={"id": contact.id}
        )
        await s.commit()
    result = await run_send(acts, send_input(contact.id, tpl.key))
    assert (result.status, result.detail) == ("blocked", "suppressed")
    async with db.session() as s:
        send = await s.get(Send, result.send_id)
    assert send is not None and send.status == "blocked" and send.category == CAT
