"""send_email waits for the contact's cap lock before it reads anything: what was
committed during that wait (a suppression, the cap check's reservation of this very
send) is seen, not a snapshot from before it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.sending import cap_lock_key, insert_reservation
from core.config import Settings
from core.db import Database
from services.context import ServiceContext
from services.suppressions import suppress
from tests.helpers import eventually
from tests.integration.sending_support import (
    activities_for,
    get_send,
    new_contact,
    new_template,
    outbox_for,
    run_send,
    send_input,
    set_grant,
)

CAT = "care_reminders"


@asynccontextmanager
async def _cap_locked(db: Database, contact_id: str) -> AsyncIterator[AsyncSession]:
    """A transaction holding the contact's cap lock until the block ends (commit there)."""
    async with db.session() as s:
        await s.exec(  # type: ignore[call-overload]
            text("SELECT pg_advisory_xact_lock(:k)").bindparams(k=cap_lock_key(contact_id))
        )
        yield s


async def _waiting_for_cap_lock(db: Database, contact_id: str) -> None:
    key = cap_lock_key(contact_id)

    async def waiting() -> bool:
        async with db.session() as s:
            n = (
                await s.exec(  # type: ignore[call-overload]
                    text(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                        " AND ((classid::bigint << 32) | objid::bigint) = :k"
                    ).bindparams(k=key)
                )
            ).scalar_one()
        return bool(n)

    await eventually(waiting, timeout=10, interval=0.05)


async def test_suppression_committed_while_waiting_for_the_cap_lock_blocks(
    db: Database, env: Settings
) -> None:
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    assert contact.email_hash
    async with _cap_locked(db, contact.id) as s:
        task = asyncio.create_task(run_send(acts, send_input(contact.id, tpl.key)))
        await _waiting_for_cap_lock(db, contact.id)
        await suppress(ServiceContext(s, env), contact.email_hash, "*", "unsubscribe", "test")
        await s.commit()  # the suppression and the lock's release together
    result = await task
    assert (result.status, result.detail) == ("blocked", "suppressed")
    send = await get_send(db, result.send_id or "")
    assert await outbox_for(db, send.message_id) == []


async def test_reservation_committed_while_waiting_for_the_cap_lock(
    db: Database, env: Settings
) -> None:
    """The cap check (activities.lookups.send_cap) reserves the same send during the wait."""
    acts = activities_for(db, env)
    contact = await new_contact(db, env)
    await set_grant(db, env, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    async with _cap_locked(db, contact.id) as s:
        task = asyncio.create_task(run_send(acts, inp))
        await _waiting_for_cap_lock(db, contact.id)
        assert await insert_reservation(s, inp, env.mail_domain) is not None
        await s.commit()
    result = await task
    assert result.status == "sent"
    send = await get_send(db, result.send_id or "")
    assert len(await outbox_for(db, send.message_id)) == 1
