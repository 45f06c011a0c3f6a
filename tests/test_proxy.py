"""splice() (the proxy's pump) and TcpProxy: bytes both ways, half-close,
backpressure, resets, timeouts on either side, and nothing leaked."""

from __future__ import annotations

import dataclasses
import socket
import struct
from typing import Any

import pytest
import trio
import trio.testing

import trionet
from trionet._apps._tcp_proxy import splice
from trionet._processor import table_of


class Recording(trio.abc.HalfCloseableStream):
    """Wraps a stream and records how many bytes were read out of it."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.pulled = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = bytes(await self.inner.receive_some(max_bytes))
        self.pulled += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_splice_half_close_both_ways() -> None:
    """a sends and half-closes; b's reply still flows back after that EOF."""
    a_outer, a_inner = trio.testing.memory_stream_pair()
    b_inner, b_outer = trio.testing.memory_stream_pair()
    results: list[trionet.SpliceResult] = []

    async def run_splice() -> None:
        results.append(await splice(a_inner, b_inner))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_splice)
        await a_outer.send_all(b"request")
        await a_outer.send_eof()
        got = b""
        while chunk := await b_outer.receive_some():
            got += chunk
        assert got == b"request"  # and then EOF, forwarded by the splice
        await b_outer.send_all(b"response, after the client's EOF")
        await b_outer.send_eof()
        back = b""
        while chunk := await a_outer.receive_some():
            back += chunk
        assert back == b"response, after the client's EOF"
    assert results == [trionet.SpliceResult(7, 32, "eof")]


async def test_splice_backpressure_holds_one_chunk() -> None:
    """With a receiver that does not read, the splice pulls at most one chunk
    beyond what was delivered."""
    a_outer, a_inner = trio.testing.memory_stream_pair()
    b_inner, b_outer = trio.testing.lockstep_stream_pair()  # send_all waits for the reader
    source = Recording(a_inner)
    await a_outer.send_all(b"x" * 1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(splice, source, b_inner, 100)
        delivered = 0
        for _ in range(5):
            await trio.testing.wait_all_tasks_blocked()
            assert source.pulled - delivered == 100
            delivered += len(await b_outer.receive_some(100))
        await trio.testing.wait_all_tasks_blocked()
        assert (source.pulled, delivered) == (600, 500)
        nursery.cancel_scope.cancel()


async def test_splice_reset_ends_both_directions(nursery: trio.Nursery) -> None:
    """A reset from the upstream ends the splice (ending="reset") even while
    the client direction is idle; nothing is raised."""
    upstream_conns: list[trio.SocketStream] = []

    async def upstream_handler(stream: trio.SocketStream) -> None:
        upstream_conns.append(stream)
        await stream.send_all(b"hi")
        await trio.sleep_forever()

    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    nursery.start_soon(trio.serve_listeners, upstream_handler, [listener])
    port = listener.socket.getsockname()[1]
    client_side, proxy_side = trio.testing.memory_stream_pair()
    up = await trio.open_tcp_stream("127.0.0.1", port)
    async with up:
        done = trio.Event()
        results: list[trionet.SpliceResult] = []

        async def run() -> None:
            results.append(await splice(proxy_side, up))
            done.set()

        nursery.start_soon(run)
        assert await client_side.receive_some() == b"hi"
        await trio.testing.wait_all_tasks_blocked()
        # Reset: SO_LINGER 0 then close.
        sock = upstream_conns[0].socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await upstream_conns[0].aclose()
        with trio.fail_after(5):
            await done.wait()
    assert results == [trionet.SpliceResult(0, 2, "reset")]


async def test_splice_rejects_bad_chunk() -> None:
    a, b = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match=r"chunk=0: must be an int >= 1"):
        await splice(a, b, 0)


# ------------------------------------------------------------------ TcpProxy
async def start_upstream(nursery: trio.Nursery, handler: Any) -> tuple[trionet.NetProcessor, int]:
    up = trionet.NetProcessor()
    server = await nursery.start(up.serve, handler, trionet.AcceptOptions(host="127.0.0.1"))
    return up, server.ports[0]


async def start_proxy(
    nursery: trio.Nursery, port: int, options: trionet.ConnectOptions | None = None, **kw: Any
) -> tuple[trionet.NetProcessor, trionet.TcpProxy, int]:
    net = trionet.NetProcessor(**kw)
    proxy = trionet.TcpProxy(net, "127.0.0.1", port, options)
    server = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
    return net, proxy, server.ports[0]


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    out = b""
    while chunk := await stream.receive_some():
        out += chunk
    return out


async def test_proxy_request_response_with_half_close(nursery: trio.Nursery) -> None:
    """The client half-closes after its request; the upstream sees the EOF,
    then answers; the answer reaches the client through the half-closed session."""
    seen: list[bytes] = []

    async def upstream(conn: trionet.Connection) -> None:
        request = await read_all(conn)  # until the client's forwarded EOF
        seen.append(request)
        await conn.send_all(b"got " + request)

    up, up_port = await start_upstream(nursery, upstream)
    net, proxy, port = await start_proxy(nursery, up_port)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    async with client:
        await client.send_all(b"x" * 200_000)
        await client.send_eof()
        assert await read_all(client) == b"got " + b"x" * 200_000
    assert seen == [b"x" * 200_000]
    with trio.fail_after(5):
        while net.statistics().connections_currently_open:
            await trio.sleep(0.001)
    stats = net.statistics()
    assert (stats.total_accepts, stats.connects_total) == (1, 1)
    # Both sides of the proxy counted: 200 000 in from the client, 200 004 from upstream.
    assert stats.read_bytes == stats.write_bytes == 400_004
    stats_p = proxy.statistics()
    assert dataclasses.replace(stats_p, upstreams=()) == trionet.ProxyStatistics(sessions=1)
    assert [(u.sessions, u.open, u.failures) for u in stats_p.upstreams] == [(1, 0, 0)]
    assert up.statistics().connections_currently_open == 0


async def test_proxy_upstream_refused_closes_client(nursery: trio.Nursery) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    net, proxy, port = await start_proxy(nursery, dead_port)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    async with client:
        assert await client.receive_some() == b""
    stats = proxy.statistics()
    assert (stats.sessions, stats.upstream_failures, stats.upstream_timeouts) == (1, 1, 0)
    assert net.statistics().connect_failures == 1


class NeverResolves:
    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_proxy_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net = trionet.NetProcessor()
        opts = trionet.ConnectOptions(connect_timeout=2.5, resolver=NeverResolves())
        proxy = trionet.TcpProxy(net, "upstream.example", 80, opts)
        server = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        start = trio.current_time()
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(2.5, abs=0.001)
        assert proxy.statistics().upstream_timeouts == 1
        assert net.statistics().connect_timeouts == 1
        await client.aclose()
        server.shutdown(0)


async def test_proxy_upstream_inactivity_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """The session goes silent: the upstream's inactivity timeout cuts the
    whole session, and the client sees the cut as an abort (not an EOF)."""

    async def silent(conn: trionet.Connection) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        _up, up_port = await start_upstream(nursery, silent)
        opts = trionet.ConnectOptions(inactivity_timeout=7)
        net, proxy, port = await start_proxy(nursery, up_port, opts)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"hello?")
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError, match="reset"):
            await client.receive_some()
        assert trio.current_time() - start == pytest.approx(7, abs=0.01)
        await trio.testing.wait_all_tasks_blocked()
        stats_p = proxy.statistics()
        assert dataclasses.replace(stats_p, upstreams=()) == trionet.ProxyStatistics(
            sessions=1, timeouts=1
        )
        assert [(u.sessions, u.open, u.failures) for u in stats_p.upstreams] == [(1, 0, 0)]
        stats = net.statistics()
        assert (stats.inactivity_timeouts, stats.connections_currently_open) == (1, 0)
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_proxy_client_inactivity_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """The client goes silent while the upstream waits: the client side's
    timeout (from AcceptOptions) cuts the session, aborting the upstream too."""
    closed = trio.Event()

    async def waiting(conn: trionet.Connection) -> None:
        with pytest.raises(trio.BrokenResourceError):
            await conn.receive_some()
        closed.set()

    async with trio.open_nursery() as nursery:
        _up, up_port = await start_upstream(nursery, waiting)
        net = trionet.NetProcessor()
        proxy = trionet.TcpProxy(net, "127.0.0.1", up_port)
        opts = trionet.AcceptOptions(host="127.0.0.1", inactivity_timeout=3)
        server = await nursery.start(net.serve, proxy, opts)
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        start = trio.current_time()
        await closed.wait()
        assert trio.current_time() - start == pytest.approx(3, abs=0.01)
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        assert proxy.statistics().timeouts == 1
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_proxy_counts_toward_max_connections(nursery: trio.Nursery) -> None:
    """A session holds two slots (client + upstream): with max_connections=3
    the second client waits in the backlog until the first session ends,
    instead of being accepted and dropped when its upstream connect is throttled."""
    release = trio.Event()

    async def hold(conn: trionet.Connection) -> None:
        await conn.send_all(b"hello")
        await release.wait()

    _up, up_port = await start_upstream(nursery, hold)
    net, proxy, port = await start_proxy(nursery, up_port, max_connections=3)
    first = await trio.open_tcp_stream("127.0.0.1", port)
    assert await first.receive_some() == b"hello"
    second = await trio.open_tcp_stream("127.0.0.1", port)
    await trio.testing.wait_all_tasks_blocked()
    stats = net.statistics()
    assert (stats.total_accepts, stats.connections_currently_open, table_of(net).throttle.open) == (
        1,
        2,
        2,
    )
    release.set()
    assert await first.receive_some() == b""
    await first.aclose()
    with trio.fail_after(5):
        assert await second.receive_some() == b"hello"  # served once the first session ended
    assert net.statistics().connections_throttled_out == 0
    assert proxy.statistics().upstream_failures == 0
    await second.aclose()


def test_proxy_rejects_bad_arguments() -> None:
    net = trionet.NetProcessor()
    with pytest.raises(TypeError, match="options=5"):
        trionet.TcpProxy(net, "h", 1, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk=-1"):
        trionet.TcpProxy(net, "h", 1, chunk=-1)
