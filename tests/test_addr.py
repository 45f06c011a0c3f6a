"""One client, one identity: IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``,
what a dual-stack socket reports for an IPv4 client) are the IPv4 client
wherever clients are counted or matched -- the per-client limit, its exempt
networks, and networks written in either form."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trionet
from trionet import AcceptOptions, NetProcessor
from trionet._base._addr import client_key, in_networks, normalize_networks
from trionet._core._throttle import Throttle
from trionet._processor import table_of

from .conftest import wait_for


def nets(*texts: str) -> tuple[Any, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


# ------------------------------------------------------------------ the helper
@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::FFFF:10.1.2.3", "10.1.2.3"),
        ("0:0:0:0:0:ffff:7f00:1", "127.0.0.1"),  # the same address, spelled out
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("2001:db8::ffff:1", "2001:db8::ffff:1"),  # has "ffff", is not mapped
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_client_key(host: str, key: str) -> None:
    assert client_key(host) == key


@pytest.mark.parametrize(
    ("written", "normalised"),
    [
        (["::ffff:127.0.0.0/104"], ["127.0.0.0/8"]),
        (["::ffff:10.0.0.1/128"], ["10.0.0.1/32"]),
        (["::ffff:0:0/96"], ["0.0.0.0/0"]),
        # Networks holding the whole mapped range hold every IPv4 address too.
        (["::/0"], ["0.0.0.0/0", "::/0"]),
        (["::/80"], ["0.0.0.0/0", "::/80"]),
        (["0.0.0.0/0", "::/0"], ["0.0.0.0/0", "::/0"]),
        (["10.0.0.0/8", "::ffff:10.0.0.0/104"], ["10.0.0.0/8"]),
        (["2001:db8::/32", "::1/128"], ["2001:db8::/32", "::1/128"]),
    ],
)
def test_normalize_networks(written: list[str], normalised: list[str]) -> None:
    assert [str(n) for n in normalize_networks(nets(*written))] == normalised


@settings(max_examples=200, deadline=None)
@given(
    net=st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)),
    host=st.integers(0, 2**32 - 1),
    mapped_net=st.booleans(),
)
def test_either_spelling_matches_either_spelling(
    net: tuple[int, int], host: int, mapped_net: bool
) -> None:
    v4 = ipaddress.IPv4Network(net, strict=False)
    written: Any = v4
    if mapped_net:
        base = int(ipaddress.IPv6Address("::ffff:0:0")) | int(v4.network_address)
        written = ipaddress.IPv6Network((base, v4.prefixlen + 96))
    addr = ipaddress.IPv4Address(host)
    expected = addr in v4
    assert in_networks(str(addr), (written,)) is expected
    assert in_networks(f"::ffff:{addr}", (written,)) is expected
    assert client_key(f"::ffff:{addr}") == str(addr)


def test_in_networks_refuses_non_addresses() -> None:
    everything = nets("0.0.0.0/0", "::/0")
    assert not in_networks("example.com", everything)
    assert not in_networks("", everything)
    assert in_networks("2001:db8::1", everything) and in_networks("::ffff:1.2.3.4", everything)


def test_throttle_counts_both_spellings_as_one_client() -> None:
    t = Throttle(per_client_max=1)
    t.acquire("::ffff:192.0.2.1")
    assert t.client_at_limit("192.0.2.1") and t.client_at_limit("::ffff:192.0.2.1")
    assert t.per_client == {"192.0.2.1": 1}
    t.release("::ffff:192.0.2.1")
    assert t.per_client == {} and not t.client_at_limit("192.0.2.1")


@pytest.mark.parametrize("exempt", ["::ffff:127.0.0.0/104", "127.0.0.0/8"])
def test_throttle_exempt_written_either_way(exempt: str) -> None:
    t = Throttle(per_client_max=1, exempt=nets(exempt))
    for host in ("127.0.0.1", "::ffff:127.0.0.1"):
        t.acquire(host)
        assert not t.client_at_limit(host)
    t.acquire("::ffff:10.0.0.1")  # outside the exempt network: limited, in either spelling
    assert t.client_at_limit("10.0.0.1") and t.client_at_limit("::ffff:10.0.0.1")


# ------------------------------------------------- over real dual-stack sockets
def dual_stack_listener() -> int:
    """A listening AF_INET6 socket with IPV6_V6ONLY off, bound to loopback
    through its mapped address: IPv4 clients of 127.0.0.1 arrive as
    ``::ffff:127.0.0.1``. Returns its fd, for ``AcceptOptions(fd=...)``."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:127.0.0.1", 0))
        sock.listen()
        return sock.detach()  # the server takes it over and closes it


class Holder:
    """A handler that answers b"ok", then holds the connection until released."""

    def __init__(self) -> None:
        self.peers: list[str] = []
        self.release = trio.Event()

    async def __call__(self, conn: trionet.Connection) -> None:
        self.peers.append(conn.remote_address[0])
        await conn.send_all(b"ok")
        await self.release.wait()


@asynccontextmanager
async def two_listeners(
    net: NetProcessor, handler: Holder
) -> AsyncIterator[tuple[int, int, trionet.Server]]:
    """An IPv4 listener and a dual-stack one, both on 127.0.0.1; yields their ports."""
    async with trio.open_nursery() as nursery:
        specs = (AcceptOptions(host="127.0.0.1"), AcceptOptions(fd=dual_stack_listener()))
        server: trionet.Server = await nursery.start(net.serve, handler, *specs)
        ports = [listener.port for listener in server.listeners]
        yield ports[0], ports[1], server
        handler.release.set()
        server.shutdown(1)


async def reply(streams: list[trio.SocketStream], port: int) -> bytes:
    """Connect to 127.0.0.1:port (kept open in ``streams``) and read the answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    streams.append(stream)
    try:
        return await stream.receive_some(10)
    except trio.BrokenResourceError:
        return b""


@pytest.mark.parametrize("first", ["ipv4", "dual-stack"])
async def test_per_client_limit_holds_across_ipv4_and_dual_stack(first: str) -> None:
    net = NetProcessor(per_client_max_connections=1)
    holder = Holder()
    streams: list[trio.SocketStream] = []
    async with two_listeners(net, holder) as (v4_port, dual_port, _):
        order = [v4_port, dual_port] if first == "ipv4" else [dual_port, v4_port]
        assert await reply(streams, order[0]) == b"ok"
        assert await reply(streams, order[1]) == b""  # the same client: refused
        assert await reply(streams, dual_port) == b""
        assert await reply(streams, v4_port) == b""
        stats = net.statistics()
        assert stats.per_client_connections_throttled_in == 3
        assert table_of(net).throttle.per_client == {"127.0.0.1": 1}
    expected_peer = "127.0.0.1" if first == "ipv4" else "::ffff:127.0.0.1"
    assert holder.peers == [expected_peer]  # the handler still sees the socket's address
    for stream in streams:
        await stream.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)
    assert table_of(net).throttle.per_client == {}


@pytest.mark.parametrize("exempt", ["::ffff:127.0.0.0/104", "127.0.0.0/8"])
async def test_exempt_network_matches_a_mapped_client(exempt: str) -> None:
    net = NetProcessor(per_client_max_connections=1, per_client_exempt=[exempt])
    holder = Holder()
    streams: list[trio.SocketStream] = []
    async with two_listeners(net, holder) as (v4_port, dual_port, _):
        for port in (dual_port, dual_port, v4_port, dual_port):
            assert await reply(streams, port) == b"ok"
        assert net.statistics().per_client_connections_throttled_in == 0
    assert holder.peers.count("::ffff:127.0.0.1") == 3 and holder.peers.count("127.0.0.1") == 1
    for stream in streams:
        await stream.aclose()
