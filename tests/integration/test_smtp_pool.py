"""The SMTP transport's connection pool against the real aiosmtpd sink: connections are
reused, bounded, and a connection the relay gave up on never turns a send into an error
or a duplicate. Each test runs a sink of its own (messages kept in memory), so
connection counts are the test's alone."""

from __future__ import annotations

import asyncio

import pytest

from activities.smtp import PermanentSmtpError, TransientSmtpError, close_transports
from tests.helpers import eventually
from tests.integration.smtp_support import recorder, running_sink, send, transport_for


async def test_one_connection_carries_many_messages() -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        sent = [await send(t, i) for i in range(12)]
        assert recorder(sink).ids() == sent
        assert sink.connections.opened == 1
        assert (t.pool.stats.opened, t.pool.stats.reused) == (1, 11)
        await t.pool.close()


async def test_message_cap_opens_a_new_connection() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, max_messages=3)
        for i in range(7):
            await send(t, i)
        assert len(recorder(sink).messages) == 7
        assert sink.connections.opened == 3  # 3 + 3 + 1
        await eventually(lambda: _is(sink.connections.open, 1))  # the capped ones QUIT
        await t.pool.close()


async def test_one_message_per_connection_when_capped_at_one() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, max_messages=1)
        for i in range(4):
            await send(t, i)
        assert sink.connections.opened == 4
        await eventually(lambda: _is(sink.connections.open, 0))


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, idle_timeout=0.3)
        await send(t, 1)
        assert sink.connections.open == 1
        await eventually(lambda: _is(sink.connections.open, 0), timeout=5, interval=0.05)
        assert t.pool.open_count == 0
        await send(t, 2)
        assert sink.connections.opened == 2
        assert len(recorder(sink).messages) == 2
        await t.pool.close()


async def test_a_connection_the_relay_closed_while_idle_is_not_an_error() -> None:
    # The relay hangs up on idle clients after 0.3 s; the pool would keep them 30 s.
    async with running_sink(idle_timeout=0.3) as sink:
        t = transport_for(sink)
        first = await send(t, 1)
        await eventually(lambda: _is(sink.connections.open, 0), timeout=5, interval=0.05)
        second = await send(t, 2)
        assert recorder(sink).ids() == [first, second]
        assert sink.connections.opened == 2
        await t.pool.close()


@pytest.mark.parametrize("fault", ["drop", "421"])
async def test_reused_connection_refused_at_mail_is_retried_once_on_a_new_one(
    fault: str,
) -> None:
    """The relay gave up on the idle connection but we hear it only at MAIL (a cut
    connection, or the 421 of a relay that timed us out): nothing was accepted, so the
    message goes out on a new connection, once."""
    async with running_sink() as sink:
        t = transport_for(sink)
        first = await send(t, 1)
        sink.handler.faults.at_mail.append(fault)
        second = await send(t, 2)  # no error
        assert recorder(sink).ids() == [first, second]
        assert not sink.handler.faults.at_mail
        assert sink.connections.opened == 2
        await t.pool.close()


@pytest.mark.parametrize("fault", ["drop", "421"])
async def test_a_new_connection_refused_at_mail_is_a_transient_failure(fault: str) -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        sink.handler.faults.at_mail.append(fault)
        with pytest.raises(TransientSmtpError) as caught:
            await send(t, 1)
        assert caught.value.delivered_unknown is False  # nothing can have been accepted
        assert recorder(sink).messages == []
        assert sink.connections.opened == 1  # not retried: a new connection's answer stands
        await send(t, 2)
        assert sink.connections.opened == 2  # the refused connection was not kept
        await t.pool.close()


async def test_retry_of_a_stale_connection_happens_only_once() -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        await send(t, 1)
        sink.handler.faults.at_mail.extend(["drop", "drop"])
        with pytest.raises(TransientSmtpError) as caught:
            await send(t, 2)
        assert caught.value.delivered_unknown is False
        assert len(recorder(sink).messages) == 1
        assert sink.connections.opened == 2
        await t.pool.close()


async def test_421_at_data_discards_the_connection() -> None:
    """421: the server is closing the channel, even if it has not done so yet."""
    async with running_sink() as sink:
        t = transport_for(sink)
        await send(t, 1)
        sink.handler.faults.queue.append("421")
        with pytest.raises(TransientSmtpError) as caught:
            await send(t, 2)
        assert (caught.value.detail, caught.value.delivered_unknown) == ("smtp_421", False)
        third = await send(t, 3)
        assert sink.connections.opened == 2
        assert recorder(sink).ids()[-1] == third and len(recorder(sink).messages) == 2
        await t.pool.close()


async def test_421_mid_stream_of_concurrent_sends() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, pool_size=4)
        await asyncio.gather(*(send(t, f"w{i}") for i in range(4)))
        sink.handler.faults.queue.extend(["421", "421", "421"])
        outcomes = await asyncio.gather(*(send(t, i) for i in range(20)), return_exceptions=True)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(failures) == 3
        assert all(isinstance(f, TransientSmtpError) and f.detail == "smtp_421" for f in failures)
        delivered = [o for o in outcomes if isinstance(o, str)]
        assert sorted(m for m in recorder(sink).ids()[4:] if m) == sorted(delivered)
        assert sink.connections.peak <= 4
        await t.pool.close()


@pytest.mark.parametrize("code", ["451", "550"])
async def test_refused_message_is_reset_and_the_connection_reused(code: str) -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        await send(t, 1)
        sink.handler.faults.queue.append(code)
        expected = TransientSmtpError if code.startswith("4") else PermanentSmtpError
        with pytest.raises(expected):
            await send(t, 2)
        assert recorder(sink).resets == 1
        await send(t, 3)
        assert sink.connections.opened == 1
        assert len(recorder(sink).messages) == 2
        await t.pool.close()


async def test_drop_during_data_on_a_reused_connection_is_delivered_unknown() -> None:
    """Cut after the data arrived: the relay may have it, so no retry, and the send is
    reported as possibly delivered (activities/sending.py then settles it)."""
    async with running_sink() as sink:
        t = transport_for(sink)
        await send(t, 1)
        sink.handler.faults.queue.append("drop")
        with pytest.raises(TransientSmtpError) as caught:
            await send(t, 2)
        assert caught.value.delivered_unknown is True
        assert caught.value.detail.startswith("smtp_data_")
        assert len(recorder(sink).messages) == 1  # not sent again on a new connection
        assert sink.connections.opened == 1
        await send(t, 3)
        assert sink.connections.opened == 2
        await t.pool.close()


async def test_a_message_the_sink_could_not_store_is_a_transient_failure() -> None:
    """Not stored means not accepted: 451 (retried), never aiosmtpd's 500 (permanent)."""
    async with running_sink() as sink:
        t = transport_for(sink)
        recorder(sink).store_failures = 1
        with pytest.raises(TransientSmtpError) as caught:
            await send(t, 1)
        assert (caught.value.detail, caught.value.delivered_unknown) == ("smtp_451", False)
        mid = await send(t, 2)
        assert recorder(sink).ids() == [mid]
        assert sink.connections.opened == 1  # a 451 leaves the connection usable
        await t.pool.close()


async def test_pool_stays_bounded_under_concurrency() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, pool_size=3)
        sent = await asyncio.gather(*(send(t, i) for i in range(40)))
        assert sorted(m for m in recorder(sink).ids() if m) == sorted(sent)
        assert sink.connections.peak <= 3
        assert sink.connections.opened <= 3
        assert t.pool.open_count <= 3
        await t.pool.close()


async def test_no_free_connection_in_time_is_a_transient_failure() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, pool_size=1)
        t.pool.acquire_timeout = 0.2
        held = await t.pool.acquire()
        with pytest.raises(TransientSmtpError) as caught:
            await send(t, 1)
        assert (caught.value.detail, caught.value.delivered_unknown) == ("smtp_pool_busy", False)
        await t.pool.release(held, reusable=True)
        await send(t, 2)
        assert sink.connections.opened == 1 and len(recorder(sink).messages) == 1
        await t.pool.close()


async def test_pool_bound_holds_while_capped_connections_close() -> None:
    async with running_sink() as sink:
        t = transport_for(sink, pool_size=2, max_messages=2)
        await asyncio.gather(*(send(t, i) for i in range(30)))
        assert len(recorder(sink).messages) == 30
        assert sink.connections.peak <= 2
        await t.pool.close()


async def test_a_cancelled_send_never_leaves_its_connection_in_the_pool() -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        await send(t, 1)
        recorder(sink).stall = True
        task = asyncio.create_task(send(t, 2))
        await recorder(sink).stalled.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        recorder(sink).stall = False
        assert t.pool.open_count == 0
        await send(t, 3)
        assert sink.connections.opened == 2
        await t.pool.close()


async def test_worker_shutdown_quits_pooled_connections() -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        await asyncio.gather(*(send(t, i) for i in range(5)))
        assert sink.connections.open >= 1
        busy = await t.pool.acquire()  # a send still in flight at shutdown
        opened = sink.connections.opened
        await close_transports()
        await t.pool.release(busy, reusable=True)  # ... is closed when it comes back
        await eventually(lambda: _is(sink.connections.open, 0), timeout=5, interval=0.05)
        assert recorder(sink).quits == opened  # closed politely, not cut
        await send(t, 6)  # a send after shutdown (none comes in a worker) opens anew
        assert sink.connections.opened == opened + 1
        await t.pool.close()


async def test_builtin_sink_question_reuses_the_pool() -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        assert await t.is_builtin_sink()
        await send(t, 1)
        assert sink.connections.opened == 1
        await t.pool.close()


async def test_an_idle_connection_that_carried_no_message_yet_is_recovered_too() -> None:
    async with running_sink() as sink:
        t = transport_for(sink)
        assert await t.is_builtin_sink()  # opens a connection, which then sits idle
        sink.handler.faults.at_mail.append("drop")
        mid = await send(t, 1)
        assert recorder(sink).ids() == [mid]
        assert sink.connections.opened == 2
        await t.pool.close()


async def _is(value: int, expected: int) -> bool:
    return value == expected
