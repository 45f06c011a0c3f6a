"""Data integrity through the proxy (issue 11): an abort stays an abort on the
other side (RST, no TLS close_notify) -- for resets, timeouts and a shutdown's
grace deadline; a clean EOF stays a half-close that loses no byte, also with
TLS on one side; a proxy session is admitted only with its upstream slot; and
inactivity is judged per session (HAProxy's ``timeout tunnel``).

Everything runs over real loopback sockets (trustme certificates for TLS);
timing assertions use the autojump clock."""

from __future__ import annotations

import dataclasses
import importlib.util
import signal
import socket
import ssl
import struct
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing
import trustme

import trionet
import trionet.iocore
from trionet import AcceptOptions, Connection, ConnectOptions, NetProcessor, TcpProxy
from trionet._processor import table_of

from .conftest import connection_pair, recv_exactly, wait_for
from .running import Running

Handler = Callable[[Connection], Awaitable[object]]
LINGER_RST = struct.pack("ii", 1, 0)
TWO_MIB = 2 * 1024 * 1024


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("proxy.example").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@dataclass
class Seen:
    """What an upstream handler saw on one connection."""

    data: bytearray = field(default_factory=bytearray)
    ending: str | None = None  # "eof" or "reset"
    conn: Connection | None = None
    done: trio.Event = field(default_factory=trio.Event)
    got: int = 0  # bytes received so far, for waiting on progress


async def read_until_end(stream: trio.abc.ReceiveStream, seen: Seen) -> None:
    """Read until EOF or an error, recording the bytes and how it ended."""
    try:
        while chunk := await stream.receive_some(65536):
            seen.data += chunk
            seen.got += len(chunk)
        seen.ending = "eof"
    except trio.BrokenResourceError:
        seen.ending = "reset"
    finally:
        seen.done.set()


async def ending_of(stream: trio.abc.ReceiveStream) -> tuple[str, int]:
    """Read to the end; ``("eof", n)`` or ``("reset", n)``."""
    seen = Seen()
    await read_until_end(stream, seen)
    assert seen.ending is not None
    return seen.ending, len(seen.data)


async def reset(stream: trio.SocketStream) -> None:
    """Abort a client stream: SO_LINGER 0, then close -> RST."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    await stream.aclose()


@asynccontextmanager
async def proxy_setup(
    upstream: Handler,
    *,
    accept: dict[str, Any] | None = None,
    connect: ConnectOptions | None = None,
    upstream_accept: dict[str, Any] | None = None,
    **net_kw: Any,
) -> AsyncIterator[tuple[NetProcessor, TcpProxy, trionet.Server]]:
    """An upstream server running ``upstream`` and a TcpProxy in front of it."""
    async with trio.open_nursery() as nursery:
        up = NetProcessor()
        up_opts = AcceptOptions(host="127.0.0.1", **(upstream_accept or {}))
        up_server = await nursery.start(up.serve, upstream, up_opts)
        net = NetProcessor(**net_kw)
        proxy = TcpProxy(net, "127.0.0.1", up_server.ports[0], connect)
        opts = AcceptOptions(host="127.0.0.1", **(accept or {}))
        server = await nursery.start(net.serve, proxy, opts)
        yield net, proxy, server
        nursery.cancel_scope.cancel()


async def tls_connect(port: int, ctx: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="proxy.example")
    await stream.do_handshake()
    return stream


async def all_closed(net: NetProcessor) -> None:
    await wait_for(lambda: net.statistics().connections_currently_open == 0, "gauge at 0")
    assert table_of(net).throttle.open == 0


# ======================================================= Connection.abort()
async def test_connection_abort_sends_reset_and_releases_once() -> None:
    net = NetProcessor()
    a, b = await connection_pair(net)
    await a.send_all(b"unsent? no: sent, then the reset")
    assert net.statistics().connections_currently_open == 2
    a.abort()
    a.abort()  # idempotent
    await a.aclose()  # and a later orderly close does nothing more
    assert a.closed and net.statistics().connections_currently_open == 1
    # The bytes already delivered can be read, then the reset, never an EOF.
    assert await b.receive_some() == b"unsent? no: sent, then the reset"
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()
    assert b.broken and not a.broken
    b.close()
    assert net.statistics().connections_currently_open == 0


async def test_linked_activity_is_folded_in_when_the_splice_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While linked, each side's deadline follows the pair's latest activity;
    after unlinking, that activity stays each side's own, so no deadline the
    cop armed during the splice is later than the real one."""
    net = NetProcessor()
    a, b = await connection_pair(net)
    a.inactivity_timeout = 5
    b.inactivity_timeout = 5
    with a._linked(b):
        await trio.sleep(4)
        await a.send_all(b"x")  # activity on a only
        assert b._deadline() == (trio.current_time() + 5, "inactivity")
    assert (a._peer, b._peer) == (None, None)
    assert b._deadline() == (trio.current_time() + 5, "inactivity")
    assert b.last_activity == a.last_activity
    a.close()
    b.close()


# ====================================================== an abort stays an abort
async def test_client_reset_mid_upload_reaches_upstream_as_reset() -> None:
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await read_until_end(conn, seen)

    async with proxy_setup(upstream) as (net, proxy, server):
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await client.send_all(b"u" * 100_000)
        await wait_for(lambda: seen.got == 100_000, "upload relayed")
        await reset(client)
        with trio.fail_after(5):
            await seen.done.wait()
        await all_closed(net)
    assert (seen.ending, len(seen.data)) == ("reset", 100_000)
    assert proxy.statistics().resets == 1


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls-client"])
async def test_upstream_reset_mid_download_reaches_client_as_reset(
    tls: bool, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """With TLS on the listening side the client must not get close_notify
    (TLS's authenticated "complete") after the upstream reset."""
    received = trio.Event()

    async def upstream(conn: Connection) -> None:
        await conn.send_all(b"d" * 50_000)
        await received.wait()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()

    accept = {"ssl_context": server_ctx} if tls else {}
    async with proxy_setup(upstream, accept=accept) as (net, proxy, server):
        port = server.ports[0]
        client: trio.abc.Stream
        client = (
            await tls_connect(port, client_ctx)
            if tls
            else await trio.open_tcp_stream("127.0.0.1", port)
        )
        assert await recv_exactly(client, 50_000) == b"d" * 50_000
        received.set()
        with trio.fail_after(5):
            assert await ending_of(client) == ("reset", 0)
        await client.aclose()
        await all_closed(net)
    assert proxy.statistics().resets == 1


async def test_tls_client_reset_mid_upload_reaches_upstream_as_reset(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await read_until_end(conn, seen)

    async with proxy_setup(upstream, accept={"ssl_context": server_ctx}) as (net, _proxy, server):
        client = await tls_connect(server.ports[0], client_ctx)
        await client.send_all(b"u" * 30_000)
        await wait_for(lambda: seen.got == 30_000, "upload relayed")
        await reset(client.transport_stream)
        with trio.fail_after(5):
            await seen.done.wait()
        await all_closed(net)
    assert (seen.ending, len(seen.data)) == ("reset", 30_000)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls-client"])
async def test_shutdown_grace_cut_aborts_both_sides(
    tls: bool,
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A session still running when the grace deadline passes is cut: both
    peers see an abort at that moment, not a clean end."""
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await conn.send_all(b"part of a response")
        await read_until_end(conn, seen)

    accept = {"ssl_context": server_ctx} if tls else {}
    async with proxy_setup(upstream, accept=accept) as (net, proxy, server):
        port = server.ports[0]
        client: trio.abc.Stream
        client = (
            await tls_connect(port, client_ctx)
            if tls
            else await trio.open_tcp_stream("127.0.0.1", port)
        )
        await client.send_all(b"part of a request")
        assert await recv_exactly(client, 18) == b"part of a response"
        start = trio.current_time()
        server.shutdown(grace=2.5)
        with trio.fail_after(10):
            assert await ending_of(client) == ("reset", 0)
            await seen.done.wait()
        assert trio.current_time() - start == pytest.approx(2.5, abs=0.01)
        await client.aclose()
        await all_closed(net)
    assert (seen.ending, bytes(seen.data)) == ("reset", b"part of a request")
    assert proxy.statistics().cut == 1


async def test_timeout_cut_aborts_both_sides(autojump_clock: trio.testing.MockClock) -> None:
    """A session ended by an inactivity timeout is cut, not completed: the
    upstream sees a reset, and so does the client."""
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await read_until_end(conn, seen)

    connect = ConnectOptions(inactivity_timeout=4)
    async with proxy_setup(upstream, connect=connect) as (net, proxy, server):
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await client.send_all(b"half a request")
        start = trio.current_time()
        with trio.fail_after(10):
            assert await ending_of(client) == ("reset", 0)
            await seen.done.wait()
        assert trio.current_time() - start == pytest.approx(4, abs=0.01)
        await client.aclose()
        await all_closed(net)
    assert (seen.ending, bytes(seen.data)) == ("reset", b"half a request")
    assert proxy.statistics().timeouts == 1


# ============================================ a clean EOF loses no byte (TLS)
async def test_tls_client_upstream_half_closes_first_loses_no_byte(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The upstream answers and half-closes while the TLS client is still
    sending a 2 MiB request: every byte of the request reaches the upstream,
    then a clean EOF (the client's close_notify, forwarded as a FIN)."""
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await conn.send_all(b"early answer")
        await conn.send_eof()
        await read_until_end(conn, seen)

    async with proxy_setup(upstream, accept={"ssl_context": server_ctx}) as (net, proxy, server):
        client = await tls_connect(server.ports[0], client_ctx)
        answer = b""

        async def read_answer() -> None:
            nonlocal answer
            answer = await recv_exactly(client, 12)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_answer)
                await client.send_all(bytes(range(256)) * (TWO_MIB // 256))
            await client.aclose()
            await seen.done.wait()
        await all_closed(net)
    assert answer == b"early answer"
    assert seen.ending == "eof"
    assert len(seen.data) == TWO_MIB and seen.data == bytes(range(256)) * (TWO_MIB // 256)
    assert proxy.statistics().resets == 0


async def test_tls_upstream_client_half_closes_first_loses_no_byte(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    """The mirror case: a plain client half-closes after its request; the
    upstream is TLS (no half-close), so the request's end cannot be forwarded
    -- the answer must still come back, then the client's EOF."""
    request = b"r" * 300_000

    async def upstream(conn: Connection) -> None:
        got = await recv_exactly(conn, len(request))
        await conn.send_all(b"got %d bytes" % len(got))

    connect = ConnectOptions(ssl_context=client_ctx, server_hostname="proxy.example")
    async with proxy_setup(
        upstream, connect=connect, upstream_accept={"ssl_context": server_ctx}
    ) as (net, proxy, server):
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await client.send_all(request)
        await client.send_eof()
        with trio.fail_after(10):
            assert await ending_of(client) == ("eof", 16)
        await client.aclose()
        await all_closed(net)
    stats_p = proxy.statistics()
    assert dataclasses.replace(stats_p, upstreams=()) == trionet.ProxyStatistics(sessions=1)
    assert [(u.sessions, u.open, u.failures) for u in stats_p.upstreams] == [(1, 0, 0)]


# ===================================================== slot pairing (throttle)
async def echo_upstream(conn: Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def short_client(port: int, payload: bytes) -> bytes:
    with trio.fail_after(30):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client:
            await client.send_all(payload)
            await client.send_eof()
            out = b""
            while chunk := await client.receive_some():
                out += chunk
            return out


async def test_pause_mode_drops_no_client_of_many_concurrent() -> None:
    """max_connections=6 holds three sessions; 60 concurrent clients all get
    their answer (they wait in the backlog), none is accepted and dropped."""
    results: dict[int, bytes] = {}

    async def one(i: int, port: int) -> None:
        results[i] = await short_client(port, b"client %d" % i)

    async with proxy_setup(echo_upstream, max_connections=6) as (net, proxy, server):
        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(one, i, server.ports[0])
        await all_closed(net)
        stats = net.statistics()
    assert results == {i: b"client %d" % i for i in range(60)}
    assert proxy.statistics().upstream_failures == 0
    assert (stats.connections_throttled_out, stats.connections_throttled_in) == (0, 0)
    assert (stats.total_accepts, stats.connects_total) == (60, 60)


async def test_pause_mode_smallest_limit_serves_everyone() -> None:
    """max_connections=2 (one session) serves clients arriving five at a time:
    each waits for the session before it, none is dropped."""
    results: list[bytes] = []

    async def one(i: int, port: int) -> None:
        results.append(await short_client(port, b"#%d" % i))

    async with proxy_setup(echo_upstream, max_connections=2) as (net, proxy, server):
        for batch in range(10):
            async with trio.open_nursery() as nursery:
                for i in range(5):
                    nursery.start_soon(one, batch * 5 + i, server.ports[0])
        await all_closed(net)
    assert sorted(results) == sorted(b"#%d" % i for i in range(50))
    assert proxy.statistics().upstream_failures == 0
    assert net.statistics().connections_throttled_out == 0


async def test_limit_below_a_session_is_refused_at_serve() -> None:
    net = NetProcessor(max_connections=1)
    proxy = TcpProxy(net, "127.0.0.1", 9)
    with trio.fail_after(5), pytest.raises(ValueError, match=r"max_connections=1: .*2 connections"):
        await net.serve(proxy, AcceptOptions(host="127.0.0.1"))
    assert table_of(net).throttle.open == 0


async def test_close_mode_refuses_at_accept_never_after_connect() -> None:
    """max_connections=5 holds two sessions (4 slots); a third client is
    refused at accept and counted there, not accepted and then dropped
    because its upstream connect hit the limit."""
    release = trio.Event()

    async def hold(conn: Connection) -> None:
        await conn.send_all(b"hello")
        await release.wait()

    async with proxy_setup(hold, max_connections=5, throttle="close") as (net, proxy, server):
        port = server.ports[0]
        held = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        for c in held:
            assert await recv_exactly(c, 5) == b"hello"
        third = await trio.open_tcp_stream("127.0.0.1", port)
        assert await ending_of(third) == ("eof", 0)
        stats = net.statistics()
        assert (stats.connections_throttled_in, stats.connections_throttled_out) == (1, 0)
        assert proxy.statistics().upstream_failures == 0
        assert (stats.total_accepts, stats.connects_total) == (2, 2)
        release.set()
        for c in [*held, third]:
            await c.aclose()
        await all_closed(net)


async def test_reserved_slot_released_once_when_upstream_fails() -> None:
    """The slot reserved for a session's upstream is handed to the connect and
    given back exactly once when the connect fails (and once, at close, when
    it is never used): the limit still admits new sessions afterwards."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    async with trio.open_nursery() as nursery:
        net = NetProcessor(max_connections=2)
        proxy = TcpProxy(net, "127.0.0.1", dead_port)
        server = await nursery.start(net.serve, proxy, AcceptOptions(host="127.0.0.1"))
        for _ in range(3):
            client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            assert await ending_of(client) == ("eof", 0)
            await client.aclose()
            await all_closed(net)
        assert proxy.statistics().upstream_failures == 3
        assert net.statistics().connections_throttled_out == 0
        nursery.cancel_scope.cancel()


async def test_connect_takes_the_reserved_slot_at_the_limit(nursery: trio.Nursery) -> None:
    """A handler marked ``reserve_outbound_slot`` gets its connect through at
    the limit; a second connect for the same client is throttled as usual."""
    outcomes: list[object] = []
    done = trio.Event()

    async def target(conn: Connection) -> None:
        await trio.sleep_forever()

    up = NetProcessor()
    up_server = await nursery.start(up.serve, target, AcceptOptions(host="127.0.0.1"))
    net = NetProcessor(max_connections=2)

    async def handler(client: Connection) -> None:
        first = await net.connect("127.0.0.1", up_server.ports[0], for_connection=client)
        outcomes.append(table_of(net).throttle.open)
        try:
            await net.connect("127.0.0.1", up_server.ports[0], for_connection=client)
        except trionet.ThrottledError as exc:
            outcomes.append(exc)
        await first.aclose()
        done.set()

    handler.reserve_outbound_slot = True  # type: ignore[attr-defined]
    server = await nursery.start(net.serve, handler, AcceptOptions(host="127.0.0.1"))
    client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
    with trio.fail_after(5):
        await done.wait()
    assert outcomes[0] == 2
    assert isinstance(outcomes[1], trionet.ThrottledError)
    await client.aclose()
    await all_closed(net)


async def test_reservation_released_when_tls_handshake_fails(
    server_ctx: ssl.SSLContext,
) -> None:
    async with proxy_setup(
        echo_upstream, accept={"ssl_context": server_ctx}, max_connections=2
    ) as (net, _proxy, server):
        bad = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await bad.send_all(b"not a TLS client hello\r\n\r\n")
        assert await ending_of(bad) in {("eof", 0), ("reset", 0)}
        await bad.aclose()
        await all_closed(net)
        assert net.statistics().tls_handshake_errors == 1


# ============================================ inactivity per session (tunnel)
async def test_tunnel_timeout_idle_session_cut_exactly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No activity on either side: the session ends at the last activity plus
    the smaller of the two inactivity timeouts, to the millisecond."""
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await conn.send_all(b"hi")
        await read_until_end(conn, seen)

    async with proxy_setup(
        upstream, accept={"inactivity_timeout": 10}, connect=ConnectOptions(inactivity_timeout=6)
    ) as (net, proxy, server):
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        assert await recv_exactly(client, 2) == b"hi"
        await trio.sleep(5)
        await client.send_all(b"x")  # activity on the client side only
        last = trio.current_time()
        with trio.fail_after(30):
            assert await ending_of(client) == ("reset", 0)
        assert trio.current_time() - last == pytest.approx(6, abs=0.01)
        await seen.done.wait()
        await client.aclose()
        await all_closed(net)
    assert seen.ending == "reset"
    assert proxy.statistics().timeouts == 1


async def test_tunnel_timeout_activity_on_either_side_keeps_both(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that only reads, slowly and steadily, a download the proxy
    cannot push faster than it reads: the upstream side sees no activity for
    far longer than its timeout, but the session is active, so nothing is cut."""
    total = 96 * 1024

    async def upstream(conn: Connection) -> None:
        await conn.send_all(b"s" * total)
        await trio.sleep_forever()

    accept = {
        "inactivity_timeout": 3,
        "socket": trionet.SocketOptions(send_bufsize=4096),
    }
    connect = ConnectOptions(inactivity_timeout=3)
    async with proxy_setup(upstream, accept=accept, connect=connect) as (_net, proxy, server):
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", server.ports[0]))
        client = trio.SocketStream(sock)
        got = 0
        start = trio.current_time()
        while got < total:
            await trio.sleep(0.5)
            chunk = await client.receive_some(2048)
            assert chunk, f"session ended after {got} bytes"
            got += len(chunk)
        assert trio.current_time() - start > 20  # far beyond either timeout
        assert proxy.statistics().timeouts == 0
        await client.aclose()


# ============================== trionet.examples.ats_tunnel (iocore shim)
def load_ats_tunnel() -> ModuleType:
    path = Path(trionet.__file__).parent / "examples" / "ats_tunnel.py"
    spec = importlib.util.spec_from_file_location("ats_tunnel_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@asynccontextmanager
async def ats_tunnel(upstream: Handler, *extra: str) -> AsyncIterator[tuple[Any, int]]:
    """The example's acceptor (TunnelAccept) on a loopback port, in front of
    ``upstream``; yields (acceptor, port)."""
    mod = load_ats_tunnel()
    async with trio.open_nursery() as nursery:
        up = NetProcessor()
        up_server = await nursery.start(up.serve, upstream, AcceptOptions(host="127.0.0.1"))
        args = mod.parse_args(
            ["--port", "0", "--upstream", f"127.0.0.1:{up_server.ports[0]}", *extra]
        )
        net = NetProcessor()
        async with trionet.iocore.open_net_processor(net) as unp:
            acceptor = mod.TunnelAccept(unp, args)
            action = unp.accept(acceptor, AcceptOptions(host="127.0.0.1"))
            assert await action.wait_listening()
            yield acceptor, action.ports[0]
            action.cancel()
        nursery.cancel_scope.cancel()


async def test_ats_tunnel_client_reset_reaches_upstream_as_reset() -> None:
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await read_until_end(conn, seen)

    async with ats_tunnel(upstream) as (acceptor, port):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"u" * 100_000)
        await wait_for(lambda: seen.got == 100_000, "upload relayed")
        await reset(client)
        with trio.fail_after(5):
            await seen.done.wait()
            await acceptor.tally.all_closed.wait()
    assert (seen.ending, len(seen.data)) == ("reset", 100_000)
    assert (acceptor.tally.sessions, acceptor.tally.errors) == (1, 1)


async def test_ats_tunnel_upstream_reset_reaches_client_as_reset() -> None:
    received = trio.Event()

    async def upstream(conn: Connection) -> None:
        await conn.send_all(b"d" * 50_000)
        await received.wait()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        conn.close()

    async with ats_tunnel(upstream) as (acceptor, port):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        assert await recv_exactly(client, 50_000) == b"d" * 50_000
        received.set()
        with trio.fail_after(5):
            assert await ending_of(client) == ("reset", 0)
        await client.aclose()
    assert acceptor.tally.errors == 1


async def test_ats_tunnel_clean_half_close_still_forwarded() -> None:
    """The abort path does not swallow the orderly one: a client EOF is still
    a half-close, and the answer still comes back."""

    async def upstream(conn: Connection) -> None:
        seen = Seen()
        await read_until_end(conn, seen)
        await conn.send_all(b"got %d (%s)" % (len(seen.data), seen.ending.encode()))

    async with ats_tunnel(upstream) as (acceptor, port):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"q" * 70_000)
        await client.send_eof()
        with trio.fail_after(5):
            assert await ending_of(client) == ("eof", 15)
        await client.aclose()
    assert acceptor.tally.errors == 0


async def test_ats_tunnel_timeout_aborts_both_sides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()

    async def upstream(conn: Connection) -> None:
        await read_until_end(conn, seen)

    async with ats_tunnel(upstream, "--inactivity-timeout", "3") as (_acceptor, port):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"partial")
        start = trio.current_time()
        with trio.fail_after(10):
            assert await ending_of(client) == ("reset", 0)
            await seen.done.wait()
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)
        await client.aclose()
    assert (seen.ending, bytes(seen.data)) == ("reset", b"partial")


@pytest.mark.slow
def test_ats_tunnel_shutdown_grace_cut_aborts_both_sides() -> None:
    """The whole program: SIGINT, then a session still open when the grace
    ends is aborted on both sides (the client sees a reset, not an EOF)."""
    upstream_ending: list[str] = []
    relayed = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            try:
                while conn.recv(65536):
                    relayed.set()
                upstream_ending.append("eof")
            except ConnectionResetError:
                upstream_ending.append("reset")

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    up = f"127.0.0.1:{listener.getsockname()[1]}"
    with Running(
        "-m", "trionet.examples.ats_tunnel", "--port", "0", "--upstream", up, "--grace", "0.5"
    ) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1 port (\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
            client.sendall(b"a request that never ends")
            assert relayed.wait(20)  # the session is up on both sides
            status, out, err = run.stop(signal.SIGINT)
            with pytest.raises(ConnectionResetError):
                client.recv(100)
    thread.join(20)
    listener.close()
    assert status == 0, err
    assert upstream_ending == ["reset"]
    assert "sessions: 1, upstream failures: 0, errors: 1" in out
