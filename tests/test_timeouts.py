"""Inactivity and active timeouts, exact under MockClock; keep-alive eviction."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trionet
from trionet import AcceptOptions, NetProcessor
from trionet._processor import table_of

from .conftest import connection_pair, recv_exactly, start_server, tcp_client, wait_for


class Ended:
    """Records how and when a handler ended."""

    def __init__(self) -> None:
        self.at: float | None = None
        self.conn: trionet.Connection | None = None
        self.done = trio.Event()

    def finish(self, conn: trionet.Connection) -> None:
        self.at = trio.current_time()
        self.conn = conn
        self.done.set()


async def test_idle_client_timed_out_at_exact_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ended = Ended()
    last_seen: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        try:
            while await conn.receive_some():
                last_seen.append(conn.last_activity)
        finally:
            ended.finish(conn)

    net = NetProcessor()
    server = await start_server(
        nursery, net, handler, AcceptOptions(host="127.0.0.1", inactivity_timeout=5)
    )
    client = await tcp_client(server.ports[0])
    await trio.sleep(2)
    await client.send_all(b"still here")
    await ended.done.wait()
    assert ended.conn is not None and ended.conn.timed_out == "inactivity"
    assert ended.at == pytest.approx(last_seen[-1] + 5, abs=1e-9)
    assert await client.receive_some() == b""  # the server closed it
    stats = net.statistics()
    assert stats.inactivity_timeouts == 1 and stats.active_timeouts == 0
    assert stats.connections_currently_open == 0
    await client.aclose()


async def test_steady_slow_reader_survives_long_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A Unix socketpair rather than loopback TCP: under MockClock's autojump, TCP's
    # real-time timers (zero-window probes, delayed ACKs) would look like minutes of
    # stall. A socketpair wakes the writer as soon as the reader frees space, so the
    # only clock is the reader's pace.
    net = NetProcessor()
    left, right = trio.socket.socketpair()
    for sock in (left, right):
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, 16384)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 16384)
    table = table_of(net)
    nowhere = ("0.0.0.0", 0)  # a socketpair's peer has no IP address
    sender = table.open(
        left, inbound=True, client=None, peer_address=nowhere, inactivity_timeout=1.0
    )
    reader = table.open(right, inbound=False, client=None, peer_address=nowhere)
    payload = bytes(range(256)) * 4096  # 1 MiB
    got = bytearray()

    async def read_slowly() -> None:
        # Each step takes whatever is buffered (so the sender is woken at once)
        # and then pauses: the pace is slow, the progress steady.
        while chunk := await reader.receive_some(1 << 20):
            got.extend(chunk)
            await trio.sleep(0.5)  # well under the 1 s timeout per step

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        with sender.enforce_timeouts():
            await sender.send_all(payload)
            await sender.send_eof()
            assert sender.timed_out is None
            sender.inactivity_timeout = None  # done sending; the reader drains the rest
    assert len(got) == len(payload)
    assert bytes(got) == payload
    assert trio.current_time() - t0 > 10  # far longer than the inactivity timeout
    assert net.statistics().inactivity_timeouts == 0
    await sender.aclose()
    await reader.aclose()


async def test_stalled_reader_is_timed_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ended = Ended()

    async def handler(conn: trionet.Connection) -> None:
        try:
            await conn.send_all(b"x" * (64 * 1024 * 1024))  # never fits: the peer does not read
        finally:
            ended.finish(conn)

    net = NetProcessor()
    server = await start_server(
        nursery, net, handler, AcceptOptions(host="127.0.0.1", inactivity_timeout=3)
    )
    client = await tcp_client(server.ports[0])
    await ended.done.wait()
    conn = ended.conn
    assert conn is not None and conn.timed_out == "inactivity"
    assert 0 < conn.bytes_sent < 64 * 1024 * 1024
    assert ended.at == pytest.approx(conn.last_activity + 3, abs=1e-9)
    assert net.statistics().connections_currently_open == 0
    await client.aclose()


async def test_active_timeout_fires_on_busy_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ended = Ended()

    async def handler(conn: trionet.Connection) -> None:
        try:
            while data := await conn.receive_some():
                await conn.send_all(data)
        finally:
            ended.finish(conn)

    net = NetProcessor()
    server = await start_server(
        nursery,
        net,
        handler,
        AcceptOptions(host="127.0.0.1", active_timeout=3, inactivity_timeout=1),
    )
    client = await tcp_client(server.ports[0])
    exchanges = 0
    with trio.move_on_after(10):
        while True:  # busy every millisecond
            await client.send_all(b"p")
            if await recv_exactly(client, 1) != b"p":
                break
            exchanges += 1
            await trio.sleep(0.001)
    conn = ended.conn
    assert conn is not None and conn.timed_out == "active"
    assert ended.at == pytest.approx(conn.opened_at + 3, abs=1e-9)
    assert exchanges > 2000
    stats = net.statistics()
    assert stats.active_timeouts == 1 and stats.inactivity_timeouts == 0
    assert stats.connections_currently_open == 0
    await client.aclose()


@pytest.mark.parametrize(("first", "second", "expected"), [(10, 2, 1 + 2), (2, 10, 1 + 10)])
async def test_timeout_changed_mid_handler(
    nursery: trio.Nursery,
    first: float,
    second: float,
    expected: float,
    autojump_clock: trio.testing.MockClock,
) -> None:
    ended = Ended()
    started: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        try:
            started.append(trio.current_time())
            conn.inactivity_timeout = first
            await trio.sleep(1)
            conn.inactivity_timeout = second  # shorter or longer: takes effect at once
            await trio.sleep_forever()
        finally:
            ended.finish(conn)

    net = NetProcessor()
    server = await start_server(nursery, net, handler)
    client = await tcp_client(server.ports[0])
    await ended.done.wait()
    assert ended.at == pytest.approx(started[0] + expected, abs=1e-9)
    assert ended.conn is not None and ended.conn.timed_out == "inactivity"
    await client.aclose()


async def test_cancelling_a_timeout_and_active_timeout_property(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = NetProcessor()
    a, b = await connection_pair(net)
    a.inactivity_timeout = 1
    a.inactivity_timeout = None  # ATS cancel_inactivity_timeout
    a.active_timeout = 5
    assert a.active_timeout == pytest.approx(5)
    await trio.sleep(2)
    assert a.active_timeout == pytest.approx(3)
    a.active_timeout = None
    assert a.active_timeout is None
    await trio.sleep(10)
    assert not a.closed and a.timed_out is None
    with pytest.raises(ValueError, match="inactivity_timeout=-1"):
        a.inactivity_timeout = -1
    await a.aclose()
    await b.aclose()


async def test_enforce_timeouts_on_client_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = NetProcessor()
    a, b = await connection_pair(net)
    a.inactivity_timeout = 2
    t0 = trio.current_time()
    with a.enforce_timeouts() as scope:
        await a.receive_some()  # the peer never sends
    assert scope.cancelled_caught
    assert trio.current_time() - t0 == pytest.approx(2, abs=1e-9)
    assert a.timed_out == "inactivity" and a.closed
    assert net.statistics().inactivity_timeouts == 1
    with a.enforce_timeouts() as again:  # already timed out: cancelled at once
        await trio.sleep(1)
    assert again.cancelled_caught
    await b.aclose()
    assert net.statistics().connections_currently_open == 0


async def test_timed_out_connection_without_scope_is_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = NetProcessor()
    a, b = await connection_pair(net)
    b.active_timeout = 1
    await trio.sleep(1.5)
    assert b.closed and b.timed_out == "active"
    with pytest.raises(trio.ClosedResourceError):
        await b.receive_some()
    await a.aclose()


async def test_default_inactivity_timeout_applied_and_counted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    ended = Ended()

    async def handler(conn: trionet.Connection) -> None:
        try:
            assert conn.inactivity_timeout == 7
            await conn.receive_some()
        finally:
            ended.finish(conn)

    net = NetProcessor(default_inactivity_timeout=7)
    server = await start_server(nursery, net, handler)
    client = await tcp_client(server.ports[0])
    t0 = trio.current_time()
    await ended.done.wait()
    assert ended.at == pytest.approx(t0 + 7, abs=0.01)
    stats = net.statistics()
    assert stats.default_inactivity_timeout_applied == 1 and stats.inactivity_timeouts == 1
    await client.aclose()


async def test_idle_connections_cost_nothing_between_deadlines(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some()

    net = NetProcessor()
    server = await start_server(
        nursery, net, handler, AcceptOptions(host="127.0.0.1", inactivity_timeout=60)
    )
    clients = [await tcp_client(server.ports[0]) for _ in range(50)]
    await wait_for(lambda: net.statistics().connections_currently_open == 50)
    wakeups = table_of(net).cop.wakeups
    await trio.sleep(55)
    assert table_of(net).cop.wakeups == wakeups  # the cop slept through: no scan, no work
    await trio.sleep(10)
    assert net.statistics().inactivity_timeouts == 50
    assert table_of(net).cop.wakeups - wakeups <= 2  # the 50 deadlines fall within a few ms
    for c in clients:
        await c.aclose()


async def test_busy_connection_pushes_once_per_period_not_per_io(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = NetProcessor()
    a, b = await connection_pair(net)
    b.inactivity_timeout = 1
    pushes = table_of(net).cop.pushes
    for _ in range(2000):  # 2000 round trips within 4 s: 4 timeout periods
        await a.send_all(b"x")
        await b.receive_some()
        await trio.sleep(0.002)
    assert table_of(net).cop.pushes - pushes <= 6
    assert not b.closed
    await a.aclose()
    await b.aclose()


async def test_keep_alive_eviction_oldest_first(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    order: list[int] = []
    ended: dict[int, str | None] = {}

    async def handler(conn: trionet.Connection) -> None:
        try:
            await conn.receive_some()  # the "request"
            await conn.send_all(b"response")
            conn.idle = True  # waiting for the next request
            order.append(conn.id)
            await conn.receive_some()
        finally:
            ended[conn.id] = conn.timed_out

    net = NetProcessor(max_idle_connections=2)
    server = await start_server(nursery, net, handler)
    clients = []
    for i in range(4):
        c = await tcp_client(server.ports[0])
        await c.send_all(b"req")
        assert await recv_exactly(c, 8) == b"response"
        await wait_for(lambda i=i: len(order) == i + 1)  # type: ignore[misc]
        clients.append(c)
        await trio.sleep(1)
    await wait_for(lambda: len(ended) == 2, "two evictions")
    assert ended == {order[0]: "evicted", order[1]: "evicted"}
    stats = net.statistics()
    assert stats.keep_alive_evictions == 2 and stats.idle_connections == 2
    for c in clients:
        await c.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)
    assert net.statistics().idle_connections == 0


async def test_idle_mark_cleared_when_busy_again(autojump_clock: trio.testing.MockClock) -> None:
    net = NetProcessor(max_idle_connections=1)
    a, b = await connection_pair(net)
    c, d = await connection_pair(net)
    a.idle = True
    a.idle = False  # a request arrived: no longer a candidate
    c.idle = True
    assert net.statistics().idle_connections == 1
    assert not a.closed and not c.closed
    for conn in (a, b, c, d):
        await conn.aclose()
    assert net.statistics().idle_connections == 0
