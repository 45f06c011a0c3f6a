"""Connection: the HalfCloseableStream contract, attributes, counters, socket options."""

from __future__ import annotations

import inspect
import socket
from functools import partial

import pytest
import trio
import trio.testing

import trionet
from trionet._core._wire import Wire

from .conftest import connection_pair


async def test_half_closeable_stream_contract() -> None:
    # trio's checks want every call to be a full checkpoint: schedule_interval=1
    # (the default bounded policy is checked in tests/test_wire.py).
    net = trionet.NetProcessor(schedule_interval=1)
    await trio.testing.check_half_closeable_stream(partial(connection_pair, net), None)
    assert net.statistics().connections_currently_open == 0


async def test_attributes_and_counters() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    assert b.id == a.id + 1
    assert a.remote_address == b.local_address
    assert b.remote_address == a.local_address
    assert b.inbound and not a.inbound
    assert a.opened_at <= trio.current_time()
    await a.send_all(b"x" * 1000)
    got = b""
    while len(got) < 1000:
        got += await b.receive_some(4096)
    assert (a.bytes_sent, b.bytes_received) == (1000, 1000)
    await a.send_eof()
    assert await b.receive_some() == b""
    stats = net.statistics()
    assert stats.write_bytes == 1000 and stats.read_bytes == 1000
    assert stats.calls_to_read_nodata == 1  # the EOF
    assert stats.calls_to_write >= 1 and stats.calls_to_read >= 2
    assert stats.connections_currently_open == 2
    await a.aclose()
    await b.aclose()
    await b.aclose()  # idempotent
    assert a.closed and b.closed
    assert net.statistics().connections_currently_open == 0


async def test_sockopt_roundtrip() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert len(a.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == 8  # type: ignore[arg-type]
    await a.aclose()
    await b.aclose()


async def test_receive_size_validation() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    with pytest.raises(ValueError, match="max_bytes=0"):
        await a.receive_some(0)
    with pytest.raises(TypeError, match="max_bytes=True"):
        await a.receive_some(True)
    await a.aclose()
    await b.aclose()


async def test_reset_by_peer_is_broken_resource() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    await a.aclose()  # linger 0: RST
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()
    await b.aclose()
    assert net.statistics().connections_currently_open == 0


@pytest.mark.parametrize(
    ("family", "unknown"),
    [(socket.AF_INET, ("0.0.0.0", 0)), (socket.AF_INET6, ("::", 0, 0, 0))],
)
async def test_addresses_of_a_closed_connection(family: int, unknown: tuple[object, ...]) -> None:
    """The peer's address is kept from the accept/connect; our own is asked
    for lazily, so a socket closed before anyone asked reports the all-zero
    address of its family (ATS's get_local_addr), never None."""
    net = trionet.NetProcessor()
    a, b = await connection_pair(net, family=family)
    asked = a.local_address  # asked while open: kept
    peer = b.remote_address
    a.close()
    b.close()
    assert a.local_address == a.sock_address == asked == peer
    assert b.peer_address == b.remote_address == peer
    assert b.local_address == b.sock_address == unknown


async def test_stream_methods_read_as_async_but_run_one_frame() -> None:
    """receive_some/send_all... are plain functions handing back the wire
    primitive's own coroutine (no second frame per call); what reads their
    signature (help(), the docs) sees the async methods they behave as."""
    net = trionet.NetProcessor()
    a, b = await connection_pair(net)
    coro = a.receive_some()
    assert coro.cr_code is Wire._wire_receive.__code__
    coro.close()
    coro = a.send_all(b"x")
    assert coro.cr_code is Wire._wire_send.__code__
    coro.close()
    for name in ("receive_some", "send_all", "send_eof", "wait_send_all_might_not_block"):
        method = getattr(trionet.Connection, name)
        assert not inspect.iscoroutinefunction(method)
        assert inspect.iscoroutinefunction(inspect.unwrap(method))
    assert inspect.signature(trionet.Connection.receive_some).return_annotation == "bytes"
    a.close()
    b.close()


async def test_ipv6_pair() -> None:
    net = trionet.NetProcessor()
    a, b = await connection_pair(net, family=socket.AF_INET6)
    assert a.remote_address[0] == "::1"
    await a.send_all(b"v6")
    assert await b.receive_some() == b"v6"
    await a.aclose()
    await b.aclose()
