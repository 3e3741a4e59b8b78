"""A send cancelled before its message reaches the relay (worker shutdown, the attempt's
time running out) is left `reserved` and sent by the next attempt, even against a real
relay, where a `sending` row would be settled as `uncertain` and never resent."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from temporalio.testing import ActivityEnvironment

from activities.sending import SendActivities, send_id_for, send_key_of
from activities.smtp import SmtpTransport, parse_smtp_url
from core.config import Settings
from core.db import Database
from core.models import Send
from devstack.ports import free_port
from devstack.smtp_sink import SmtpSink
from tests.helpers import eventually
from tests.integration.sending_support import (
    get_send,
    new_contact,
    new_template,
    outbox_for,
    run_send,
    send_input,
    sending_settings,
    set_grant,
)
from tests.integration.smtp_support import Recorder, recorder
from workflows.types import SendInput

CAT = "care_reminders"


async def _cancel_midway(acts: SendActivities, inp: SendInput, reached: asyncio.Event) -> None:
    env = ActivityEnvironment()
    task = asyncio.create_task(env.run(acts.send_email, inp))
    await asyncio.wait_for(reached.wait(), 10)
    await asyncio.sleep(0.3)  # well inside the wait
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_while_waiting_for_a_pool_slot_is_resent(
    db: Database, settings: Settings, sink: SmtpSink
) -> None:
    relay = sending_settings(settings, smtp_builtin_sink=False)
    assert relay.smtp_url
    transport = SmtpTransport(parse_smtp_url(relay.smtp_url, True), pool_size=1)
    acts = SendActivities(db, relay, transport)
    contact = await new_contact(db, relay)
    await set_grant(db, relay, contact.id, CAT)
    tpl = await new_template(db)
    inp = send_input(contact.id, tpl.key)
    send_id = send_id_for(send_key_of(inp))

    held = await transport.pool.acquire()  # every slot taken: the send must wait
    reached = asyncio.Event()

    async def reserved_row() -> bool:
        async with db.session() as s:
            row = await s.get(Send, send_id)
        if row is not None:
            reached.set()
        return row is not None

    await asyncio.gather(
        _cancel_midway(acts, inp, reached), eventually(reserved_row, timeout=10, interval=0.05)
    )
    await transport.pool.release(held, reusable=True)
    assert (await get_send(db, send_id)).status == "reserved"

    again = await run_send(acts, inp)
    assert again.status == "sent"
    send = await get_send(db, send_id)
    assert len(await outbox_for(db, send.message_id)) == 1


class _SlowRcpt(Recorder):
    """A relay that takes its time answering RCPT (a cancellation lands before DATA)."""

    def __init__(self) -> None:
        super().__init__()
        self.stall_rcpt = True
        self.at_rcpt = asyncio.Event()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.stall_rcpt:
            self.at_rcpt.set()
            await asyncio.sleep(5)
        envelope.rcpt_tos.append(address)
        return "250 OK"


async def test_cancelled_before_data_is_resent_against_a_relay(
    db: Database, settings: Settings
) -> None:
    handler = _SlowRcpt()
    slow = SmtpSink(handler, port=free_port())
    await slow.start()
    try:
        relay = sending_settings(
            settings, smtp_builtin_sink=False, smtp_url=f"smtp://127.0.0.1:{slow.port}"
        )
        transport = SmtpTransport(parse_smtp_url(relay.smtp_url or "", True))
        acts = SendActivities(db, relay, transport)
        contact = await new_contact(db, relay)
        await set_grant(db, relay, contact.id, CAT)
        tpl = await new_template(db)
        inp = send_input(contact.id, tpl.key)
        send_id = send_id_for(send_key_of(inp))

        await _cancel_midway(acts, inp, handler.at_rcpt)
        assert (await get_send(db, send_id)).status == "reserved"

        handler.stall_rcpt = False
        again = await run_send(acts, inp)
        assert again.status == "sent"
        send = await get_send(db, send_id)
        assert recorder(slow).ids().count(send.message_id) == 1
    finally:
        await slow.stop()
