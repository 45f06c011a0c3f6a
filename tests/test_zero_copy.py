"""The splice in the kernel (Linux ``splice(2)``, trionet._apps._zero_copy):
the same half-close, abort, backpressure and byte counts as the user-space
pump, bytes intact over a large transfer, the fallback for TLS and when
switched off, and pipes pooled or closed without leaking a descriptor.

Real loopback sockets throughout; the outer ends are plain trio streams, so
the processor's statistics count the two spliced connections only."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme

from trionet import AcceptOptions, Connection, NetProcessor, SpliceResult, TcpProxy, splice
from trionet._apps import _zero_copy
from trionet._apps._zero_copy import POOL_LIMIT, PipePool, pipe_pool
from trionet._processor import table_of

from .conftest import open_fds

pytestmark = pytest.mark.skipif(not _zero_copy.SPLICE_AVAILABLE, reason="needs os.splice (Linux)")

LINGER_RST = struct.pack("ii", 1, 0)
MIB = 1024 * 1024


# ------------------------------------------------------------------ helpers
async def wired(net: NetProcessor) -> tuple[trio.SocketStream, Connection]:
    """A loopback TCP connection: a plain trio stream at one end, a
    ``Connection`` counted by ``net`` at the other."""
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, peer = await listener.accept()
    conn = table_of(net).open(server, inbound=True, client="127.0.0.1", peer_address=peer)
    return trio.SocketStream(client), conn


Spliced = tuple[trio.SocketStream, Connection, Connection, trio.SocketStream]


@asynccontextmanager
async def spliced(
    net: NetProcessor, results: list[SpliceResult], **kw: bool
) -> AsyncIterator[Spliced]:
    """client <-> c_in ==splice== u_in <-> upstream, the splice in a task
    whose result lands in ``results``; everything closed on the way out."""
    client, c_in = await wired(net)
    upstream, u_in = await wired(net)
    with trio.fail_after(60):  # a test that would hang fails instead
        async with client, upstream, c_in, u_in, trio.open_nursery() as nursery:

            async def run() -> None:
                results.append(await splice(c_in, u_in, **kw))

            nursery.start_soon(run)
            yield client, c_in, u_in, upstream


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(MIB):
        data += chunk
    return bytes(data)


async def read_to_end(stream: trio.abc.ReceiveStream) -> tuple[str, int]:
    """Read until EOF or a reset: ``("eof"|"reset", bytes read)``."""
    n = 0
    try:
        while chunk := await stream.receive_some(MIB):
            n += len(chunk)
    except trio.BrokenResourceError:
        return "reset", n
    return "eof", n


async def reset(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    await stream.aclose()


async def send_until_reset(stream: trio.SocketStream, data: bytes) -> None:
    """Send ``data`` again and again; the proxy is expected to abort the
    connection first. Once is not enough: with net.ipv4.tcp_rmem's maximum at
    32 MiB (this machine's), the kernel's buffers on the way can take all of a
    32 MiB send and a CI run saw it complete; 16 times is more than they hold."""
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(16):
            await stream.send_all(data)


def numbered_blocks(count: int, size: int = MIB) -> tuple[list[bytes], str]:
    """``count`` distinct blocks (a random block, each with its index in
    front: a lost, repeated or reordered block changes the digest) and the
    sha256 of all of them."""
    base = os.urandom(size)
    blocks = [i.to_bytes(8, "big") + base[8:] for i in range(count)]
    digest = hashlib.sha256()
    for block in blocks:
        digest.update(block)
    return blocks, digest.hexdigest()


def _always() -> bool:
    return True


async def until_stalled(read: Callable[[], int], *, also: Callable[[], bool] = _always) -> int:
    """Wait (real clock) until ``read()`` has not grown over three looks
    0.2 s apart (a busy machine can pause a process for a moment) and
    ``also()`` holds."""
    seen: list[int] = []
    with trio.fail_after(30):
        while len(seen) < 3 or len(set(seen[-3:])) > 1 or not also():
            seen.append(read())
            await trio.sleep(0.2)
    return seen[-1]


# ------------------------------------------------------------- half-close
async def test_half_close_client_first_reply_still_flows() -> None:
    net = NetProcessor()
    results: list[SpliceResult] = []
    async with spliced(net, results) as (client, _, _, upstream):
        await client.send_all(b"request")
        await client.send_eof()
        assert await read_all(upstream) == b"request"  # then EOF: the FIN came through
        await upstream.send_all(b"reply after the client's EOF")
        await upstream.send_eof()
        assert await read_all(client) == b"reply after the client's EOF"
    assert results == [SpliceResult(7, 28, "eof", zero_copy=True)]


async def test_half_close_upstream_first_upload_still_flows() -> None:
    net = NetProcessor()
    results: list[SpliceResult] = []
    async with spliced(net, results) as (client, _, _, upstream):
        await upstream.send_all(b"banner")
        await upstream.send_eof()
        assert await read_all(client) == b"banner"
        blocks, digest = numbered_blocks(4)
        for block in blocks:
            await client.send_all(block)
        await client.send_eof()
        assert hashlib.sha256(await read_all(upstream)).hexdigest() == digest
    assert results == [SpliceResult(4 * MIB, 6, "eof", zero_copy=True)]


# ----------------------------------------------------------------- resets
@pytest.mark.parametrize("who", ["client", "upstream"])
async def test_peer_reset_mid_transfer_reaches_the_other_side_as_reset(who: str) -> None:
    """A side that resets while its bytes are flowing (the other side has
    read some, more are on the way): the other side sees a reset, never EOF."""
    net = NetProcessor()
    results: list[SpliceResult] = []
    async with spliced(net, results) as (client, c_in, u_in, upstream):
        sender, receiver = (client, upstream) if who == "client" else (upstream, client)
        await sender.send_all(b"x" * 65536)
        assert len(await receiver.receive_some(1024)) > 0  # mid-transfer
        await reset(sender)
        with trio.fail_after(10):
            ending, _ = await read_to_end(receiver)
        assert ending == "reset"
        assert c_in.closed and u_in.closed  # both aborted
    [result] = results
    assert (result.ending, result.zero_copy) == ("reset", True)


# ------------------------------------------------------------ backpressure
async def test_a_reader_that_stops_stops_the_reading_and_resumes() -> None:
    """The upstream reads nothing: the splice stops reading from the client
    once the socket buffers and the pipe are full (a bounded amount in
    flight, far below what the client wants to send); when the upstream
    reads again, every byte arrives, in order."""
    net = NetProcessor()
    results: list[SpliceResult] = []
    blocks, digest = numbered_blocks(64)  # 64 MiB
    async with spliced(net, results) as (client, c_in, u_in, upstream):
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for block in blocks:
                    await client.send_all(block)
                await client.send_eof()

            nursery.start_soon(send)
            taken = await until_stalled(lambda: c_in.bytes_received)
            in_the_pipe = taken - u_in.bytes_sent
            assert taken < 16 * MIB, "the splice kept reading from a client nobody reads"
            assert 0 <= in_the_pipe <= 2 * MIB  # one pipe's worth of pages at most
            assert hashlib.sha256(await read_all(upstream)).hexdigest() == digest
        await upstream.send_eof()
    assert results == [SpliceResult(64 * MIB, 0, "eof", zero_copy=True)]


# ----------------------------------------------------------------- counts
async def test_counts_equal_the_bytes_moved() -> None:
    net = NetProcessor()
    results: list[SpliceResult] = []
    up, down = 3 * MIB + 5, MIB + 7
    async with spliced(net, results) as (client, c_in, u_in, upstream):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, os.urandom(up))
            nursery.start_soon(upstream.send_all, os.urandom(down))
        await client.send_eof()
        await upstream.send_eof()
        assert len(await read_all(upstream)) == up
        assert len(await read_all(client)) == down
    assert results == [SpliceResult(up, down, "eof", zero_copy=True)]
    assert (c_in.bytes_received, u_in.bytes_sent) == (up, up)
    assert (u_in.bytes_received, c_in.bytes_sent) == (down, down)
    stats = net.statistics()
    assert (stats.read_bytes, stats.write_bytes) == (up + down, up + down)
    # One read call per splice from a socket, two of which returned EOF.
    assert stats.calls_to_read_nodata == 2
    assert stats.connections_currently_open == 0


# ------------------------------------------------ a large transfer, intact
async def test_256_mib_through_the_proxy_intact() -> None:
    """sha256 of 256 MiB sent through a TcpProxy, checked by the upstream;
    the proxy's statistics count every byte once each way, and the pool made
    one pipe per direction (the kernel path ran)."""
    blocks, digest = numbered_blocks(256)
    seen: list[str] = []

    async def upstream_handler(conn: Connection) -> None:
        sha = hashlib.sha256()
        while chunk := await conn.receive_some(MIB):
            sha.update(chunk)
        seen.append(sha.hexdigest())
        await conn.send_all(seen[-1].encode())

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            up = NetProcessor()
            opts = AcceptOptions(host="127.0.0.1")
            up_server = await nursery.start(up.serve, upstream_handler, opts)
            net = NetProcessor()
            proxy = TcpProxy(net, "127.0.0.1", up_server.ports[0])
            server = await nursery.start(net.serve, proxy, opts)
            async with await trio.open_tcp_stream("127.0.0.1", server.ports[0]) as client:
                for block in blocks:
                    await client.send_all(block)
                await client.send_eof()
                assert await read_all(client) == digest.encode()
            nursery.cancel_scope.cancel()
    assert seen == [digest]
    stats = net.statistics()
    assert stats.read_bytes == stats.write_bytes == 256 * MIB + 64
    assert pipe_pool().created == 2


# --------------------------------------------------------------- fallback
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def recording_proxy(
    net: NetProcessor, port: int, results: list[SpliceResult], **kw: bool
) -> Callable[[Connection], Awaitable[None]]:
    async def handler(client: Connection) -> None:
        async with await net.connect("127.0.0.1", port) as upstream:
            results.append(await splice(client, upstream, **kw))

    return handler


async def echo(conn: Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def test_tls_client_side_is_copied_through_the_process(ca: trustme.CA) -> None:
    """TLS on one side: the splice decrypts and copies (zero_copy False), no
    pipe is made, and the bytes are right."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("proxy.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    results: list[SpliceResult] = []
    async with trio.open_nursery() as nursery:
        up = NetProcessor()
        up_server = await nursery.start(up.serve, echo, AcceptOptions(host="127.0.0.1"))
        net = NetProcessor()
        handler = recording_proxy(net, up_server.ports[0], results)
        opts = AcceptOptions(host="127.0.0.1", ssl_context=server_ctx)
        server = await nursery.start(net.serve, handler, opts)
        tcp = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        async with trio.SSLStream(tcp, client_ctx, server_hostname="proxy.example") as tls:
            await tls.send_all(b"secret" * 1000)
            got = b""
            while len(got) < 6000:
                got += await tls.receive_some()
            assert got == b"secret" * 1000
        with trio.fail_after(10):
            while not results:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert results[0].zero_copy is False
    assert results[0].a_to_b == results[0].b_to_a == 6000
    assert pipe_pool().created == 0


async def test_switched_off_copies_through_the_process() -> None:
    net = NetProcessor()
    results: list[SpliceResult] = []
    async with spliced(net, results, zero_copy=False) as (client, _, _, upstream):
        await client.send_all(b"ping")
        await client.send_eof()
        assert await read_all(upstream) == b"ping"
        await upstream.send_eof()
    assert results == [SpliceResult(4, 0, "eof", zero_copy=False)]
    assert pipe_pool().created == 0


async def test_no_pipe_to_be_had_copies_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors for a pipe: the session is copied through the
    process, not refused; the pipe taken before the failure is given back."""
    real_take = PipePool.take
    calls = []

    def take_one_then_fail(pool: PipePool, size: int) -> object:
        calls.append(size)
        if len(calls) == 2:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_take(pool, size)

    monkeypatch.setattr(PipePool, "take", take_one_then_fail)
    net = NetProcessor()
    results: list[SpliceResult] = []
    async with spliced(net, results) as (client, _, _, upstream):
        await client.send_all(b"still served")
        await client.send_eof()
        assert await read_all(upstream) == b"still served"
        await upstream.send_eof()
    assert results == [SpliceResult(12, 0, "eof", zero_copy=False)]
    assert (pipe_pool().created, pipe_pool().idle) == (1, 1)


async def test_tcp_proxy_switch_and_other_streams() -> None:
    net = NetProcessor()
    assert TcpProxy(net, "127.0.0.1", 80).zero_copy is True
    assert TcpProxy(net, "127.0.0.1", 80, zero_copy=False).zero_copy is False
    with pytest.raises(ValueError, match=r"TcpProxy.zero_copy='no'"):
        TcpProxy(net, "127.0.0.1", 80, zero_copy="no")  # type: ignore[arg-type]
    a, b = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match=r"splice.zero_copy=1"):
        await splice(a, b, zero_copy=1)  # type: ignore[arg-type]
    # Streams that are not Connections: copied (as before), no pipe.
    c, d = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        results: list[SpliceResult] = []

        async def run() -> None:
            results.append(await splice(a, c))

        nursery.start_soon(run)
        await b.send_all(b"x")
        await b.send_eof()
        assert await d.receive_some() == b"x"
        await d.send_eof()
    assert results == [SpliceResult(1, 0, "eof", zero_copy=False)]
    assert pipe_pool().created == 0


# ------------------------------------------------------------------ pipes
def test_pipes_are_reused_closed_with_bytes_in_them_and_at_run_end() -> None:
    """Sessions one after another reuse one pipe per direction; a session
    reset with bytes still in its pipe closes that pipe (never pooled); at
    the end of the run every pipe is closed: no descriptor left open."""
    before = open_fds()

    async def main() -> None:
        gc.collect()  # earlier tests' garbage closes no descriptor mid-count
        base = open_fds()  # with trio's own (epoll, wakeup socket...)
        net = NetProcessor()
        for i in range(5):
            results: list[SpliceResult] = []
            async with spliced(net, results) as (client, _, _, upstream):
                await client.send_all(b"session %d" % i)
                await client.send_eof()
                await read_all(upstream)
                await upstream.send_eof()
                await read_all(client)
            assert results[0].zero_copy
        pool = pipe_pool()
        assert (pool.created, pool.idle) == (2, 2)
        assert open_fds() == base + 4  # two idle pipes, nothing else

        # The upstream reads nothing, so the client's bytes fill the pipe;
        # then it resets: that pipe still holds bytes and must be closed.
        results = []
        session = spliced(net, results)
        async with session as (client, c_in, u_in, upstream), trio.open_nursery() as nursery:
            nursery.start_soon(send_until_reset, client, b"y" * (32 * MIB))
            in_the_pipe = lambda: c_in.bytes_received > u_in.bytes_sent  # noqa: E731
            await until_stalled(lambda: c_in.bytes_received, also=in_the_pipe)
            await reset(upstream)
            # ...and the client's send fails with the reset passed on
            # (send_until_reset; the reset is reported once, to its send).
        assert results[0].ending == "reset"
        assert (pool.created, pool.idle) == (2, 1)  # the full one closed
        assert open_fds() == base + 2

    trio.run(main)
    assert open_fds() == before


def test_pool_is_bounded_and_sizes_fall_back() -> None:
    pool = PipePool()
    try:
        pipes = [pool.take(65536) for _ in range(POOL_LIMIT + 3)]
        for pipe in pipes:
            pool.give_back(pipe, 65536)
        assert pool.idle == POOL_LIMIT  # the rest were closed
        assert pool.take(4096).size == 4096  # a size of its own
        # A size the kernel refuses (above fs.pipe-max-size, 1 MiB by
        # default): the pipe keeps the default size, silently.
        with open("/proc/sys/fs/pipe-max-size") as f:
            cap = int(f.read())
        big = pool.take(cap * 4)
        assert big.size in (cap * 4, 65536)  # granted only with CAP_SYS_RESOURCE
        big.close()
    finally:
        pool.close()
    assert pool.idle == 0


# -------------------------------------------------------------------- CLI
@pytest.mark.parametrize(("flags", "expected"), [([], True), (["--no-zero-copy"], False)])
def test_cli_proxy_zero_copy_switch(flags: list[str], expected: bool) -> None:
    from trionet._apps._cli import parse

    _args, plan = parse(["proxy", "--listen", "0", "--upstream", "127.0.0.1:9", *flags])
    assert plan.proxy is not None
    assert plan.proxy.zero_copy is expected
