"""PROXY protocol out: ``ConnectOptions(send_proxy_protocol=1 | 2)``.

The encoder against the parser (every header it writes parses back to the
addresses it was given) and against the specification's exact bytes; then on
the wire: a TcpProxy sending the header to a trionet server, chained behind
another PROXY hop, and through HAProxy as the receiver (``accept-proxy``),
which relays it on with ``send-proxy-v2`` to a trionet server that must see
the original client's address.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from trionet import AcceptOptions, Connection, ConnectOptions, NetProcessor, TcpProxy
from trionet._base._proxy_header import encode_proxy_header
from trionet._inbound._proxy_protocol import parse_proxy_header

from .test_haproxy import HAPROXY, _has_ipv6_loopback, _listen

# ------------------------------------------------------------------ encoder
ENCODED = [
    # (source, destination, family the receiver sees, source it sees)
    (("10.1.2.3", 4000), ("10.9.9.9", 80), "TCP4", ("10.1.2.3", 4000)),
    (("2001:db8::1", 4000, 0, 0), ("2001:db8::2", 443, 0, 0), "TCP6", ("2001:db8::1", 4000, 0, 0)),
    # A dual-stack socket's view of an IPv4 client: sent as plain IPv4.
    (("::ffff:10.1.2.3", 5, 0, 0), ("::ffff:10.9.9.9", 80, 0, 0), "TCP4", ("10.1.2.3", 5)),
    # One end of each family: both as IPv6, the IPv4 one mapped.
    (("10.1.2.3", 5), ("2001:db8::2", 80, 0, 0), "TCP6", ("::ffff:10.1.2.3", 5, 0, 0)),
    # A scope id has no place on the wire.
    (("fe80::1%lo", 7, 0, 1), ("fe80::2%lo", 8, 0, 1), "TCP6", ("fe80::1", 7, 0, 0)),
]
NO_ADDRESS = [
    (None, None),
    ("/run/app.sock", "/run/app.sock"),  # a Unix socket's "addresses"
    (("10.1.2.3", 5), None),
    (("not an ip", 5), ("10.0.0.1", 80)),
]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("source", "destination", "family", "seen"), ENCODED)
def test_encoded_header_parses_back(
    version: int, source: Any, destination: Any, family: str, seen: Any
) -> None:
    data = encode_proxy_header(version, source, destination)  # type: ignore[arg-type]
    header = parse_proxy_header(data + b"payload")
    assert header is not None
    assert (header.version, header.command, header.family) == (version, "PROXY", family)
    assert header.source == seen
    assert header.length == len(data)
    assert header.destination is not None and header.destination[1] == destination[1]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(("source", "destination"), NO_ADDRESS)
def test_no_addresses_is_unknown_or_local(version: int, source: Any, destination: Any) -> None:
    data = encode_proxy_header(version, source, destination)  # type: ignore[arg-type]
    header = parse_proxy_header(data)
    assert header is not None and header.length == len(data)
    assert header.family == "UNKNOWN" and header.source is None
    assert header.command == ("PROXY" if version == 1 else "LOCAL")


def test_exact_bytes() -> None:
    # The specification's own examples' shape.
    v1 = encode_proxy_header(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert v1 == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert encode_proxy_header(1, None, None) == b"PROXY UNKNOWN\r\n"
    v2 = encode_proxy_header(2, ("127.0.0.1", 1), ("127.0.0.2", 2))
    assert v2 == (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
        + bytes([127, 0, 0, 1, 127, 0, 0, 2])
        + b"\x00\x01\x00\x02"
    )
    assert encode_proxy_header(2, None, None) == b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


@pytest.mark.parametrize("bad", [0, 3, True, 1.0, "v2"])
def test_bad_version_refused(bad: object) -> None:
    with pytest.raises(ValueError, match=rf"ConnectOptions.send_proxy_protocol={bad!r}"):
        ConnectOptions(send_proxy_protocol=bad)  # type: ignore[arg-type]


# ------------------------------------------------------------- on the wire
class Seen:
    """A server handler recording the addresses each connection reports."""

    def __init__(self) -> None:
        self.by_token: dict[bytes, tuple[Any, Any, Any]] = {}

    async def __call__(self, conn: Connection) -> None:
        data = await conn.receive_some()
        self.by_token[data] = (conn.remote_address, conn.local_address, conn.peer_address)
        await conn.send_all(b"ok:" + data)


async def _exchange(
    addr: tuple[Any, ...], token: bytes, local: str | None = None, preamble: bytes = b""
) -> tuple[Any, ...]:
    """Connect, send ``preamble + token``, expect ``ok:token``; our address."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(addr[0], addr[1], local_address=local)
        async with stream:
            me: tuple[Any, ...] = stream.socket.getsockname()
            await stream.send_all(preamble + token)
            got = b""
            while len(got) < len(token) + 3:
                chunk = await stream.receive_some()
                assert chunk, f"closed after {got!r}"
                got += chunk
            assert got == b"ok:" + token
            return me


@pytest.mark.parametrize("version", [1, 2])
async def test_proxy_sends_client_address(version: int) -> None:
    seen = Seen()
    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve, seen, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        )
        opts = ConnectOptions(send_proxy_protocol=version)  # type: ignore[arg-type]
        proxy = TcpProxy(net, "127.0.0.1", server.ports[0], opts)
        front = await nursery.start(net.serve, proxy, AcceptOptions(host="127.0.0.1"))
        me = await _exchange(("127.0.0.1", front.ports[0]), b"hello", local="127.0.0.7")
        server.shutdown(0)
        front.shutdown(0)
    remote, local, peer = seen.by_token[b"hello"]
    assert remote == me  # the client's own address and port
    assert local == ("127.0.0.1", front.ports[0])  # where the client connected
    assert peer[0] == "127.0.0.1" and peer != me  # the socket's peer is the proxy
    stats = net.statistics()
    assert stats.proxy_protocol_errors == 0
    # The header is wire bytes, not payload: the upstream side sent
    # "hello" plus the header, the server read both.
    assert proxy.statistics().upstream_failures == 0


async def test_chained_proxies_relay_the_first_header() -> None:
    # client --(its own PROXY v1 header claiming 203.0.113.7)--> proxy A
    # (accepts PROXY, sends v2) --> server: the server sees 203.0.113.7.
    seen = Seen()
    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve, seen, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        )
        proxy = TcpProxy(net, "127.0.0.1", server.ports[0], ConnectOptions(send_proxy_protocol=2))
        front = await nursery.start(
            net.serve, proxy, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        )
        claim = b"PROXY TCP4 203.0.113.7 198.51.100.1 4444 443\r\n"
        await _exchange(("127.0.0.1", front.ports[0]), b"chained", preamble=claim)
        server.shutdown(0)
        front.shutdown(0)
    remote, local, _ = seen.by_token[b"chained"]
    assert remote == ("203.0.113.7", 4444)
    assert local == ("198.51.100.1", 443)


async def test_connect_without_client_sends_local() -> None:
    # net.connect() on its own (no for_connection): a v2 LOCAL header; the
    # server keeps the socket's own addresses.
    seen = Seen()
    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve, seen, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        )
        opts = ConnectOptions(send_proxy_protocol=2)
        with trio.fail_after(10):
            async with await net.connect("127.0.0.1", server.ports[0], opts) as conn:
                me = conn.sock_address
                await conn.send_all(b"own")
                assert await conn.receive_some() == b"ok:own"
                assert conn.bytes_sent == 3  # the 16-byte header is not payload
        server.shutdown(0)
    remote, _, peer = seen.by_token[b"own"]
    assert remote == peer == me


async def test_header_goes_before_tls() -> None:
    # With TLS to the upstream, the header is sent in the clear first
    # (HAProxy's order), then the handshake: the server reads both.
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen = Seen()
    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve,
            seen,
            AcceptOptions(host="127.0.0.1", proxy_protocol=True, ssl_context=server_ctx),
        )
        opts = ConnectOptions(
            send_proxy_protocol=1, ssl_context=client_ctx, server_hostname="upstream.test"
        )
        proxy = TcpProxy(net, "127.0.0.1", server.ports[0], opts)
        front = await nursery.start(net.serve, proxy, AcceptOptions(host="127.0.0.1"))
        me = await _exchange(("127.0.0.1", front.ports[0]), b"tls", local="127.0.0.8")
        server.shutdown(0)
        front.shutdown(0)
    assert seen.by_token[b"tls"][0] == me
    assert net.statistics().tls_handshake_errors == 0


# ------------------------------------------------------------------ HAProxy
def _haproxy_config(frontend_fd: int, backend: str) -> str:
    return "\n".join(
        [
            "global",
            "    maxconn 100",
            "defaults",
            "    mode tcp",
            "    timeout connect 2s",
            "    timeout client 10s",
            "    timeout server 10s",
            "listen relay",
            f"    bind fd@{frontend_fd} accept-proxy",
            f"    server s1 {backend} send-proxy-v2",
            "",
        ]
    )


@pytest.mark.slow
@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (.ci/run installs it)")
@pytest.mark.parametrize("version", [1, 2])
async def test_haproxy_receives_the_header(tmp_path: Path, version: int) -> None:
    # client -> trionet proxy (send_proxy_protocol) -> haproxy (accept-proxy,
    # send-proxy-v2) -> trionet server (proxy_protocol): the server sees the
    # client's own address, over IPv4 and IPv6.
    seen = Seen()
    net = NetProcessor()
    relay = _listen("127.0.0.1")
    v6 = _has_ipv6_loopback()
    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                net.serve, seen, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
            )
            cfg = tmp_path / "haproxy.cfg"
            cfg.write_text(_haproxy_config(relay.fileno(), f"127.0.0.1:{server.ports[0]}"))
            opts = ConnectOptions(send_proxy_protocol=version)  # type: ignore[arg-type]
            proxy = TcpProxy(net, "127.0.0.1", relay.getsockname()[1], opts)
            fronts = [AcceptOptions(host="127.0.0.1")]
            if v6:
                fronts.append(AcceptOptions(host="::1"))
            front = await nursery.start(net.serve, proxy, *fronts)
            assert HAPROXY is not None
            with open(tmp_path / "haproxy.err", "wb") as err:
                proc = await trio.lowlevel.open_process(
                    [HAPROXY, "-db", "-f", str(cfg)],
                    pass_fds=[relay.fileno()],
                    stdout=err,
                    stderr=err,
                )
            try:
                expected = {}
                for listener in front.listeners:
                    addr = listener.address
                    token = f"v{version}-{listener.socket.family.name}".encode()
                    local = "127.0.0.9" if listener.socket.family == socket.AF_INET else None
                    expected[token] = (await _exchange(addr, token, local), addr)
                assert proc.returncode is None, (tmp_path / "haproxy.err").read_text()
            finally:
                proc.terminate()
                with trio.move_on_after(5):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            server.shutdown(0)
            front.shutdown(0)
    finally:
        relay.close()
    assert len(expected) == (2 if v6 else 1)
    for token, (me, frontend) in expected.items():
        remote, local, peer = seen.by_token[token]
        assert remote[:2] == me[:2], token  # the original client, through two hops
        assert local[:2] == frontend[:2], token
        assert peer[0] == "127.0.0.1" and peer[:2] != me[:2]  # haproxy's socket
    assert net.statistics().proxy_protocol_errors == 0
    assert proxy.statistics().upstream_failures == 0
