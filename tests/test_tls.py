"""TLS on inbound connections: the handshake step before the handler, what
``conn.tls`` reports, handshake timeouts and failures (counted, logged at debug
level, never reaching the handler), and timeouts/statistics as for plain TCP."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trustme

from trionet import (
    AcceptOptions,
    ConnectError,
    Connection,
    ConnectOptions,
    ConnectTimeoutError,
    NetProcessor,
    Server,
    TLSError,
    TLSInfo,
)

Handler = Callable[[Connection], Awaitable[object]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.com", "127.0.0.1").configure_cert(ctx)
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@asynccontextmanager
async def serving(
    handler: Handler, net: NetProcessor | None = None, **opts: Any
) -> AsyncIterator[tuple[NetProcessor, Server, int]]:
    net = net or NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, handler, AcceptOptions(host="127.0.0.1", **opts))
        yield net, server, server.ports[0]
        server.shutdown(0)


async def tls_client(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None = "example.com"
) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname=server_hostname)
    await stream.do_handshake()
    return stream


class Echo:
    """Echo until EOF, remembering each connection."""

    def __init__(self) -> None:
        self.conns: list[Connection] = []
        self.tls: list[TLSInfo | None] = []

    async def __call__(self, conn: Connection) -> None:
        self.conns.append(conn)
        self.tls.append(conn.tls)
        while data := await conn.receive_some():
            await conn.send_all(data)


async def test_tls_echo_and_session_facts(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx) as (net, _, port):
        client = await tls_client(port, client_ctx)
        await client.send_all(b"hello over tls")
        assert await client.receive_some() == b"hello over tls"
        client_version, client_cipher = client.version(), client.cipher()
        await client.aclose()  # close_notify: the handler sees a clean EOF
    (conn,) = echo.conns
    assert echo.tls == [TLSInfo(client_version, client_cipher[0], "http/1.1", "example.com")]
    assert client_version == "TLSv1.3"
    # Payload counts are plaintext; the processor's wire counts include the
    # handshake and record overhead.
    assert conn.bytes_received == conn.bytes_sent == len(b"hello over tls")
    stats = net.statistics()
    assert stats.read_bytes > 100 + len(b"hello over tls")
    assert stats.write_bytes > 300  # at least the certificate chain went out
    assert stats.tls_handshake_errors == stats.tls_handshake_timeouts == 0
    assert stats.handler_errors == 0
    assert stats.connections_currently_open == 0
    assert conn.closed


async def test_no_sni_no_alpn(server_ctx: ssl.SSLContext, ca: trustme.CA) -> None:
    # Connecting to an IP: no SNI is sent (RFC 6066 forbids IP literals), no ALPN offered.
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx) as (_, _, port):
        client = await tls_client(port, ctx, server_hostname="127.0.0.1")
        await client.send_all(b"x")
        assert await client.receive_some() == b"x"
        await client.aclose()
    (info,) = echo.tls
    assert info is not None and info.server_name is None and info.alpn_protocol is None


async def test_users_sni_callback_still_runs(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    names: list[str | None] = []

    def user_callback(obj: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_ctx.sni_callback = user_callback
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx) as (_, _, port):
        for _ in range(2):
            client = await tls_client(port, client_ctx)
            await client.send_all(b"x")
            await client.receive_some()
            await client.aclose()
    assert names == ["example.com", "example.com"]
    assert [i.server_name for i in echo.tls if i] == ["example.com", "example.com"]


async def test_plain_tcp_has_no_tls() -> None:
    echo = Echo()
    async with serving(echo) as (_, _, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"plain")
            assert await stream.receive_some() == b"plain"
    assert echo.tls == [None]


async def test_handshake_timeout_counted_never_handled(
    server_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx, tls_handshake_timeout=3.0) as (net, _, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # connects, never says hello
        async with stream:
            start = trio.current_time()
            assert await stream.receive_some() == b""
            elapsed = trio.current_time() - start
    assert elapsed == pytest.approx(3.0, abs=1e-6)
    stats = net.statistics()
    assert stats.tls_handshake_timeouts == 1
    assert stats.tls_handshake_errors == 0
    assert stats.inactivity_timeouts == 0
    assert stats.connections_currently_open == 0
    assert echo.conns == []
    (record,) = [r for r in caplog.records if "handshake" in r.getMessage()]
    assert record.levelno == logging.DEBUG and "timed out after 3.0 s" in record.getMessage()


async def test_default_handshake_timeout_is_10_s(
    server_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock
) -> None:
    assert AcceptOptions().tls_handshake_timeout == 10.0
    async with serving(Echo(), ssl_context=server_ctx) as (net, _, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"\x16\x03\x01")  # the start of a ClientHello, then silence
            start = trio.current_time()
            assert await stream.receive_some() == b""
            assert trio.current_time() - start == pytest.approx(10.0, abs=1e-6)
    assert net.statistics().tls_handshake_timeouts == 1


@pytest.mark.parametrize(
    ("client", "reason"),
    [
        ("http", "HTTP_REQUEST"),
        ("old", "UNSUPPORTED_PROTOCOL"),
        ("no-cert", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ("eof", "EOF"),
    ],
)
async def test_bad_handshakes_counted_logged_at_debug_without_traceback(
    server_ctx: ssl.SSLContext,
    ca: trustme.CA,
    client: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    # The server wants TLS 1.3 and a client certificate (mutual TLS).
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    echo = Echo()
    attempts = 5
    async with serving(echo, ssl_context=server_ctx) as (net, _, port):
        for _ in range(attempts):
            await _bad_client(client, port, ca)
        # The server logs before closing, and each client waited for that close.
    stats = net.statistics()
    assert stats.tls_handshake_errors == attempts
    assert stats.tls_handshake_timeouts == stats.handler_errors == 0
    assert stats.connections_currently_open == 0
    assert echo.conns == []
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == attempts
    for r in failures:
        assert r.levelno == logging.DEBUG
        assert r.exc_info is None and "Traceback" not in r.getMessage()
        assert reason in r.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def _bad_client(kind: str, port: int, ca: trustme.CA) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    if kind == "http":
        await tcp.send_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        await _drain(tcp)
    elif kind == "eof":
        await tcp.send_eof()
        await _drain(tcp)
    else:
        # A TLS 1.2-only client against a server that requires a client
        # certificate and TLS 1.3 ("old"), or that offers no certificate ("no-cert").
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        if kind == "old":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        stream = trio.SSLStream(tcp, ctx, server_hostname="example.com")
        try:
            await stream.do_handshake()  # TLS 1.3: done before the server checks us
            await stream.receive_some()
        except trio.BrokenResourceError:
            pass
    await tcp.aclose()


async def _drain(stream: trio.SocketStream) -> None:
    """Read until the server closes (EOF or reset)."""
    try:
        while await stream.receive_some():
            pass
    except trio.BrokenResourceError:
        pass


async def test_inactivity_timeout_applies_to_tls_like_tcp(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock
) -> None:
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx, inactivity_timeout=5.0) as (net, _, port):
        client = await tls_client(port, client_ctx)
        await client.send_all(b"ping")
        assert await client.receive_some() == b"ping"
        start = trio.current_time()
        with pytest.raises(trio.BrokenResourceError):  # closed without close_notify
            await client.receive_some()
        assert trio.current_time() - start == pytest.approx(5.0, abs=1e-6)
        await client.aclose()
    (conn,) = echo.conns
    assert conn.timed_out == "inactivity"
    stats = net.statistics()
    assert stats.inactivity_timeouts == 1
    assert stats.tls_handshake_timeouts == 0
    assert stats.connections_currently_open == 0


async def test_handshake_bytes_are_activity(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock
) -> None:
    # Inactivity timeout 2 s: the client waits 1.5 s, handshakes, waits 1.5 s
    # more and sends. Only if the handshake counted as activity is the
    # connection still alive at 3 s.
    echo = Echo()
    async with serving(
        echo, ssl_context=server_ctx, inactivity_timeout=2.0, tls_handshake_timeout=None
    ) as (net, _, port):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.sleep(1.5)
        client = trio.SSLStream(tcp, client_ctx, server_hostname="example.com")
        await client.do_handshake()
        await trio.sleep(1.5)
        await client.send_all(b"still here")
        assert await client.receive_some() == b"still here"
        await client.aclose()
    (conn,) = echo.conns
    assert conn.timed_out is None
    assert conn.last_activity - conn.opened_at >= 3.0
    assert net.statistics().inactivity_timeouts == 0


async def test_inactivity_timeout_during_handshake_is_not_a_handshake_timeout(
    server_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock
) -> None:
    async with serving(
        Echo(), ssl_context=server_ctx, inactivity_timeout=1.0, tls_handshake_timeout=30.0
    ) as (net, _, port):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            start = trio.current_time()
            assert await stream.receive_some() == b""
            assert trio.current_time() - start == pytest.approx(1.0, abs=1e-6)
    stats = net.statistics()
    assert (stats.inactivity_timeouts, stats.tls_handshake_timeouts) == (1, 0)
    assert stats.connections_currently_open == 0


async def test_handler_errors_on_tls_counted_as_for_tcp(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(conn: Connection) -> None:
        await conn.receive_some()
        raise RuntimeError("handler bug")

    async with serving(boom, ssl_context=server_ctx) as (net, _, port):
        client = await tls_client(port, client_ctx)
        await client.send_all(b"x")
        assert await client.receive_some() == b""  # the server sent close_notify
        await client.aclose()
    stats = net.statistics()
    assert stats.handler_errors == 1 and stats.tls_handshake_errors == 0
    assert stats.connections_currently_open == 0
    assert any("handler bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_proxy_header_then_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    # HAProxy in TCP mode in front of a TLS server: PROXY header in clear, then TLS.
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx, proxy_protocol=True) as (net, _, port):
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        await tcp.send_all(b"PROXY TCP4 198.51.100.9 192.0.2.1 51000 443\r\n")
        client = trio.SSLStream(tcp, client_ctx, server_hostname="example.com")
        await client.send_all(b"through a proxy")
        assert await client.receive_some() == b"through a proxy"
        await client.aclose()
    (conn,) = echo.conns
    assert conn.remote_address == ("198.51.100.9", 51000)
    assert conn.local_address == ("192.0.2.1", 443)
    assert conn.tls is not None and conn.tls.server_name == "example.com"
    assert net.statistics().proxy_protocol_errors == 0


async def test_tls_connection_refuses_send_eof(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    results: list[str] = []

    async def handler(conn: Connection) -> None:
        try:
            await conn.send_eof()
        except trio.BrokenResourceError as exc:
            results.append(str(exc))
        await conn.send_all(b"bye")

    async with serving(handler, ssl_context=server_ctx) as (_, _, port):
        client = await tls_client(port, client_ctx)
        assert await client.receive_some() == b"bye"
        await client.aclose()
    assert results == ["a TLS connection cannot half-close (send_eof)"]


# ---------------------------------------------------------------- client side
async def test_connect_tls_echo_alpn_sni(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    echo = Echo()
    client_net = NetProcessor()
    async with serving(echo, ssl_context=server_ctx) as (_, _, port):
        opts = ConnectOptions(
            ssl_context=client_ctx, server_hostname="example.com", alpn_protocols=["h2"]
        )
        conn = await client_net.connect("127.0.0.1", port, opts)
        async with conn:
            await conn.send_all(b"outbound tls")
            assert await conn.receive_some() == b"outbound tls"
            info = conn.tls
    assert info is not None
    assert (info.version, info.alpn_protocol, info.server_name) == ("TLSv1.3", "h2", "example.com")
    assert echo.tls[0] is not None and echo.tls[0].alpn_protocol == "h2"
    assert echo.tls[0].server_name == "example.com" and echo.tls[0].cipher == info.cipher
    assert conn.bytes_sent == conn.bytes_received == len(b"outbound tls")
    stats = client_net.statistics()
    assert (stats.connects_total, stats.connect_failures, stats.tls_handshake_errors) == (1, 0, 0)
    assert stats.write_bytes > conn.bytes_sent  # ClientHello and records on the wire
    assert stats.connections_currently_open == 0


async def test_connect_verifies_ip_literal_without_sni(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    echo = Echo()
    async with serving(echo, ssl_context=server_ctx) as (_, _, port):
        conn = await NetProcessor().connect(
            "127.0.0.1", port, ConnectOptions(ssl_context=client_ctx)
        )
        async with conn:
            await conn.send_all(b"x")
            assert await conn.receive_some() == b"x"
    assert conn.tls is not None and conn.tls.server_name is None
    assert echo.tls[0] is not None and echo.tls[0].server_name is None


@pytest.mark.parametrize(
    ("hostname", "trust", "reason"),
    [
        ("other.example", True, "Hostname mismatch, certificate is not valid for 'other.example'"),
        ("example.com", False, "unable to get local issuer certificate"),
    ],
    ids=["hostname-mismatch", "untrusted-ca"],
)
async def test_connect_certificate_failure_raises_tls_error(
    server_ctx: ssl.SSLContext, ca: trustme.CA, hostname: str, trust: bool, reason: str
) -> None:
    ctx = ssl.create_default_context()
    if trust:
        ca.configure_trust(ctx)
    client_net = NetProcessor()
    async with serving(Echo(), ssl_context=server_ctx) as (server_net, _, port):
        with pytest.raises(TLSError) as info:
            await client_net.connect(
                "127.0.0.1", port, ConnectOptions(ssl_context=ctx, server_hostname=hostname)
            )
    err = info.value
    assert isinstance(err, ConnectError) and isinstance(err, OSError)
    assert str(err) == (
        f"TLS handshake failed for {hostname} (certificate verify failed: {reason}): "
        f"127.0.0.1:{port}"
    )
    assert isinstance(err.__cause__, ssl.SSLCertVerificationError)
    assert err.errno == err.__cause__.errno
    stats = client_net.statistics()
    assert (stats.connects_total, stats.connect_failures, stats.tls_handshake_errors) == (1, 1, 1)
    assert stats.connect_timeouts == 0
    assert stats.connections_currently_open == 0
    assert server_net.statistics().connections_currently_open == 0


class SlowResolver:
    """Resolves to 127.0.0.1 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        await trio.sleep(self.delay)
        return [(socket.AF_INET, ("127.0.0.1", port))]


async def test_connect_timeout_covers_resolve_tcp_and_tls(
    client_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock
) -> None:
    # A peer that accepts TCP but never answers the ClientHello: resolution
    # takes 1.5 s of the 2 s budget, the handshake stalls for the rest.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        net = NetProcessor()
        opts = ConnectOptions(
            ssl_context=client_ctx,
            server_hostname="example.com",
            connect_timeout=2.0,
            resolver=SlowResolver(1.5),
        )
        start = trio.current_time()
        with pytest.raises(ConnectTimeoutError, match=f"after 2000 ms: silent.test:{port}$"):
            await net.connect("silent.test", port, opts)
        assert trio.current_time() - start == pytest.approx(2.0, abs=1e-6)
    stats = net.statistics()
    assert (stats.connect_timeouts, stats.connect_failures, stats.tls_handshake_errors) == (1, 0, 0)
    assert stats.write_bytes > 0  # the ClientHello went out: the timeout hit the TLS step
    assert stats.connections_currently_open == 0


async def test_cancel_during_client_handshake_closes_socket(
    client_ctx: ssl.SSLContext, autojump_clock: trio.abc.Clock
) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        net = NetProcessor()
        with trio.move_on_after(1.0) as scope:
            await net.connect(
                "127.0.0.1", silent.getsockname()[1], ConnectOptions(ssl_context=client_ctx)
            )
        assert scope.cancelled_caught
        accepted, _ = silent.accept()
        with accepted:
            accepted.settimeout(5)
            hello = accepted.recv(65536)
            assert hello[:1] == b"\x16"  # a TLS handshake record was sent...
            assert accepted.recv(65536) == b""  # ...and the client's socket is closed
    stats = net.statistics()
    assert stats.connections_currently_open == 0
    assert (stats.connect_timeouts, stats.connect_failures) == (0, 0)
