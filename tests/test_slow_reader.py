"""Inactivity timeouts judge progress by the kernel too: a slow but steady
reader over real TCP is not cut off while a multi-megabyte send buffer drains,
and a reader that stops is still timed out, within the documented bound.

The deterministic tests run under MockClock, but the kernel moves bytes in real
time: they stop the mock clock (``autojump_threshold = inf``) and wait, in real
time, until the kernel's queues stop changing before letting trio's time run.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import socket
import ssl
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme

import trionet
from trionet import AcceptOptions, NetProcessor

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="kernel send progress is read from Linux's TCP_INFO"
)

TIMEOUT = 2.0  # the MockClock tests' inactivity timeout


def _ioctl_int(sock: trio.socket.SocketType, request: int) -> int:
    value: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), request, b"\0" * 4))[0]
    return value


async def kernel_settled(
    clock: trio.testing.MockClock,
    sender: trio.socket.SocketType,
    reader: trio.socket.SocketType,
) -> None:
    """With trio's clock stopped, wait in real time until the kernel is done
    moving bytes: the sender's send queue (SIOCOUTQ) and the reader's receive
    queue (FIONREAD) unchanged for 100 ms (bounded: 4 s)."""
    clock.autojump_threshold = math.inf
    try:
        seen: tuple[int, int] | None = None
        steady = 0
        for _ in range(200):
            now = (_ioctl_int(sender, termios.TIOCOUTQ), _ioctl_int(reader, termios.FIONREAD))
            steady = steady + 1 if now == seen else 0
            if steady == 5 and now[0] > 0:
                return
            seen = now
            await trio.to_thread.run_sync(time.sleep, 0.02)
        raise AssertionError(f"kernel queues never settled: outq, inq = {seen}")
    finally:
        clock.autojump_threshold = 0


class Sender:
    """A handler that sends more than any kernel buffer holds, and records
    when and how it ended."""

    def __init__(self) -> None:
        self.conn: trionet.Connection | None = None
        self.started = trio.Event()
        self.done = trio.Event()
        self.ended_at = math.nan

    async def __call__(self, conn: trionet.Connection) -> None:
        self.conn = conn
        self.started.set()
        try:
            await conn.send_all(b"x" * (16 << 20))  # the reader never takes it all
        finally:
            self.ended_at = trio.current_time()
            self.done.set()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@asynccontextmanager
async def stalled_pair(
    net: NetProcessor, sender: Sender, ca: trustme.CA, tls: bool
) -> AsyncIterator[tuple[trionet.Connection, trio.socket.SocketType]]:
    """Serve ``sender`` (over TLS if asked) and connect a client that does not
    read; yields the server's connection and the client's raw socket."""
    opts = AcceptOptions(host="127.0.0.1")
    client_ctx: ssl.SSLContext | None = None
    if tls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        opts = AcceptOptions(host="127.0.0.1", ssl_context=server_ctx)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, sender, opts)
        tcp = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        client: trio.abc.Stream = tcp
        if client_ctx is not None:
            client = trio.SSLStream(client, client_ctx, server_hostname="127.0.0.1")
            await client.do_handshake()  # then never read through TLS: raw bytes suffice
        await sender.started.wait()
        assert sender.conn is not None
        yield sender.conn, tcp.socket
        server.shutdown(0)
        await trio.aclose_forcefully(client)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_reader_that_stopped_is_timed_out_one_period_after_first_look(
    autojump_clock: trio.testing.MockClock, ca: trustme.CA, tls: bool
) -> None:
    net = NetProcessor()
    sender = Sender()
    async with stalled_pair(net, sender, ca, tls) as (conn, reader):
        await kernel_settled(autojump_clock, conn.socket, reader)
        written = net.statistics().write_bytes  # wire bytes, TLS records included
        conn.inactivity_timeout = TIMEOUT  # restarts the idle clock: t0
        t0 = trio.current_time()
        await sender.done.wait()
    # Bytes were queued, so the first look (t0 + T) had no earlier count to
    # compare with and counted as progress; the second found none and fired.
    assert sender.ended_at == pytest.approx(t0 + 2 * TIMEOUT, abs=1e-9)
    assert conn.last_activity == pytest.approx(t0 + TIMEOUT, abs=1e-9)
    assert conn.timed_out == "inactivity" and conn.closed
    assert net.statistics().write_bytes == written  # the writer slept throughout
    stats = net.statistics()
    assert stats.inactivity_timeouts == 1 and stats.connections_currently_open == 0


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_kernel_delivering_queued_bytes_counts_as_activity(
    autojump_clock: trio.testing.MockClock, ca: trustme.CA, tls: bool
) -> None:
    net = NetProcessor()
    sender = Sender()
    async with stalled_pair(net, sender, ca, tls) as (conn, reader):
        await kernel_settled(autojump_clock, conn.socket, reader)
        written = net.statistics().write_bytes  # wire bytes, TLS records included
        conn.inactivity_timeout = TIMEOUT
        t0 = trio.current_time()
        await trio.sleep(TIMEOUT * 1.5)  # the first look, at t0 + T, took a baseline
        assert not conn.closed and conn.last_activity == pytest.approx(t0 + TIMEOUT, abs=1e-9)
        # The reader takes one buffer's worth; the kernel sends it more from
        # the queue, but far too little of the queue drains to wake the writer.
        autojump_clock.autojump_threshold = math.inf
        took = len(await reader.recv(1 << 20))
        await kernel_settled(autojump_clock, conn.socket, reader)
        assert took > 0 and net.statistics().write_bytes == written
        await sender.done.wait()
    # The look at t0 + 2T saw acked bytes grow: activity then; the next saw none.
    assert sender.ended_at == pytest.approx(t0 + 3 * TIMEOUT, abs=1e-9)
    assert conn.timed_out == "inactivity"
    assert net.statistics().write_bytes == written  # only the kernel made progress
    assert net.statistics().inactivity_timeouts == 1


async def test_reply_awaiting_its_ack_does_not_stretch_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reply is sent; its ACK may still be delayed by the peer when the
    # deadline comes (under MockClock it comes microseconds later in real
    # time). Nothing is left unsent, so there is no delivery to wait for: the
    # timeout fires exactly at last_activity + T, not a period later.
    net = NetProcessor()
    box: list[trionet.Connection] = []
    ended = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        box.append(conn)
        try:
            assert await conn.receive_some() == b"request"
            await conn.send_all(b"reply" * 1000)
            await conn.receive_some()  # the client sends nothing more
        finally:
            ended.set()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve, handler, AcceptOptions(host="127.0.0.1", inactivity_timeout=TIMEOUT)
        )
        client = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        await client.send_all(b"request")
        got = b""
        while len(got) < 5000:
            got += await client.receive_some()
        await ended.wait()
        (conn,) = box
        assert trio.current_time() == pytest.approx(conn.last_activity + TIMEOUT, abs=1e-9)
        assert conn.timed_out == "inactivity"
        assert net.statistics().inactivity_timeouts == 1
        server.shutdown(0)
        await client.aclose()


async def test_slow_steady_reader_over_tcp_receives_everything() -> None:
    # The issue's case, on the real clock: a reader with a 32 KiB receive buffer
    # takes a chunk every 20 ms (~1.5 MB/s), the server sends 4.5 MiB under a
    # 0.5 s inactivity timeout. The first send fills the kernel's send buffer
    # (~4 MiB here) and the writer then sleeps for most of a second while the
    # reader reads all the time. Before the kernel look, the connection was cut
    # at 0.5 s with ~3.8 MB delivered.
    timeout = 0.5
    payload = bytes(range(256)) * (18 << 10)  # 4.5 MiB
    net = NetProcessor()
    box: list[trionet.Connection] = []

    async def handler(conn: trionet.Connection) -> None:
        box.append(conn)
        await conn.send_all(payload)
        await conn.send_eof()

    digest = hashlib.sha256()
    received = 0
    stall = 0.0  # the longest time the writer moved nothing while still sending
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                net.serve, handler, AcceptOptions(host="127.0.0.1", inactivity_timeout=timeout)
            )
            sock = trio.socket.socket()
            with sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
                await sock.connect(("127.0.0.1", server.ports[0]))
                last_sent, since = -1, trio.current_time()
                while chunk := await sock.recv(32 << 10):
                    digest.update(chunk)
                    received += len(chunk)
                    now = trio.current_time()
                    sent = box[0].bytes_sent if box else 0
                    if sent != last_sent:
                        last_sent, since = sent, now
                    elif sent < len(payload):
                        stall = max(stall, now - since)
                    await trio.sleep(0.02)
            server.shutdown(0)
    conn = box[0]
    assert conn.timed_out is None
    assert net.statistics().inactivity_timeouts == 0
    assert received == len(payload) and conn.bytes_sent == len(payload)
    assert digest.digest() == hashlib.sha256(payload).digest()
    if stall <= timeout:
        pytest.skip(
            f"the writer never slept longer than the timeout (longest {stall:.2f} s): "
            "this kernel's send buffer is too small to show the case"
        )
