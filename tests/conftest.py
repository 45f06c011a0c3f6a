"""Shared fixtures: a processor, a running server, and fd accounting."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

import trionet
from trionet._processor import table_of

Handler = Callable[[trionet.Connection], Awaitable[object]]


def open_fds() -> int:
    """Number of file descriptors this process has open (Linux)."""
    return len(os.listdir("/proc/self/fd"))


async def start_server(
    nursery: trio.Nursery,
    net: trionet.NetProcessor,
    handler: Handler,
    *specs: int | trionet.AcceptOptions,
) -> trionet.Server:
    """Serve on 127.0.0.1 (ephemeral port) unless specs are given."""
    if not specs:
        specs = (trionet.AcceptOptions(host="127.0.0.1"),)
    server: trionet.Server = await nursery.start(net.serve, handler, *specs)
    return server


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def connection_pair(
    net: trionet.NetProcessor, family: int = 2
) -> tuple[trionet.Connection, trionet.Connection]:
    """Two connected ``Connection`` objects over loopback TCP (client, server),
    both counted by ``net``."""
    host = "127.0.0.1" if family == 2 else "::1"
    listener = trio.socket.socket(family)
    with listener:
        await listener.bind((host, 0))
        listener.listen(1)
        client = trio.socket.socket(family)
        await client.connect(listener.getsockname())
        server, peer = await listener.accept()
    table = table_of(net)
    a = table.open(client, inbound=False, client=None, peer_address=client.getpeername())
    b = table.open(server, inbound=True, client=host, peer_address=peer)
    return a, b


async def tcp_client(port: int, host: str = "127.0.0.1") -> trio.SocketStream:
    return await trio.open_tcp_stream(host, port)


async def recv_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def wait_for(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Poll ``predicate`` at trio checkpoints (bounded: 2000 scheduler passes
    with a 1 ms sleep each) -- for waiting on another task's progress."""
    for _ in range(2000):
        if predicate():
            return
        await trio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")
