"""The raw plain-TCP path (trionet._core._wire): the stdlib socket's recv/send
with trio's wait_readable/wait_writable only on EAGAIN, its checkpoints (every
call a cancel point; a schedule point at least every ``schedule_interval``
calls), and its edge cases."""

from __future__ import annotations

import hashlib
import socket

import pytest
import trio
import trio.testing

import trionet
from trionet._core._wire import count_received, count_sent, raw_socket

from .conftest import connection_pair

FLOOD_CALLS = 600


async def _interleaving(schedule_interval: int) -> tuple[int, int]:
    """One connection floods (receive 8 bytes, send them back, with data
    always queued, so no call ever waits); another connection's task waits
    for one byte, which arrives while the flood runs.

    Returns:
      (flood calls between the byte's arrival and the other task's step,
      flood calls in all).
    """
    net = trionet.NetProcessor(schedule_interval=schedule_interval)
    flood_client, flood = await connection_pair(net)
    other_client, other = await connection_pair(net)
    await flood_client.send_all(b"f" * (FLOOD_CALLS // 2 * 8))
    calls = 0
    sent_at: int | None = None
    woke_at: int | None = None

    async def wait_for_one_byte() -> None:
        nonlocal woke_at
        assert await other.receive_some() == b"!"
        woke_at = calls

    async def flood_loop() -> None:
        nonlocal calls, sent_at
        for i in range(FLOOD_CALLS // 2):
            if i == 10:
                # Synchronous: on loopback the byte is in `other`'s receive
                # queue when send() returns.
                assert raw_socket(other_client).send(b"!") == 1
                sent_at = calls
            data = await flood.receive_some(8)
            calls += 1
            await flood.send_all(data)
            calls += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_one_byte)
        await trio.testing.wait_all_tasks_blocked()  # it waits in wait_readable
        nursery.start_soon(flood_loop)
    assert sent_at is not None and woke_at is not None
    # Nothing was lost or reordered by the flood: every byte echoed, counted.
    assert flood.bytes_received == flood.bytes_sent == FLOOD_CALLS // 2 * 8
    for conn in (flood_client, flood, other_client, other):
        conn.close()
    return woke_at - sent_at, calls


@pytest.mark.parametrize("interval", [1, 4, 16])
async def test_a_flooding_connection_yields_within_the_schedule_interval(interval: int) -> None:
    """Fairness: the other task runs before the flood has made 2 x interval
    more calls (the flood yields within `interval` calls; the woken task may
    be scheduled after the flood's next run of at most `interval` calls)."""
    delay, total = await _interleaving(interval)
    assert total == FLOOD_CALLS
    assert 0 <= delay <= 2 * interval


async def test_without_schedule_points_the_flood_starves_the_other_task() -> None:
    """The control for the test above: with no schedule point in reach, the
    other task runs only once the flood is over."""
    delay, total = await _interleaving(10**9)
    assert total == FLOOD_CALLS
    assert delay == FLOOD_CALLS - 20  # the byte went out after 20 flood calls


async def test_every_call_is_a_cancel_point_and_loses_nothing() -> None:
    """Data is ready, so neither call would wait or yield; in a cancelled
    scope both still raise Cancelled before touching the socket."""
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    await a.send_all(b"ready")
    await trio.testing.wait_all_tasks_blocked()
    before = net.statistics()
    with trio.CancelScope() as scope:
        scope.cancel()
        await b.receive_some()
    assert scope.cancelled_caught
    with trio.CancelScope() as scope:
        scope.cancel()
        await b.send_all(b"never sent")
    assert scope.cancelled_caught
    after = net.statistics()
    assert after.calls_to_read == before.calls_to_read
    assert after.calls_to_write == before.calls_to_write
    assert await b.receive_some() == b"ready"  # still queued, still usable
    await b.send_eof()
    assert await a.receive_some() == b""  # "never sent" was not
    a.close()
    b.close()


async def test_cancelled_while_waiting_the_connection_stays_usable(
    autojump_clock: trio.abc.Clock,
) -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    with trio.move_on_after(5) as scope:
        await b.receive_some()
    assert scope.cancelled_caught and not b.closed and not b.broken
    await a.send_all(b"later")
    assert await b.receive_some() == b"later"
    a.close()
    b.close()
    assert net.statistics().connections_currently_open == 0


async def test_closed_under_a_waiting_receive_raises_closed_resource() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    seen: list[BaseException] = []

    async def receive() -> None:
        try:
            await b.receive_some()
        except trio.ClosedResourceError as exc:
            seen.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        b.close()  # notify_closing wakes the waiter before the fd goes
    assert len(seen) == 1 and not b.broken
    with pytest.raises(trio.ClosedResourceError):
        await b.receive_some()
    with pytest.raises(trio.ClosedResourceError):
        await b.send_all(b"x")
    a.close()


async def test_two_receivers_at_once_is_busy() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(b.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await b.receive_some()
        await a.send_all(b"x")  # the first receive gets it and ends
    a.close()
    b.close()


async def test_send_to_a_reset_peer_is_broken() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    b.abort()  # RST to a
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(trio.BrokenResourceError, match=r"connection #\d+ broken: .*"):
        for _ in range(10):  # the first send after the RST fails (EPIPE/ECONNRESET)
            await a.send_all(b"x" * 1000)
    assert a.broken
    a.close()
    assert net.statistics().connections_currently_open == 0


async def test_a_large_send_loops_over_eagain_and_counts_every_byte() -> None:
    """8 MiB into a peer reading in 4 KiB steps: send() hits EAGAIN many
    times; every byte arrives in order and is counted once."""
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    payload = hashlib.sha256(b"seed").digest() * (8 * 1024 * 1024 // 32)
    got = hashlib.sha256()
    received = 0

    async def read_all() -> None:
        nonlocal received
        while chunk := await b.receive_some(4096):
            got.update(chunk)
            received += len(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        await a.send_all(memoryview(bytearray(payload)))
        await a.send_eof()
    stats = net.statistics()
    assert received == len(payload) and got.digest() == hashlib.sha256(payload).digest()
    assert a.bytes_sent == b.bytes_received == stats.write_bytes == stats.read_bytes == len(payload)
    assert stats.calls_to_write > 1  # the kernel took it in several sends
    a.close()
    b.close()


async def test_outside_code_counts_like_the_wire() -> None:
    """raw_socket/count_received/count_sent: for a path that moves bytes itself
    (splice): the same statistics, byte counts and activity."""
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    sock = raw_socket(a)
    assert isinstance(sock, socket.socket) and sock.fileno() == a.socket.fileno()
    assert sock.gettimeout() == 0.0  # non-blocking
    before = a.last_activity
    await trio.sleep(0.01)
    assert sock.send(b"abc") == 3
    count_sent(a, 3)
    assert a.last_activity > before
    assert await b.receive_some() == b"abc"
    count_received(a, 0)  # an EOF seen by that path
    stats = net.statistics()
    assert (a.bytes_sent, stats.write_bytes, stats.calls_to_write) == (3, 3, 1)
    assert (stats.calls_to_read_nodata, b.bytes_received) == (1, 3)
    count_received(a, 5)
    assert a.bytes_received == 5 and net.statistics().read_bytes == 8
    a.close()
    b.close()


def test_schedule_interval_is_checked() -> None:
    with pytest.raises(ValueError, match=r"NetProcessor.schedule_interval=0"):
        trionet.NetProcessor(schedule_interval=0)
    with pytest.raises(ValueError, match=r"NetProcessor.schedule_interval=True"):
        trionet.NetProcessor(schedule_interval=True)
    assert trionet.NetProcessor().schedule_interval == 16
