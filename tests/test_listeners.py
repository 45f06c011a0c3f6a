"""``NetProcessor.open_listeners``: trionet's accept path as trio listeners,
under ``trio.serve_listeners`` and trio-websocket's ``WebSocketServer``, on
real loopback sockets. What ``serve()`` applies before a handler runs must
hold here too: limits, timeouts, PROXY protocol, TLS, statistics."""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
import trio_websocket
import trustme

import trionet
from trionet import AcceptOptions, Connection, ConnectionListener, NetProcessor
from trionet._inbound._conn_listener import READY_LIMIT
from trionet._processor import table_of

from .conftest import recv_exactly, tcp_client, wait_for

LOCAL = AcceptOptions(host="127.0.0.1")


async def echo(conn: Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def listen(net: NetProcessor, reserve: bool = False, **opts: object) -> ConnectionListener:
    spec = AcceptOptions(host="127.0.0.1", **opts)  # type: ignore[arg-type]
    (listener,) = await net.open_listeners(spec, reserve_outbound_slot=reserve)
    return listener


async def serving(
    nursery: trio.Nursery,
    net: NetProcessor,
    handler: Callable[[Connection], Awaitable[object]],
    **opts: object,
) -> ConnectionListener:
    listener = await listen(net, **opts)
    await nursery.start(trio.serve_listeners, handler, [listener])
    return listener


async def closed_by_server(stream: trio.abc.ReceiveStream) -> bool:
    """EOF, or a reset when the server closed with bytes of ours unread."""
    try:
        return await stream.receive_some() == b""
    except trio.BrokenResourceError:
        return True


async def refused(port: int) -> bool:
    """Is nothing listening on ``port`` any more?"""
    with trio.socket.socket() as sock:
        try:
            await sock.connect(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.ECONNREFUSED
    return False


# ------------------------------------------------------- trio.serve_listeners
async def test_serve_listeners_echoes_and_counts() -> None:
    net = NetProcessor()
    seen: list[Connection] = []

    async def handler(conn: Connection) -> None:
        seen.append(conn)
        await echo(conn)

    async with trio.open_nursery() as nursery:
        listener = await serving(nursery, net, handler)
        assert isinstance(listener, trio.abc.Listener)
        assert repr(listener) == f"<trionet.ConnectionListener ('127.0.0.1', {listener.port})>"
        for i in range(3):
            client = await tcp_client(listener.port)
            await client.send_all(b"ping %d" % i)
            assert await recv_exactly(client, 6) == b"ping %d" % i
            await client.aclose()
        await wait_for(lambda: net.statistics().connections_currently_open == 0)
        stats = net.statistics()
        assert stats.total_accepts == 3 and stats.accepts_currently_open == 1
        assert stats.read_bytes == stats.write_bytes == 18
        nursery.cancel_scope.cancel()
    assert [c.inbound for c in seen] == [True] * 3 and all(c.closed for c in seen)
    assert net.statistics().accepts_currently_open == 0
    assert await refused(listener.port)  # serve_listeners closed it: the socket is gone


async def test_a_bad_listen_spec_binds_nothing() -> None:
    net = NetProcessor()
    with pytest.raises(ValueError, match="at least one port"):
        await net.open_listeners()
    with pytest.raises(TypeError, match="listen spec '80'"):
        await net.open_listeners(LOCAL, "80")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserve_outbound_slot='yes'"):
        await net.open_listeners(LOCAL, reserve_outbound_slot="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_connections=1: a session of a listener"):
        await NetProcessor(max_connections=1).open_listeners(LOCAL, reserve_outbound_slot=True)
    assert net.statistics().accepts_currently_open == 0


async def test_pause_holds_a_second_client_back_until_the_first_closes() -> None:
    net = NetProcessor(max_connections=1)
    async with trio.open_nursery() as nursery:
        listener = await serving(nursery, net, echo)
        first = await tcp_client(listener.port)
        await first.send_all(b"one")
        assert await recv_exactly(first, 3) == b"one"
        second = await tcp_client(listener.port)  # the kernel completes the TCP handshake...
        await second.send_all(b"two")
        # ...but the accept loop is parked at the limit: the client waits in the backlog.
        await wait_for(lambda: table_of(net).parked() == 1, "accept loop parked")
        with trio.move_on_after(0.2):
            await second.receive_some()
            pytest.fail("the second client was served while the first was open")
        stats = net.statistics()
        assert stats.total_accepts == 1 and stats.connections_currently_open == 1
        assert stats.connections_throttled_in == 0
        await first.aclose()
        assert await recv_exactly(second, 3) == b"two"
        assert net.statistics().total_accepts == 2
        await second.aclose()
        nursery.cancel_scope.cancel()


async def test_close_mode_refuses_at_accept() -> None:
    net = NetProcessor(max_connections=1, throttle="close")
    async with trio.open_nursery() as nursery:
        listener = await serving(nursery, net, echo)
        first = await tcp_client(listener.port)
        await first.send_all(b"one")
        assert await recv_exactly(first, 3) == b"one"
        extra = await tcp_client(listener.port)
        assert await extra.receive_some() == b""  # accepted and closed at once
        await extra.aclose()
        assert net.statistics().connections_throttled_in == 1
        await first.send_all(b"still")
        assert await recv_exactly(first, 5) == b"still"
        await first.aclose()
        nursery.cancel_scope.cancel()


async def test_per_client_limit() -> None:
    net = NetProcessor(per_client_max_connections=1)
    async with trio.open_nursery() as nursery:
        listener = await serving(nursery, net, echo)
        first = await tcp_client(listener.port)
        await first.send_all(b"a")
        assert await recv_exactly(first, 1) == b"a"
        again = await tcp_client(listener.port)  # the same client (127.0.0.1)
        assert await again.receive_some() == b""
        await again.aclose()
        assert net.statistics().per_client_connections_throttled_in == 1
        # Another client address is not limited by the first one's connections.
        other = trio.socket.socket()
        await other.bind(("127.0.0.2", 0))
        await other.connect(("127.0.0.1", listener.port))
        stream = trio.SocketStream(other)
        await stream.send_all(b"b")
        assert await recv_exactly(stream, 1) == b"b"
        await stream.aclose()
        await first.aclose()
        nursery.cancel_scope.cancel()


async def test_socket_options_apply_to_accepted_connections() -> None:
    net = NetProcessor()
    got: list[int | bytes] = []

    async def handler(conn: Connection) -> None:
        got.append(conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
        got.append(conn.getsockopt(socket.IPPROTO_IP, socket.IP_TOS))

    opts = trionet.SocketOptions(keepalive=True, tos=0x10)
    async with trio.open_nursery() as nursery:
        listener = await serving(nursery, net, handler, socket=opts)
        client = await tcp_client(listener.port)
        assert await client.receive_some() == b""
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert got == [1, 0x10]


# ----------------------------------------------------------------- timeouts
async def test_inactivity_timeout_under_serve_listeners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Outside serve() nothing cancels the handler's task: the cop closes the
    connection, and the handler's pending receive raises ClosedResourceError
    at the deadline; under ``enforce_timeouts()`` it is cancelled quietly."""
    net = NetProcessor()
    outcomes: list[tuple[str, float, str | None]] = []

    async def bare(conn: Connection) -> None:
        start = trio.current_time()
        try:
            await conn.receive_some()
        except trio.ClosedResourceError:
            outcomes.append(("closed", trio.current_time() - start, conn.timed_out))

    async def enforced(conn: Connection) -> None:
        start = trio.current_time()
        with conn.enforce_timeouts():
            await conn.receive_some()
        outcomes.append(("cancelled", trio.current_time() - start, conn.timed_out))

    handlers = [bare, enforced, echo]

    async def handler(conn: Connection) -> None:
        await handlers[conn.id - 1](conn)

    async with trio.open_nursery() as nursery:
        listener = await serving(nursery, net, handler, inactivity_timeout=7)
        for _ in range(2):
            client = await tcp_client(listener.port)
            assert await client.receive_some() == b""  # closed by the timeout
            await client.aclose()
        # The server outlived both timeouts and still serves.
        client = await tcp_client(listener.port)
        await client.send_all(b"alive")
        assert await recv_exactly(client, 5) == b"alive"
        await client.aclose()
        await wait_for(lambda: net.statistics().connections_currently_open == 0)
        nursery.cancel_scope.cancel()
    assert outcomes == [("closed", 7.0, "inactivity"), ("cancelled", 7.0, "inactivity")]
    assert net.statistics().inactivity_timeouts == 2


async def test_a_timeout_under_a_handler_that_ignores_it_crashes_serve_listeners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """What the docs warn about: trio.serve_listeners lets a handler's
    exception -- here the ClosedResourceError of a timed-out connection --
    crash the server."""
    net = NetProcessor()
    with pytest.raises(ExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            listener = await serving(nursery, net, echo, inactivity_timeout=3)
            client = await tcp_client(listener.port)
            await trio.sleep_forever()
    assert info.group_contains(trio.ClosedResourceError)
    assert trio.current_time() == pytest.approx(3)
    await client.aclose()
    assert net.statistics().connections_currently_open == 0


async def test_a_connection_that_times_out_before_it_is_taken_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = NetProcessor()
    listener = await listen(net, inactivity_timeout=2)
    async with listener:
        first_client = await tcp_client(listener.port)
        first = await listener.accept()
        idle_client = await tcp_client(listener.port)
        await wait_for(lambda: net.statistics().total_accepts == 2, "second accepted")
        await trio.sleep(3)  # the second waits in the ready queue and times out
        assert net.statistics().inactivity_timeouts == 2  # the first one too
        assert await idle_client.receive_some() == b""
        third_client = await tcp_client(listener.port)
        third = await listener.accept()
        assert not third.closed and third.id == 3 and first.closed
        await third.aclose()
        for c in (first_client, idle_client, third_client):
            await c.aclose()


# ---------------------------------------------------------- TLS and PROXY
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.com").configure_cert(ctx)
    return ctx


async def tls_client(port: int, ca: trustme.CA) -> trio.SSLStream[trio.SocketStream]:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    tcp = await tcp_client(port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="example.com")
    await stream.do_handshake()
    return stream


async def test_tls_handshake_done_before_accept_returns(ca: trustme.CA) -> None:
    net = NetProcessor()
    listener = await listen(net, ssl_context=server_context(ca))
    async with listener:
        accepted: list[Connection] = []

        async def accept() -> None:
            accepted.append(await listener.accept())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)  # the first accept() starts the listener's work
            client = await tls_client(listener.port, ca)
        (conn,) = accepted
        assert conn.tls is not None and conn.tls.server_name == "example.com"
        await client.send_all(b"secret")
        assert await conn.receive_some() == b"secret"
        await conn.send_all(b"reply")
        assert await client.receive_some() == b"reply"
        assert conn.bytes_received == 6 and net.statistics().read_bytes > 6  # records counted
        await conn.aclose()
        await client.aclose()


async def test_a_slow_handshake_does_not_hold_up_other_clients(
    ca: trustme.CA, autojump_clock: trio.testing.MockClock
) -> None:
    """The handshakes run concurrently in the listener: a client that connects
    and sends nothing costs the others no time."""
    net = NetProcessor()
    served: list[float] = []

    async def handler(conn: Connection) -> None:
        served.append(trio.current_time())
        await echo(conn)

    async with trio.open_nursery() as nursery:
        listener = await serving(
            nursery, net, handler, ssl_context=server_context(ca), tls_handshake_timeout=30
        )
        silent = await tcp_client(listener.port)  # connects first, never says hello
        await wait_for(lambda: net.statistics().total_accepts == 1, "silent accepted")
        start = trio.current_time()
        client = await tls_client(listener.port, ca)
        await client.send_all(b"hi")
        assert await recv_exactly(client, 2) == b"hi"
        assert served == [start]  # no waiting for the silent one's 30 s
        assert await silent.receive_some() == b""  # its handshake timed out...
        assert trio.current_time() - start == pytest.approx(30)
        stats = net.statistics()
        assert stats.tls_handshake_timeouts == 1 and len(served) == 1  # ...never handed out
        await client.aclose()
        await silent.aclose()
        nursery.cancel_scope.cancel()


async def test_a_tls_connection_times_out_under_serve_listeners_too(
    ca: trustme.CA, autojump_clock: trio.testing.MockClock
) -> None:
    net = NetProcessor()
    raised: list[tuple[type[BaseException], float]] = []

    async def handler(conn: Connection) -> None:
        start = trio.current_time()
        try:
            await conn.receive_some()
        except trio.ClosedResourceError as exc:
            raised.append((type(exc), trio.current_time() - start))

    async with trio.open_nursery() as nursery:
        listener = await serving(
            nursery, net, handler, ssl_context=server_context(ca), inactivity_timeout=4
        )
        client = await tls_client(listener.port, ca)
        with pytest.raises(trio.BrokenResourceError):  # closed without close_notify
            await client.receive_some()
        await client.aclose()
        await wait_for(lambda: len(raised) == 1, "handler saw the close")
        nursery.cancel_scope.cancel()
    assert raised == [(trio.ClosedResourceError, 4.0)]
    assert net.statistics().inactivity_timeouts == 1


async def test_proxy_header_read_before_accept_returns() -> None:
    net = NetProcessor(per_client_max_connections=1)
    listener = await listen(net, proxy_protocol=True)
    async with listener:
        header = b"PROXY TCP4 203.0.113.7 192.0.2.10 %d 443\r\n"
        first = await tcp_client(listener.port)
        await first.send_all(header % 40000 + b"hello")
        conn = await listener.accept()
        assert conn.remote_address == ("203.0.113.7", 40000)
        assert conn.peer_address[0] == "127.0.0.1"
        assert await conn.receive_some() == b"hello"
        # The second relays the same client: the per-client limit refuses it.
        second = await tcp_client(listener.port)
        await second.send_all(header % 40001 + b"hello")
        assert await closed_by_server(second)
        assert net.statistics().per_client_connections_throttled_in == 1
        bad = await tcp_client(listener.port)
        await bad.send_all(b"GET / HTTP/1.1\r\n\r\n")
        assert await closed_by_server(bad)
        assert net.statistics().proxy_protocol_errors == 1
        await conn.aclose()
        for c in (first, second, bad):
            await c.aclose()
    assert net.statistics().connections_currently_open == 0


async def test_outbound_slot_reserved_for_a_proxying_handler() -> None:
    net = NetProcessor(max_connections=3)
    upstream = await listen(net)
    listener = await listen(net, reserve=True)
    async with upstream, listener:
        first = await tcp_client(listener.port)
        conn = await listener.accept()
        # Two slots held: the client's and its upstream's. A second client needs
        # two more: only one is free, so it stays in the backlog.
        second = await tcp_client(listener.port)
        await wait_for(lambda: table_of(net).parked() == 1, "accept loop parked")
        assert net.statistics().total_accepts == 1
        out = await net.connect("127.0.0.1", upstream.port, for_connection=conn)
        assert net.statistics().connections_currently_open == 2  # the reserved slot, taken
        await out.aclose()
        await conn.aclose()
        third = await listener.accept()  # the second client, now that both slots are free
        assert third.id == 3
        await third.aclose()
        for c in (first, second):
            await c.aclose()


# --------------------------------------------------- the Listener contract
async def test_listener_contract() -> None:
    net = NetProcessor()
    listener = await listen(net)
    port = listener.port
    async with trio.open_nursery() as nursery:
        assert net.statistics().accepts_currently_open == 1
        nursery.start_soon(listener.accept)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await listener.accept()
        nursery.cancel_scope.cancel()

    waiting: list[BaseException] = []

    async def accept_until_closed() -> None:
        try:
            await listener.accept()
        except trio.ClosedResourceError as exc:
            waiting.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_until_closed)
        await trio.testing.wait_all_tasks_blocked()
        await listener.aclose()  # while accept() waits: it raises ClosedResourceError
    assert len(waiting) == 1
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
    await listener.aclose()  # idempotent
    assert listener.socket.fileno() == -1 and await refused(port)
    assert net.statistics().accepts_currently_open == 0


async def test_aclose_closes_connections_not_handed_out() -> None:
    net = NetProcessor(accept_batch=4)
    listener = await listen(net)
    clients = [await tcp_client(listener.port) for _ in range(READY_LIMIT + 8)]
    taken = await listener.accept()
    # The ready queue fills to READY_LIMIT; then the loop stops accepting.
    await wait_for(lambda: net.statistics().total_accepts > READY_LIMIT, "queue full")
    await trio.testing.wait_all_tasks_blocked()
    # One taken, READY_LIMIT waiting: however the scheduler ordered the accept
    # loop and the connections' tasks, no more (the rest are in the backlog).
    assert net.statistics().total_accepts == 1 + READY_LIMIT
    await listener.aclose()
    assert net.statistics().connections_currently_open == 1  # the one handed out stays
    assert not taken.closed
    await taken.aclose()
    for client in clients:
        await client.aclose()
    assert net.statistics().connections_currently_open == 0


async def test_fatal_accept_error_is_raised_by_accept() -> None:
    net = NetProcessor()
    listener = await listen(net)
    caught: list[trionet.AcceptError] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, echo, [listener])
            # On Linux, shutdown() on a listening socket makes accept() fail with EINVAL.
            listener.socket.shutdown(socket.SHUT_RD)
    except* trionet.AcceptError as group:
        caught.extend(leaves(group))
    (error,) = caught
    assert error.errno == errno.EINVAL and f"port {listener.port}" in str(error)
    assert listener.socket.fileno() == -1  # serve_listeners closed the listener
    assert net.statistics().accepts_currently_open == 0


def leaves(group: BaseExceptionGroup[trionet.AcceptError]) -> list[trionet.AcceptError]:
    found: list[trionet.AcceptError] = []
    for exc in group.exceptions:
        found += leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found


# ------------------------------------------------------------ trio-websocket
async def ws_echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    while True:
        try:
            message = await ws.get_message()
        except trio_websocket.ConnectionClosed:
            return
        await ws.send_message(message)


async def websocket_server(
    nursery: trio.Nursery,
    net: NetProcessor,
    handler: Callable[[trio_websocket.WebSocketRequest], Awaitable[None]] = ws_echo,
    **opts: object,
) -> int:
    listener = await listen(net, **opts)
    server = trio_websocket.WebSocketServer(handler, [listener])  # type: ignore[list-item]
    await nursery.start(server.run)
    return listener.port


async def test_websocket_round_trip_through_trionet() -> None:
    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await websocket_server(nursery, net)
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/chat") as ws:
            await ws.send_message("hello")
            assert await ws.get_message() == "hello"
            await ws.send_message(b"\x00\x01binary")
            assert await ws.get_message() == b"\x00\x01binary"
        await wait_for(lambda: net.statistics().connections_currently_open == 0)
        stats = net.statistics()
        assert stats.total_accepts == 1 and stats.read_bytes > 0 and stats.write_bytes > 0
        nursery.cancel_scope.cancel()


async def test_websocket_server_keeps_trionets_limits() -> None:
    net = NetProcessor(max_connections=1)
    async with trio.open_nursery() as nursery:
        port = await websocket_server(nursery, net)
        opened = trio.Event()

        async def second_client() -> None:
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
                opened.set()
                await ws.send_message("second")
                assert await ws.get_message() == "second"

        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as first:
            await first.send_message("first")
            assert await first.get_message() == "first"
            nursery.start_soon(second_client)
            await wait_for(lambda: table_of(net).parked() == 1, "accept loop parked")
            with trio.move_on_after(0.2):
                await opened.wait()
            assert not opened.is_set()  # its upgrade request waits in the backlog
            assert net.statistics().total_accepts == 1
        await opened.wait()  # the first closed: the second is accepted and upgraded
        await wait_for(lambda: net.statistics().total_accepts == 2)
        nursery.cancel_scope.cancel()


async def test_websocket_idle_connection_ends_at_the_inactivity_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = NetProcessor()
    ended: list[tuple[float, int | None]] = []

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        start = trio.current_time()
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            ended.append((trio.current_time() - start, exc.reason.code))

    async with trio.open_nursery() as nursery:
        port = await websocket_server(nursery, net, handler, inactivity_timeout=5)
        # The client's stream is ours to close: trio-websocket's own client
        # (open_websocket_url) leaves its socket open after an abnormal closure.
        async with await tcp_client(port) as stream, trio.open_nursery() as client:
            ws = await trio_websocket.wrap_client_stream(client, stream, "127.0.0.1", "/")
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()  # the server side goes away at the timeout
        await wait_for(lambda: len(ended) == 1, "server handler ended")
        # The server survived it and serves the next client.
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            await ws.send_message("still here")
        nursery.cancel_scope.cancel()
    ((elapsed, code),) = ended
    assert elapsed == pytest.approx(5) and code == 1006  # abnormal closure: no close frame
    assert net.statistics().inactivity_timeouts == 1
