"""NetProcessor.serve: binding, accept tasks, throttle, handler failures, shutdown, statistics."""

from __future__ import annotations

import errno
import logging
import os
import socket

import pytest
import trio

import trionet
import trionet._inbound._listen
import trionet._inbound._server
from trionet import AcceptOptions, NetProcessor
from trionet._apps._workers._sockets import plan_listeners
from trionet._inbound._accept import on_accept_error
from trionet._processor import accept_policy_of, table_of

from .conftest import Handler, recv_exactly, start_server, tcp_client, wait_for


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def test_serve_ephemeral_port_both_families(nursery: trio.Nursery) -> None:
    net = NetProcessor()
    server = await start_server(nursery, net, echo, AcceptOptions(localhost_only=True))
    families = sorted(listener.family for listener in server.listeners)
    assert families == [socket.AF_INET, socket.AF_INET6]
    assert len(server.ports) == 1 and server.ports[0] > 0  # same port on both
    assert net.statistics().accepts_currently_open == 2  # one accept task per socket
    for host in ("127.0.0.1", "::1"):
        stream = await tcp_client(server.ports[0], host)
        await stream.send_all(b"ping " + host.encode())
        assert await recv_exactly(stream, 5 + len(host)) == b"ping " + host.encode()
        await stream.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)
    stats = net.statistics()
    assert stats.total_accepts == 2
    assert stats.read_bytes == stats.write_bytes == 2 * 5 + len("127.0.0.1") + len("::1")


@pytest.mark.parametrize("entry", ["open_listeners", "worker_plan"])
async def test_ephemeral_port_taken_on_the_second_address_is_bound_again(
    monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    # Port 0 on 127.0.0.1 and ::1: the port the IPv4 socket got may be held on
    # ::1 by another program (a CI run failed on exactly that). Force the
    # collision for real: before the first ::1 bind, another socket takes
    # [::1]:P. open_listeners must close its IPv4 socket and start over on a
    # fresh port, not fail, and leave no socket of the failed attempt open.
    real_bind = trionet._inbound._listen.bind_socket
    blockers: list[socket.socket] = []
    opened: list[socket.socket] = []

    def bind_with_collision(
        family: int, sockaddr: trionet.SocketAddress, opts: AcceptOptions
    ) -> socket.socket | None:
        if family == socket.AF_INET6 and not blockers:
            blocker = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            blocker.bind(("::1", sockaddr[1]))
            blocker.listen(1)
            blockers.append(blocker)
        sock = real_bind(family, sockaddr, opts)
        if sock is not None:
            opened.append(sock)
        return sock

    monkeypatch.setattr(trionet._inbound._listen, "bind_socket", bind_with_collision)
    opts = AcceptOptions(localhost_only=True)
    sockets: list[socket.socket]
    if entry == "open_listeners":
        sockets = [lst.socket for lst in await trionet._inbound._listen.open_listeners(opts)]
    else:  # the worker supervisor's SO_REUSEPORT sockets (one worker's)
        plan = await plan_listeners([opts], "reuseport")
        sockets = list(plan.held)
        assert len({spec.port for spec in plan.listen_for(0)}) == 1
    try:
        assert sorted(sock.family for sock in sockets) == [socket.AF_INET, socket.AF_INET6]
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1
        assert ports != {blockers[0].getsockname()[1]}
        assert opened[0].fileno() == -1  # the IPv4 socket of the failed try is closed
    finally:
        for sock in sockets:
            sock.close()
        for blocker in blockers:
            blocker.close()


async def test_explicit_port_taken_on_the_second_address_is_not_retried() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as blocker:
        blocker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        blocker.bind(("::1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on \[::1\]:{port}") as info:
            await trionet._inbound._listen.open_listeners(
                AcceptOptions(localhost_only=True, port=port)
            )
        assert info.value.errno == errno.EADDRINUSE


async def test_several_listen_specs_one_accept_task_each(nursery: trio.Nursery) -> None:
    net = NetProcessor()
    server = await start_server(
        nursery, net, echo, AcceptOptions(host="127.0.0.1"), AcceptOptions(host="::1")
    )
    assert len(server.ports) == 2 and server.ports[0] != server.ports[1]
    assert net.statistics().accepts_currently_open == 2
    server.shutdown(0)
    await server.wait_closed()
    assert net.statistics().accepts_currently_open == 0


async def test_serve_needs_a_port() -> None:
    with pytest.raises(ValueError, match="at least one port"):
        await NetProcessor().serve(echo)


async def test_bind_failure_names_address_and_closes_everything(nursery: trio.Nursery) -> None:
    net = NetProcessor()
    first = await start_server(nursery, net, echo)
    port = first.ports[0]
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}") as info:
        await net.serve(
            echo, AcceptOptions(host="127.0.0.1"), AcceptOptions(host="127.0.0.1", port=port)
        )
    assert info.value.errno == errno.EADDRINUSE


async def test_socket_options_reach_accepted_sockets(nursery: trio.Nursery) -> None:
    seen: dict[str, object] = {}
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        seen["nodelay"] = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        seen["keepalive"] = conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        seen["tos"] = conn.getsockopt(socket.IPPROTO_IP, socket.IP_TOS)
        seen["linger"] = conn.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)
        seen["mark"] = conn.getsockopt(socket.SOL_SOCKET, 36)
        done.set()

    opts = trionet.SocketOptions(nodelay=True, keepalive=True, tos=0x10, linger=3, mark=7)
    net = NetProcessor()
    server = await start_server(nursery, net, handler, AcceptOptions(host="127.0.0.1", socket=opts))
    lsock = server.listeners[0].socket
    assert lsock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    stream = await tcp_client(server.ports[0])
    await done.wait()
    assert seen["nodelay"] == 1 and seen["keepalive"] == 1 and seen["tos"] == 0x10
    assert seen["linger"] == (1).to_bytes(4, "little") + (3).to_bytes(4, "little")
    assert seen["mark"] == 7
    await stream.aclose()


async def test_missing_platform_option_fails_at_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from trionet._base import _sockopt

    real = _sockopt._const
    monkeypatch.setattr(
        _sockopt, "_const", lambda name: None if name == "TCP_NOTSENT_LOWAT" else real(name)
    )
    opts = AcceptOptions(host="127.0.0.1", socket=trionet.SocketOptions(notsent_lowat=16384))
    with pytest.raises(trionet.UnsupportedOptionError, match=r"notsent_lowat.*TCP_NOTSENT_LOWAT"):
        await NetProcessor().serve(echo, opts)


# ------------------------------------------------------------------ throttle
async def test_throttle_pause_waits_in_backlog_and_resumes(nursery: trio.Nursery) -> None:
    release = trio.Event()
    served: list[int] = []

    async def handler(conn: trionet.Connection) -> None:
        served.append(conn.id)
        await conn.send_all(b"hi")
        if len(served) <= 2:
            await release.wait()

    net = NetProcessor(max_connections=2)
    server = await start_server(nursery, net, handler)
    clients = [await tcp_client(server.ports[0]) for _ in range(3)]
    await wait_for(lambda: len(served) == 2, "two handlers")
    # The accept task is parked (event-driven, not polling): it is the only waiter.
    await wait_for(lambda: table_of(net).parked() == 1, "accept parked")
    await trio.sleep(0.05)
    assert len(served) == 2 and net.statistics().connections_currently_open == 2
    assert net.statistics().total_accepts == 2
    release.set()
    assert await recv_exactly(clients[2], 2) == b"hi"  # the third is served once a slot frees
    assert len(served) == 3 and net.statistics().connections_throttled_in == 0
    for c in clients:
        await c.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)


async def test_throttle_close_accepts_and_closes(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    hold = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(b"ok")
        await hold.wait()

    net = NetProcessor(max_connections=1, throttle="close")
    server = await start_server(nursery, net, handler)
    first = await tcp_client(server.ports[0])
    assert await recv_exactly(first, 2) == b"ok"
    with caplog.at_level(logging.WARNING, logger="trionet.server"):
        for _ in range(3):
            extra = await tcp_client(server.ports[0])
            assert await extra.receive_some() == b""  # accepted, then closed at once
            await extra.aclose()
    assert net.statistics().connections_throttled_in == 3
    throttling = [r for r in caplog.records if "too many connections" in r.getMessage()]
    assert len(throttling) == 1  # rate-limited: once per 10 minutes
    hold.set()
    await first.aclose()


async def test_per_client_limit_exempt_and_backdoor(nursery: trio.Nursery) -> None:
    hold = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(b"ok")
        await hold.wait()

    net = NetProcessor(per_client_max_connections=1, per_client_exempt=["::1/128"])
    server = await start_server(
        nursery,
        net,
        handler,
        AcceptOptions(host="127.0.0.1"),
        AcceptOptions(host="::1"),
        AcceptOptions(host="127.0.0.1", backdoor=True),
    )
    v4, v6, backdoor = server.ports
    first = await tcp_client(v4)
    assert await recv_exactly(first, 2) == b"ok"
    second = await tcp_client(v4)
    assert await second.receive_some() == b""  # same client, over its limit
    assert net.statistics().per_client_connections_throttled_in == 1
    exempt = [await tcp_client(v6, "::1") for _ in range(3)]
    for s in exempt:
        assert await recv_exactly(s, 2) == b"ok"
    door = [await tcp_client(backdoor) for _ in range(2)]
    for s in door:
        assert await recv_exactly(s, 2) == b"ok"
    assert net.statistics().per_client_connections_throttled_in == 1
    hold.set()
    for s in [first, second, *exempt, *door]:
        await s.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)
    assert table_of(net).throttle.per_client == {}


async def test_backdoor_ignores_global_limit(nursery: trio.Nursery) -> None:
    hold = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(b"ok")
        await hold.wait()

    net = NetProcessor(max_connections=1)
    server = await start_server(
        nursery,
        net,
        handler,
        AcceptOptions(host="127.0.0.1"),
        AcceptOptions(host="127.0.0.1", backdoor=True),
    )
    normal = await tcp_client(server.ports[0])
    assert await recv_exactly(normal, 2) == b"ok"
    health = await tcp_client(server.ports[1])
    assert await recv_exactly(health, 2) == b"ok"  # served although at the limit
    assert net.statistics().connections_currently_open == 2
    hold.set()
    await normal.aclose()
    await health.aclose()


async def test_fair_accept_yields_after_a_batch(nursery: trio.Nursery) -> None:
    net = NetProcessor(accept_batch=4)
    server = await start_server(nursery, net, echo)
    established = await tcp_client(server.ports[0])
    await established.send_all(b"a")
    assert await recv_exactly(established, 1) == b"a"
    flood = []
    for _ in range(64):  # complete in the kernel backlog, not yet accepted
        s = socket.socket()
        s.connect(("127.0.0.1", server.ports[0]))
        flood.append(s)
    await established.send_all(b"b")
    assert await recv_exactly(established, 1) == b"b"
    # The echo was served while the flood was still being accepted in batches.
    assert net.statistics().total_accepts < 1 + 64
    for s in flood:
        s.close()
    await established.aclose()


# ------------------------------------------------------------ handler errors
async def test_handler_exception_is_logged_counted_and_isolated(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(conn: trionet.Connection) -> None:
        data = await conn.receive_some()
        if data == b"boom":
            raise RuntimeError("handler bug")
        await conn.send_all(data)

    net = NetProcessor()
    server = await start_server(nursery, net, handler)
    with caplog.at_level(logging.ERROR, logger="trionet.server"):
        bad = await tcp_client(server.ports[0])
        await bad.send_all(b"boom")
        assert await bad.receive_some() == b""  # its connection was closed
        good = await tcp_client(server.ports[0])
        await good.send_all(b"fine")
        assert await recv_exactly(good, 4) == b"fine"
    assert net.statistics().handler_errors == 1
    (record,) = [r for r in caplog.records if r.name == "trionet.server"]
    assert record.exc_info is not None and "handler bug" in str(record.exc_info[1])
    await bad.aclose()
    await good.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)


async def test_propagate_handler_errors_opt_in() -> None:
    async def handler(conn: trionet.Connection) -> None:
        raise KeyError("propagated")

    net = NetProcessor(propagate_handler_errors=True)
    clients = []
    with pytest.RaisesGroup(pytest.RaisesExc(KeyError, match="propagated"), flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, net, handler)
            clients.append(await tcp_client(server.ports[0]))
    await clients[0].aclose()
    assert net.statistics().handler_errors == 1
    assert net.statistics().connections_currently_open == 0


# ------------------------------------------------- gauge back to 0, every way
async def test_gauge_zero_after_eof_reset_and_exception(nursery: trio.Nursery) -> None:
    async def handler(conn: trionet.Connection) -> None:
        data = await conn.receive_some()
        if data == b"raise":
            raise ValueError("x")
        while data:
            data = await conn.receive_some()

    net = NetProcessor()
    server = await start_server(nursery, net, handler)
    port = server.ports[0]
    eof = await tcp_client(port)
    await eof.send_all(b"hello")
    reset = socket.socket()
    reset.connect(("127.0.0.1", port))
    reset.sendall(b"hello")
    exc = await tcp_client(port)
    await exc.send_all(b"raise")
    await wait_for(lambda: net.statistics().total_accepts == 3)
    await eof.aclose()
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    reset.close()
    await wait_for(lambda: net.statistics().connections_currently_open == 0, "gauge at 0")
    assert net.statistics().handler_errors == 1
    await exc.aclose()


async def test_gauge_zero_after_cancelling_serve() -> None:
    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, echo)
        clients = [await tcp_client(server.ports[0]) for _ in range(5)]
        await wait_for(lambda: net.statistics().connections_currently_open == 5)
        nursery.cancel_scope.cancel()
    stats = net.statistics()
    assert stats.connections_currently_open == 0 and stats.accepts_currently_open == 0
    for c in clients:
        assert await c.receive_some() == b""
        await c.aclose()


# ------------------------------------------------------------ graceful shutdown
async def test_shutdown_closes_port_then_waits_for_handlers(autojump_clock: object) -> None:
    finished: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        await trio.sleep(3)
        await conn.send_all(b"done")
        finished.append(trio.current_time())

    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, handler)
        port = server.ports[0]
        client = await tcp_client(port)
        await wait_for(lambda: net.statistics().connections_currently_open == 1)
        t0 = trio.current_time()
        server.shutdown(grace=10)
        await trio.sleep(0.01)
        with pytest.raises(OSError):
            await tcp_client(port)  # the port closed at once
        await server.wait_closed()
    assert finished and finished[0] - t0 < 10  # handler finished within the grace period
    assert await recv_exactly(client, 4) == b"done"
    assert net.statistics().connections_currently_open == 0
    await client.aclose()


async def test_shutdown_cancels_after_grace_exactly(autojump_clock: object) -> None:
    cancelled_at: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, handler)
        client = await tcp_client(server.ports[0])
        await wait_for(lambda: net.statistics().connections_currently_open == 1)
        t0 = trio.current_time()
        server.shutdown(grace=2.5)
        await server.wait_closed()
    assert cancelled_at == [pytest.approx(t0 + 2.5, abs=1e-6)]
    assert net.statistics().connections_currently_open == 0
    await client.aclose()


async def test_shutdown_loses_no_byte_already_passed_to_send_all() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB, far more than the socket buffers
    started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        started.set()
        await conn.send_all(payload)

    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, handler)
        client = await tcp_client(server.ports[0])
        await started.wait()
        server.shutdown(grace=30)  # mid-transfer
        got = bytearray()
        while chunk := await client.receive_some(65536):
            got += chunk
        await server.wait_closed()
    assert bytes(got) == payload
    await client.aclose()


# --------------------------------------------------------------- accept errors
async def test_fatal_accept_error_names_port_and_errno() -> None:
    net = NetProcessor()
    caught: list[trionet.AcceptError] = []
    try:
        async with trio.open_nursery() as nursery:
            server = await start_server(nursery, net, echo)
            port = server.ports[0]
            # On Linux, shutdown() on a listening socket makes accept() fail with EINVAL.
            server.listeners[0].socket.shutdown(socket.SHUT_RD)
    except* trionet.AcceptError as group:
        caught.extend(group.exceptions)  # type: ignore[arg-type]
    (error,) = caught
    assert error.errno == errno.EINVAL
    assert f"port {port}" in str(error) and "EINVAL" in str(error)
    assert net.statistics().accepts_currently_open == 0


# Errors Linux's accept(2) passes on from the new connection, and EPERM from a
# firewall: each loses one connection, never the listening socket.
RETRIED_NETWORK_ERRNOS = [
    getattr(errno, name)
    for name in (
        "EPERM",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
    )
    if hasattr(errno, name)
]


@pytest.mark.parametrize(
    ("code", "counter"),
    [
        (errno.ECONNABORTED, None),
        (errno.EAGAIN, "accept_errors_transient"),
        (errno.ECONNRESET, "accept_errors_transient"),
        (errno.EPIPE, "accept_errors_transient"),
        *[(code, "accept_errors_transient") for code in RETRIED_NETWORK_ERRNOS],
        (errno.EMFILE, "accept_errors_resource"),
        (errno.ENFILE, "accept_errors_resource"),
        (errno.ENOBUFS, "accept_errors_resource"),
        (errno.ENOMEM, "accept_errors_resource"),
        (errno.EINTR, "accept_errors_resource"),
    ],
)
async def test_accept_error_classes(code: int, counter: str | None, autojump_clock: object) -> None:
    net = NetProcessor(accept_error_pause=0.05)
    with socket.socket() as sock:
        listener = trionet.Listener(sock, AcceptOptions(), ("127.0.0.1", 1234))
        t0 = trio.current_time()
        await on_accept_error(
            OSError(code, "injected"), listener.port, table_of(net).counters, accept_policy_of(net)
        )
        waited = trio.current_time() - t0
    stats = net.statistics()
    assert stats.accept_errors_transient == (counter == "accept_errors_transient")
    assert stats.accept_errors_resource == (counter == "accept_errors_resource")
    assert waited == pytest.approx(0.05 if counter == "accept_errors_resource" else 0.0)


@pytest.mark.parametrize("code", [errno.EBADF, errno.EINVAL, errno.ENOTSOCK, errno.EFAULT])
async def test_fatal_accept_error_classes(code: int) -> None:
    net = NetProcessor()
    with socket.socket() as sock:
        listener = trionet.Listener(sock, AcceptOptions(), ("127.0.0.1", 1234))
        with pytest.raises(
            trionet.AcceptError, match=f"port 1234 failed with {errno.errorcode[code]}"
        ):
            await on_accept_error(
                OSError(code, os.strerror(code)),
                listener.port,
                table_of(net).counters,
                accept_policy_of(net),
            )


class DroppingListenSocket:
    """A listening socket whose next ``accept()`` calls fail with queued errnos.

    Each failing call takes the pending connection off the queue, closes it and
    raises, as Linux's accept(2) does with an error pending on the new
    connection; everything else goes to the real socket.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.errors: list[int] = []

    def accept(self) -> tuple[socket.socket, object]:
        client, addr = self._sock.accept()  # BlockingIOError passes through
        if self.errors:
            client.close()
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return client, addr

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.fixture
def dropping_sockets(monkeypatch: pytest.MonkeyPatch) -> list[DroppingListenSocket]:
    """Every listener serve() opens gets a DroppingListenSocket; they are listed here."""
    wrapped: list[DroppingListenSocket] = []
    real_open = trionet._inbound._listen.open_listeners

    async def open_listeners(opts: AcceptOptions) -> list[trionet.Listener]:
        listeners = await real_open(opts)
        for listener in listeners:
            wrapped.append(DroppingListenSocket(listener.socket))
            listener.socket = wrapped[-1]  # type: ignore[assignment]
        return listeners

    monkeypatch.setattr(trionet._inbound._server, "open_listeners", open_listeners)
    return wrapped


async def test_network_accept_errors_are_retried_and_the_server_keeps_serving(
    nursery: trio.Nursery, dropping_sockets: list[DroppingListenSocket]
) -> None:
    net = NetProcessor()
    server = await start_server(nursery, net, echo)
    (wrapper,) = dropping_sockets
    wrapper.errors = list(RETRIED_NETWORK_ERRNOS)
    # One client per errno: each is dropped by its accept() failure...
    for _ in RETRIED_NETWORK_ERRNOS:
        dropped = await tcp_client(server.ports[0])
        with pytest.raises(trio.BrokenResourceError):  # RST: closed with nothing read
            await dropped.send_all(b"x" * 100_000)
            await dropped.receive_some(1)
        await dropped.aclose()
    await wait_for(lambda: not wrapper.errors, "every injected error")
    # ...and the next one is served as if nothing had happened.
    client = await tcp_client(server.ports[0])
    await client.send_all(b"still serving")
    assert await recv_exactly(client, 13) == b"still serving"
    await client.aclose()
    stats = net.statistics()
    assert stats.accept_errors_transient == len(RETRIED_NETWORK_ERRNOS)
    assert stats.total_accepts == 1
    assert stats.accepts_currently_open == 1 and not server.stopping


async def serve_until_accept_error(
    net: NetProcessor,
    handler: Handler,
    outcome: list[tuple[float, trionet.AcceptError]],
    *,
    task_status: trio.TaskStatus[trionet.Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``net.serve(handler)`` on 127.0.0.1; records when and with what it raised."""
    try:
        await net.serve(handler, AcceptOptions(host="127.0.0.1"), task_status=task_status)
    except trionet.AcceptError as exc:
        outcome.append((trio.current_time(), exc))


async def fail_accept(server: trionet.Server) -> float:
    """Make the server's listening socket fail for real and return when it did."""
    # On Linux, shutdown() on a listening socket makes accept() fail with EINVAL.
    server.listeners[0].socket.shutdown(socket.SHUT_RD)
    await wait_for(lambda: server.stopping, "the accept error")
    return trio.current_time()


async def test_fatal_accept_error_lets_open_connections_finish(
    caplog: pytest.LogCaptureFixture, autojump_clock: object
) -> None:
    net = NetProcessor()  # accept_error_grace: the default, 5 s
    outcome: list[tuple[float, trionet.AcceptError]] = []
    with caplog.at_level(logging.ERROR, logger="trionet.server"):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_until_accept_error, net, echo, outcome)
            port = server.ports[0]
            client = await tcp_client(port)
            await client.send_all(b"before")
            assert await recv_exactly(client, 6) == b"before"
            t_error = await fail_accept(server)
            with pytest.raises(OSError):
                await tcp_client(port)  # not accepting any more
            await trio.sleep(1)
            await client.send_all(b"after the error")  # the open connection lives on
            assert await recv_exactly(client, 15) == b"after the error"
            assert outcome == []  # serve() waits for it...
            await client.aclose()
    # ...and raises once it has ended, well within the grace period.
    ((ended, error),) = outcome
    assert error.errno == errno.EINVAL
    assert t_error + 1 <= ended < t_error + 1.1
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert f"accept on port {port} failed with EINVAL" in record.getMessage()
    assert "open ones get 5.0 s to finish" in record.getMessage()
    stats = net.statistics()
    assert stats.connections_currently_open == 0 and stats.accepts_currently_open == 0
    assert stats.read_bytes == stats.write_bytes == 6 + 15


async def test_fatal_accept_error_cancels_connections_after_the_grace(
    autojump_clock: object,
) -> None:
    cancelled_at: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    net = NetProcessor(accept_error_grace=2.5)
    outcome: list[tuple[float, trionet.AcceptError]] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_until_accept_error, net, handler, outcome)
        client = await tcp_client(server.ports[0])
        await wait_for(lambda: net.statistics().connections_currently_open == 1)
        t_error = await fail_accept(server)
    ((ended, error),) = outcome
    assert error.errno == errno.EINVAL
    assert cancelled_at == [pytest.approx(t_error + 2.5, abs=0.01)]
    assert ended == pytest.approx(t_error + 2.5, abs=0.01)
    assert net.statistics().connections_currently_open == 0
    assert await client.receive_some(10) == b""  # closed by the server
    await client.aclose()


@pytest.mark.parametrize("grace", [-1, None, float("nan"), "5"])
def test_accept_error_grace_is_checked(grace: object) -> None:
    with pytest.raises(ValueError, match=rf"NetProcessor\.accept_error_grace={grace!r}"):
        NetProcessor(accept_error_grace=grace)  # type: ignore[arg-type]


def test_shutdown_grace_must_be_seconds() -> None:
    server = trionet.Server(NetProcessor(), [])
    with pytest.raises(ValueError, match=r"Server\.shutdown\.grace=None"):
        server.shutdown(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Server\.shutdown\.grace=-1"):
        server.shutdown(-1)
    assert not server.stopping
