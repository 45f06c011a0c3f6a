"""HAProxy in front of a trionet server with ``proxy_protocol=True``: the real
``send-proxy`` (v1) and ``send-proxy-v2`` (with the CRC32C and unique-id TLVs)
headers, clients connecting through it over IPv4 and IPv6, and the handler
seeing each client's own address and port. HAProxy's health checks arrive with
a v2 ``LOCAL`` header (v1: a TCP4 line naming haproxy's own socket, as the
specification recommends) and must be accepted with the socket's addresses.

HAProxy's frontends listen on sockets this test binds (ephemeral loopback
ports) and hands over as ``fd@N``, so there is no port race. Needs the
``haproxy`` binary (Debian package ``haproxy``, installed by ``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from trionet import AcceptOptions, Connection, NetProcessor

from .test_addr import dual_stack_listener

HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        HAPROXY is None,
        reason="haproxy not installed (Debian: apt-get install -y haproxy; .ci/run does this)",
    ),
]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Seen:
    """What the handler saw per connection, keyed by the token the client sent."""

    def __init__(self) -> None:
        self.by_token: dict[bytes, tuple[Any, Any, Any, dict[int, bytes], bool]] = {}
        self.health_checks: list[tuple[Any, Any]] = []
        self.health_checked = trio.Event()

    async def __call__(self, conn: Connection) -> None:
        if conn.remote_address == conn.peer_address:
            # Only haproxy's own health checks carry the socket's addresses
            # (v2 LOCAL; v1 "PROXY TCP4 <its own socket>"); haproxy resets them at once.
            self.health_checks.append((conn.remote_address, conn.peer_address))
            self.health_checked.set()
            return
        data = await conn.receive_some()
        self.by_token[data] = (
            conn.remote_address,
            conn.local_address,
            conn.peer_address,
            conn.proxy_tlvs,
            conn.tls is not None,
        )
        await conn.send_all(b"ok:" + data)


def _listen(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(64)
    return sock


def _config(backends: dict[str, tuple[list[int], str]]) -> str:
    """One ``listen`` section per name: frontends on inherited fds, one server."""
    lines = [
        "global",
        "    maxconn 200",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 10s",
        "    timeout server 10s",
    ]
    for name, (fds, server) in backends.items():
        lines.append(f"listen {name}")
        lines.extend(f"    bind fd@{fd}" for fd in fds)
        lines.append("    unique-id-format %ci:%cp")
        lines.append(f"    server s1 {server}")
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def haproxy(
    tmp_path: Path, backends: dict[str, tuple[list[socket.socket], str]]
) -> AsyncIterator[None]:
    """Run haproxy in the foreground with the given frontends and servers."""
    fds = {
        name: ([s.fileno() for s in socks], server) for name, (socks, server) in backends.items()
    }
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(_config(fds))
    passed = [fd for fd_list, _ in fds.values() for fd in fd_list]
    assert HAPROXY is not None
    # The child gets its own copies of the log descriptors; ours close at once.
    with open(tmp_path / "haproxy.err", "wb") as err:
        proc = await trio.lowlevel.open_process(
            [HAPROXY, "-db", "-f", str(cfg)], pass_fds=passed, stdout=err, stderr=err
        )
    try:
        yield
        assert proc.returncode is None, (tmp_path / "haproxy.err").read_text()
    finally:
        proc.terminate()
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for socks, _ in backends.values():
            for s in socks:
                s.close()


async def _client(addr: tuple[str, int], token: bytes, local: str | None = None) -> Any:
    """Connect to haproxy, send a token, check the echo; return our own address."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(addr[0], addr[1], local_address=local)
        async with stream:
            me = stream.socket.getsockname()
            await stream.send_all(token)
            got = b""
            while len(got) < len(token) + 3:
                chunk = await stream.receive_some()
                assert chunk, f"haproxy closed the connection after {got!r}"
                got += chunk
            assert got == b"ok:" + token
            return me


async def test_haproxy_send_proxy_v1_and_v2(tmp_path: Path) -> None:
    seen = Seen()
    net = NetProcessor()
    v6 = _has_ipv6_loopback()
    fe_v1 = [_listen("127.0.0.1")] + ([_listen("::1")] if v6 else [])
    fe_v2 = [_listen("127.0.0.1")] + ([_listen("::1")] if v6 else [])
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve,
            seen,
            AcceptOptions(
                host="127.0.0.1", proxy_protocol=True, proxy_protocol_trusted=["127.0.0.1/32"]
            ),
        )
        backend = f"127.0.0.1:{server.ports[0]}"
        async with haproxy(
            tmp_path,
            {
                "v1": (fe_v1, f"{backend} send-proxy"),
                "v2": (fe_v2, f"{backend} send-proxy-v2 proxy-v2-options crc32c,unique-id"),
            },
        ):
            expected: dict[bytes, tuple[Any, Any, str]] = {}

            async def one(version: str, fe: socket.socket, i: int, local: str | None) -> None:
                token = f"{version}-{fe.family.name}-{i}".encode()
                addr = fe.getsockname()
                me = await _client((addr[0], addr[1]), token, local)
                expected[token] = (me, addr, version)

            async with trio.open_nursery() as clients:
                for version, fes in (("v1", fe_v1), ("v2", fe_v2)):
                    for fe in fes:
                        for i in range(5):
                            # IPv4 clients come from 127.0.0.2..6, distinct from
                            # haproxy's own 127.0.0.1 towards the server.
                            local = f"127.0.0.{2 + i}" if fe.family == socket.AF_INET else None
                            clients.start_soon(one, version, fe, i, local)
        server.shutdown(0)

    assert len(expected) == len(seen.by_token) == (20 if v6 else 10)
    for token, (me, frontend, version) in expected.items():
        remote, local, peer, tlvs, tls = seen.by_token[token]
        # The handler sees the client's own address and port, and the
        # frontend address it connected to, in getpeername()'s shape.
        assert remote[:2] == me[:2], token
        assert local[:2] == frontend[:2], token
        assert len(remote) == len(me)
        # ...while the socket's own peer is haproxy on 127.0.0.1.
        assert peer[0] == "127.0.0.1" and peer != remote
        if version == "v2":
            assert tlvs[0x05] == f"{me[0]}:{me[1]}".encode()  # unique-id: %ci:%cp
            assert len(tlvs[0x03]) == 4  # CRC32C present and verified by the parser
        else:
            assert tlvs == {}
        assert not tls
    stats = net.statistics()
    assert stats.proxy_protocol_errors == 0
    assert stats.handler_errors == 0
    assert stats.connections_currently_open == 0


async def test_haproxy_health_checks_accepted(tmp_path: Path) -> None:
    # "check check-send-proxy": haproxy's own probes carry a v2 LOCAL header
    # (b"\r\n\r\n\0\r\nQUIT\n \0\0\0" with haproxy 2.6) or a v1 line with its own
    # socket's addresses; trionet accepts them and reports the socket's addresses.
    for version, option in (("v2", "send-proxy-v2"), ("v1", "send-proxy")):
        seen = Seen()
        net = NetProcessor()
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                net.serve, seen, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
            )
            backend = f"127.0.0.1:{server.ports[0]} {option} check check-send-proxy inter 100ms"
            async with haproxy(tmp_path, {"hc": ([_listen("127.0.0.1")], backend)}):
                with trio.fail_after(10):
                    await seen.health_checked.wait()
            server.shutdown(0)
        remote, peer = seen.health_checks[0]
        assert remote == peer and peer[0] == "127.0.0.1", version
        assert net.statistics().proxy_protocol_errors == 0, version
        assert net.statistics().connections_currently_open == 0


async def test_haproxy_in_front_of_tls_server(tmp_path: Path) -> None:
    # TCP-mode haproxy passing TLS through, PROXY v2 header in front of it.
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.com").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    seen = Seen()
    net = NetProcessor()
    fe = _listen("127.0.0.1")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve,
            seen,
            AcceptOptions(host="127.0.0.1", proxy_protocol=True, ssl_context=server_ctx),
        )
        async with haproxy(tmp_path, {"tls": ([fe], f"127.0.0.1:{server.ports[0]} send-proxy-v2")}):
            with trio.fail_after(10):
                tcp = await trio.open_tcp_stream(*fe.getsockname(), local_address="127.0.0.9")
                me = tcp.socket.getsockname()
                client = trio.SSLStream(tcp, client_ctx, server_hostname="example.com")
                await client.send_all(b"secret")
                assert await client.receive_some() == b"ok:secret"
                await client.aclose()
        server.shutdown(0)
    remote, _, peer, _, tls = seen.by_token[b"secret"]
    assert remote == me and peer[0] == "127.0.0.1" and tls
    assert net.statistics().tls_handshake_errors == 0


async def test_haproxy_source_trust(tmp_path: Path) -> None:
    # By default a PROXY port believes loopback only: haproxy on 127.0.0.1 in
    # front of a dual-stack port (where its address arrives as the mapped
    # ::ffff:127.0.0.1) is believed; so it is on an IPv4 port trusting the
    # mapped spelling of its network; a port trusting only 10.0.0.0/8 refuses
    # the same haproxy's connections and counts the refusal.
    seen = Seen()
    net = NetProcessor()
    specs = [
        AcceptOptions(fd=dual_stack_listener(), proxy_protocol=True),
        AcceptOptions(
            host="127.0.0.1", proxy_protocol=True, proxy_protocol_trusted=["::ffff:127.0.0.0/104"]
        ),
        AcceptOptions(host="127.0.0.1", proxy_protocol=True, proxy_protocol_trusted=["10.0.0.0/8"]),
    ]
    frontends = [_listen("127.0.0.1") for _ in specs]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, seen, *specs)
        backends = {
            f"b{i}": ([fe], f"127.0.0.1:{listener.port} send-proxy-v2")
            for i, (fe, listener) in enumerate(zip(frontends, server.listeners, strict=True))
        }
        async with haproxy(tmp_path, backends):
            me_dual = await _client(frontends[0].getsockname(), b"dual-stack", "127.0.0.2")
            me_v4 = await _client(frontends[1].getsockname(), b"mapped-network", "127.0.0.3")
            with trio.fail_after(10):
                stream = await trio.open_tcp_stream(*frontends[2].getsockname()[:2])
                async with stream:
                    await stream.send_all(b"refused")
                    got = b""
                    try:
                        while chunk := await stream.receive_some():
                            got += chunk
                    except trio.BrokenResourceError:
                        pass  # reset: closed with the header unread
        server.shutdown(0)
    assert got == b""
    assert sorted(seen.by_token) == [b"dual-stack", b"mapped-network"]
    remote, _, peer, _, _ = seen.by_token[b"dual-stack"]
    assert remote[:2] == me_dual[:2] and peer[0] == "::ffff:127.0.0.1"
    remote, _, peer, _, _ = seen.by_token[b"mapped-network"]
    assert remote[:2] == me_v4[:2] and peer[0] == "127.0.0.1"
    stats = net.statistics()
    assert stats.proxy_protocol_errors == 1 and stats.connections_currently_open == 0
