"""splice() (the proxy's pump) and TcpProxy: bytes both ways, half-close,
backpressure, resets, timeouts on either side, and nothing leaked."""

from __future__ import annotations

import socket
import struct

import pytest
import trio
import trio.testing

import trionet
from trionet._proxy import splice


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
