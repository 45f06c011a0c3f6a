"""PROXY protocol v1/v2: the I/O-free parser (table-driven cases and hypothesis
fuzzing) and the server step that reads the header before the handler runs."""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trionet
from trionet import AcceptOptions, Connection, NetProcessor, ProxyProtocolError
from trionet._inbound._prepare import prepare_inbound
from trionet._inbound._proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    crc32c,
    parse_proxy_header,
)
from trionet._processor import table_of

from .test_addr import dual_stack_listener


# ------------------------------------------------------------------ builders
def v2(
    cmd: int = 0x21,
    fam: int = 0x11,
    block: bytes = b"",
    length: int | None = None,
) -> bytes:
    """A v2 header: signature, version/command, family/protocol, length, block."""
    n = len(block) if length is None else length
    return V2_SIGNATURE + bytes([cmd, fam]) + struct.pack("!H", n) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return a.packed + b.packed + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def with_crc(cmd: int, fam: int, addrs: bytes, tlvs: bytes = b"", bad: bool = False) -> bytes:
    zeroed = v2(cmd, fam, addrs + tlvs + tlv(0x03, b"\0\0\0\0"))
    crc = crc32c(zeroed) ^ (1 if bad else 0)
    return zeroed[:-4] + crc.to_bytes(4, "big")


IP4 = inet("192.0.2.1", "198.51.100.2", 56324, 443)
IP6 = inet("2001:db8::1", "2001:db8::2", 1, 65535)

# ------------------------------------------------------- table: valid headers
VALID: list[tuple[str, bytes, dict[str, Any]]] = [
    (
        "v1 tcp4",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
        dict(family="TCP4", source=("192.0.2.1", 56324), destination=("198.51.100.2", 443)),
    ),
    (
        "v1 tcp6",
        b"PROXY TCP6 2001:db8::1 ::ffff:10.0.0.1 0 65535\r\n",
        dict(
            family="TCP6",
            source=("2001:db8::1", 0, 0, 0),
            destination=("::ffff:10.0.0.1", 65535, 0, 0),  # as getpeername() prints it
        ),
    ),
    ("v1 unknown short", b"PROXY UNKNOWN\r\n", dict(family="UNKNOWN", source=None)),
    (
        "v1 unknown worst case (107 bytes)",
        b"PROXY UNKNOWN " + b"f" * 39 + b" " + b"f" * 39 + b" 65535 65535\r\n",
        dict(family="UNKNOWN", length=107),
    ),
    (
        "v2 tcp4",
        v2(0x21, 0x11, IP4),
        dict(version=2, family="TCP4", source=("192.0.2.1", 56324), tlvs={}),
    ),
    (
        "v2 tcp6",
        v2(0x21, 0x21, IP6),
        dict(
            family="TCP6", source=("2001:db8::1", 1, 0, 0), destination=("2001:db8::2", 65535, 0, 0)
        ),
    ),
    ("v2 local empty", v2(0x20, 0x00), dict(command="LOCAL", family="UNKNOWN", length=16)),
    (
        "v2 local with inet block and tlv (addresses ignored, tlvs kept)",
        v2(0x20, 0x11, IP4 + tlv(0x05, b"id")),
        dict(command="LOCAL", family="UNKNOWN", source=None, tlvs={0x05: b"id"}),
    ),
    (
        "v2 tlvs (alpn, authority, unique id; noop dropped)",
        v2(0x21, 0x11, IP4 + tlv(1, b"h2") + tlv(2, b"example.com") + tlv(4, b"xx") + tlv(5, b"")),
        dict(tlvs={1: b"h2", 2: b"example.com", 5: b""}),
    ),
    (
        "v2 udp falls back to unknown",
        v2(0x21, 0x12, IP4),
        dict(family="UNKNOWN", source=None),
    ),
    (
        "v2 unix stream falls back to unknown",
        v2(0x21, 0x31, b"/a".ljust(108, b"\0") + b"/b".ljust(108, b"\0")),
        dict(family="UNKNOWN"),
    ),
    ("v2 unspec proxy", v2(0x21, 0x00), dict(command="PROXY", family="UNKNOWN")),
    ("v2 crc32c ok", with_crc(0x21, 0x11, IP4), dict(family="TCP4")),
]


@pytest.mark.parametrize(("name", "data", "expect"), VALID, ids=[v[0] for v in VALID])
def test_valid_headers(name: str, data: bytes, expect: dict[str, Any]) -> None:
    tail = b"GET / HTTP/1.1\r\n\r\n"
    header = parse_proxy_header(data + tail)
    assert isinstance(header, ProxyHeader)
    assert header.length == len(data)  # exactly the header, never the payload
    for key, value in expect.items():
        assert getattr(header, key) == value, key
    # Every proper prefix is "need more", never an error or a header.
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut]) is None, cut


# ----------------------------------------------------- table: malformed headers
MALFORMED: list[tuple[str, bytes, str]] = [
    ("http request", b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    ("v1 lowercase", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "not a PROXY"),
    ("v1 no space after PROXY", b"PROXY\r\n", "bad signature"),
    ("v1 LF only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "lone CR or LF"),
    ("v1 CR only", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "CR not followed by LF"),
    ("v1 too long", b"PROXY UNKNOWN " + b"x" * 100, "no CRLF in the first 107"),
    ("v1 unknown proto", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    ("v1 double space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "4 space-separated"),
    ("v1 missing port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "4 space-separated"),
    ("v1 trailing space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "4 space-separated"),
    ("v1 port +1", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad source port"),
    ("v1 port 1_0", b"PROXY TCP4 1.2.3.4 5.6.7.8 1_0 2\r\n", "bad source port"),
    ("v1 port leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n", "leading zero"),
    ("v1 port too big", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "65536 > 65535"),
    ("v1 ipv4 octet", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", "bad source IPv4"),
    ("v1 ipv4 leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", "bad destination IPv4"),
    ("v1 ipv6 under TCP4", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "bad source IPv4"),
    ("v1 ipv4 under TCP6", b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "bad source IPv6"),
    ("v1 ipv6 scope id", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad source IPv6"),
    ("v1 non-ascii digit", "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode(), "bad source port"),
    ("v2 bad signature", V2_SIGNATURE[:-1] + b"X", "bad signature"),
    ("v2 version 1", v2(0x11, 0x11, IP4), "unsupported version 1"),
    ("v2 version 3", v2(0x31, 0x11, IP4), "unsupported version 3"),
    ("v2 command 2", v2(0x22, 0x11, IP4), "unassigned command 0x2"),
    ("v2 family 4", v2(0x21, 0x41, IP4), "unassigned address family 0x4"),
    ("v2 protocol 3", v2(0x21, 0x13, IP4), "unassigned transport protocol 0x3"),
    ("v2 short inet block", v2(0x21, 0x11, bytes(4)), "family needs 12"),
    ("v2 short inet6 block", v2(0x21, 0x21, IP4), "family needs 36"),
    ("v2 tlv past end", v2(0x21, 0x11, IP4 + b"\x01\x00\x09ab"), "runs past the header"),
    ("v2 stray tlv bytes", v2(0x21, 0x11, IP4 + b"\x01\x00"), "stray bytes"),
    ("v2 duplicate tlv", v2(0x21, 0x11, IP4 + tlv(2, b"a") + tlv(2, b"b")), "duplicate TLV 0x2"),
    ("v2 crc mismatch", with_crc(0x21, 0x11, IP4, bad=True), "CRC32C checksum mismatch"),
    ("v2 crc wrong size", v2(0x21, 0x11, IP4 + tlv(3, b"abc")), "expected 4"),
    ("v2 oversized", v2(0x21, 0x11, length=4081), "4097 bytes exceeds 4096"),
]


@pytest.mark.parametrize(("name", "data", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_headers(name: str, data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message.replace("+", r"\+")):
        parse_proxy_header(data)
    assert issubclass(ProxyProtocolError, ValueError)


def test_errors_detected_early_without_waiting_for_the_rest() -> None:
    # A client speaking another protocol is rejected from its first bytes, and
    # an oversized v2 header as soon as its length field arrives.
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(b"G")
    with pytest.raises(ProxyProtocolError, match="exceeds 4096"):
        parse_proxy_header(v2(0x21, 0x11, length=65535))
    with pytest.raises(ProxyProtocolError, match="version"):
        parse_proxy_header(V2_SIGNATURE + b"\x11")
    assert parse_proxy_header(b"") is None
    assert parse_proxy_header(b"PROXY TCP4 1.2.") is None


def test_max_length_argument() -> None:
    big = v2(0x21, 0x11, IP4 + tlv(0xE0, bytes(5000)))
    with pytest.raises(ProxyProtocolError, match="exceeds 4096"):
        parse_proxy_header(big)
    header = parse_proxy_header(big, max_length=8192)
    assert header is not None and header.tlvs[0xE0] == bytes(5000)
    with pytest.raises(ValueError, match="max_length=15"):
        parse_proxy_header(b"", max_length=15)
    with pytest.raises(TypeError, match="max_length='4096'"):
        parse_proxy_header(b"", max_length="4096")  # type: ignore[arg-type]


def test_crc32c_reference_vector() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI check value


# ------------------------------------------------------------------ fuzzing
@st.composite
def valid_headers(draw: st.DrawFn) -> bytes:
    """Random valid v1 and v2 headers of every kind."""
    ip4 = st.ip_addresses(v=4).map(str)
    ip6 = st.ip_addresses(v=6).map(str)
    port = st.integers(0, 65535)
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-local"]))
    if kind.startswith("v1"):
        if kind == "v1-unknown":
            junk = draw(st.binary(max_size=90).filter(lambda b: b"\r" not in b and b"\n" not in b))
            return b"PROXY UNKNOWN" + (b" " + junk if junk else b"") + b"\r\n"
        ips = ip4 if kind == "v1-4" else ip6
        parts = [draw(ips), draw(ips), str(draw(port)), str(draw(port))]
        return f"PROXY TCP{kind[-1]} {' '.join(parts)}\r\n".encode()
    tlvs = draw(
        st.dictionaries(
            st.integers(0, 255).filter(lambda k: k not in (3, 4)),
            st.binary(max_size=40),
            max_size=4,
        )
    )
    extra = b"".join(tlv(k, v) for k, v in tlvs.items())
    if kind == "v2-local":
        return v2(0x20, 0x00, extra)
    ips = ip4 if kind == "v2-4" else ip6
    addrs = inet(draw(ips), draw(ips), draw(port), draw(port))
    return v2(0x21, 0x11 if kind == "v2-4" else 0x21, addrs + extra)


@settings(max_examples=200, deadline=None)
@given(valid_headers(), st.binary(max_size=64))
def test_fuzz_valid_headers_stop_exactly_at_their_end(header: bytes, tail: bytes) -> None:
    parsed = parse_proxy_header(header + tail)
    assert parsed is not None and parsed.length == len(header)
    assert parse_proxy_header(header) == parsed  # the tail changes nothing
    assert parse_proxy_header(header[: len(header) - 1]) is None


def _decisions(data: bytes) -> list[object]:
    """parse() of every prefix: None, a header, or the error class."""
    out: list[object] = []
    for cut in range(len(data) + 1):
        try:
            out.append(parse_proxy_header(data[:cut]))
        except ProxyProtocolError:
            out.append(ProxyProtocolError)
    return out


def _check_monotonic(data: bytes) -> None:
    # Once a prefix is decided (header or error), every longer input is decided
    # the same way: the parser never looks past the header, and never raises
    # anything but ProxyProtocolError (any other exception fails the test).
    decided = None
    for result in _decisions(data):
        if decided is not None:
            assert result == decided
        elif result is not None:
            decided = result
    if isinstance(decided, ProxyHeader):
        assert decided.length <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_monotonic(data)


@settings(max_examples=200, deadline=None)
@given(valid_headers(), st.data())
def test_fuzz_mutated_headers(header: bytes, data: st.DataObject) -> None:
    # Flip, insert or drop a few bytes of a valid header: the parser must still
    # answer only None / a header / ProxyProtocolError, consistently by prefix.
    buf = bytearray(header)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(buf)))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if op == "insert":
            buf.insert(pos, byte)
        elif pos < len(buf):
            if op == "set":
                buf[pos] = byte
            else:
                del buf[pos]
    _check_monotonic(bytes(buf) + data.draw(st.binary(max_size=16)))


# --------------------------------------------------------- the server step
Handler = Callable[[Connection], Awaitable[object]]


async def _start(
    nursery: trio.Nursery, handler: Handler, **opts: Any
) -> tuple[NetProcessor, trionet.Server, int]:
    net = NetProcessor()
    server = await nursery.start(
        net.serve, handler, AcceptOptions(host="127.0.0.1", proxy_protocol=True, **opts)
    )
    return net, server, server.ports[0]


class Recorder:
    """A handler that records what it saw and echoes one message."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, Any, Any, Any, dict[int, bytes], bytes]] = []
        self.done = trio.Event()

    async def __call__(self, conn: Connection) -> None:
        data = await conn.receive_some()
        self.seen.append(
            (
                conn.remote_address,
                conn.local_address,
                conn.peer_address,
                conn.sock_address,
                conn.proxy_tlvs,
                data,
            )
        )
        await conn.send_all(b"echo:" + data)
        self.done.set()


async def _exchange(port: int, payload: bytes) -> tuple[bytes, Any]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        reply = await stream.receive_some()
        return reply, stream.socket.getsockname()


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.10 40000 8443\r\n",
        v2(0x21, 0x11, inet("203.0.113.7", "192.0.2.10", 40000, 8443) + tlv(2, b"example.com")),
    ],
    ids=["v1", "v2"],
)
async def test_server_reports_header_addresses_and_keeps_payload(header: bytes) -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        net, server, port = await _start(nursery, rec)
        # Header and payload in one segment: the payload must reach the handler intact.
        reply, client_addr = await _exchange(port, header + b"hello\r\nworld")
        await rec.done.wait()
        server.shutdown(0)
    assert reply == b"echo:hello\r\nworld"
    remote, local, peer, sock, tlvs, data = rec.seen[0]
    assert remote == ("203.0.113.7", 40000)
    assert local == ("192.0.2.10", 8443)
    assert peer == client_addr and sock == ("127.0.0.1", port)
    assert tlvs == ({2: b"example.com"} if header.startswith(V2_SIGNATURE) else {})
    assert data == b"hello\r\nworld"
    stats = net.statistics()
    assert stats.proxy_protocol_errors == 0
    assert stats.read_bytes == len(header) + len(b"hello\r\nworld")
    assert stats.connections_currently_open == 0


async def test_header_split_across_segments_byte_by_byte() -> None:
    rec = Recorder()
    header = b"PROXY TCP6 2001:db8::5 2001:db8::6 1234 80\r\n"
    async with trio.open_nursery() as nursery:
        net, server, port = await _start(nursery, rec)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for i in range(len(header)):
                await stream.send_all(header[i : i + 1])
                await trio.sleep(0.001)  # separate segments (real clock: ~45 ms in all)
            await stream.send_all(b"data")
            assert await stream.receive_some() == b"echo:data"
        server.shutdown(0)
    assert rec.seen[0][0] == ("2001:db8::5", 1234, 0, 0)
    assert rec.seen[0][5] == b"data"
    assert net.statistics().proxy_protocol_errors == 0


async def _rejected(port: int, payload: bytes, *, close: bool = False) -> bytes:
    """Send payload, optionally half-close, and return what arrives before EOF."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        if close:
            await stream.send_eof()
        got = b""
        try:
            while chunk := await stream.receive_some():
                got += chunk
        except trio.BrokenResourceError:
            pass  # reset: closed with unread data
        return got


@pytest.mark.parametrize(
    ("payload", "close", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", False, "not a PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 02\r\nhello", False, "leading zero"),
        (b"PROXY UNKNOWN " + b"a" * 120, False, "no CRLF in the first 107"),
        (v2(0x21, 0x11, length=60000), False, "exceeds 4096"),
        (b"PROXY TCP4 1.2.3.4", True, "EOF after 18 bytes"),
    ],
    ids=["http", "malformed", "oversized-v1", "oversized-v2", "eof"],
)
async def test_bad_headers_closed_counted_never_handled(
    payload: bytes, close: bool, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    rec = Recorder()
    caplog.set_level(logging.DEBUG, logger="trionet.server")
    async with trio.open_nursery() as nursery:
        net, server, port = await _start(nursery, rec)
        got = await _rejected(port, payload, close=close)
        server.shutdown(0)
    assert got == b""
    assert rec.seen == []
    stats = net.statistics()
    assert stats.proxy_protocol_errors == 1
    assert stats.handler_errors == 0
    assert stats.connections_currently_open == 0
    records = [r for r in caplog.records if "PROXY header" in r.getMessage()]
    assert len(records) == 1 and reason in records[0].getMessage()
    assert records[0].levelno == logging.DEBUG and records[0].exc_info is None


async def test_untrusted_source_closed_before_reading(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    caplog.set_level(logging.DEBUG, logger="trionet.server")
    async with trio.open_nursery() as nursery:
        net, server, port = await _start(nursery, rec, proxy_protocol_trusted=["10.0.0.0/8"])
        got = await _rejected(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nhi")
        server.shutdown(0)
    assert got == b"" and rec.seen == []
    assert net.statistics().proxy_protocol_errors == 1
    assert net.statistics().read_bytes == 0  # not a byte read from an untrusted source
    assert any("untrusted" in r.getMessage() for r in caplog.records)


async def test_trusted_network_accepted() -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        _, server, port = await _start(
            nursery, rec, proxy_protocol_trusted=["10.0.0.0/8", "127.0.0.0/8"]
        )
        reply, _ = await _exchange(port, b"PROXY TCP4 9.9.9.9 8.8.8.8 9 8\r\nx")
        server.shutdown(0)
    assert reply == b"echo:x" and rec.seen[0][0] == ("9.9.9.9", 9)


async def test_local_and_unknown_keep_socket_addresses() -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        _, server, port = await _start(nursery, rec)
        _, a1 = await _exchange(port, v2(0x20, 0x00) + b"check")
        _, a2 = await _exchange(port, b"PROXY UNKNOWN\r\nping")
        server.shutdown(0)
    assert [(s[0], s[5]) for s in rec.seen] == [(a1, b"check"), (a2, b"ping")]
    assert all(s[0] == s[2] and s[1] == s[3] for s in rec.seen)


async def test_header_timeout(autojump_clock: trio.abc.Clock) -> None:
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        net, server, port = await _start(nursery, rec, proxy_protocol_timeout=2.5)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"PROXY TCP4 1.2.3.4 ")  # ...and never the rest
            start = trio.current_time()
            assert await stream.receive_some() == b""  # the server closed it
            elapsed = trio.current_time() - start
        server.shutdown(0)
    assert elapsed == pytest.approx(2.5, abs=1e-6)
    stats = net.statistics()
    assert stats.proxy_protocol_errors == 1
    assert stats.connections_currently_open == 0
    assert rec.seen == []


async def test_header_bytes_are_activity_and_wire_bytes_not_payload(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The header is read through the connection's wire primitive: its bytes
    # count in read_bytes and as activity for the inactivity timeout, not in
    # the connection's payload count. A header that trickles in over 1.5 s on a
    # port with a 1 s inactivity timeout is still being received: not idle.
    payloads: list[tuple[int, float | None]] = []

    async def handler(conn: Connection) -> None:
        data = await conn.receive_some()
        payloads.append((conn.bytes_received, conn.timed_out))
        await conn.send_all(data)

    header = b"PROXY TCP4 198.51.100.7 192.0.2.1 5000 80\r\n"
    async with trio.open_nursery() as nursery:
        net, server, port = await _start(nursery, handler, inactivity_timeout=1.0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(header[:10])
            await trio.sleep(0.75)
            await stream.send_all(header[10:20])
            await trio.sleep(0.75)
            await stream.send_all(header[20:] + b"hello")
            assert await stream.receive_some() == b"hello"
        server.shutdown(0)
    assert payloads == [(5, None)]  # payload only; not timed out mid-header
    stats = net.statistics()
    assert stats.read_bytes == len(header) + 5
    assert stats.inactivity_timeouts == 0


async def test_per_client_limit_applies_to_the_relayed_client() -> None:
    # Behind a balancer every socket comes from the balancer's address; the
    # per-client limit must count the clients the headers name instead.
    hold = trio.Event()
    served: list[Any] = []

    async def handler(conn: Connection) -> None:
        served.append(conn.remote_address)
        await conn.send_all(b"ok")
        await hold.wait()

    net = NetProcessor(per_client_max_connections=1)
    streams = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve, handler, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        )
        port = server.ports[0]
        for client in ("203.0.113.1", "203.0.113.2", "203.0.113.1", "203.0.113.3"):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            streams.append(stream)
            await stream.send_all(f"PROXY TCP4 {client} 192.0.2.1 5000 80\r\n".encode())
            reply = await stream.receive_some()
            assert reply == (b"" if client == "203.0.113.1" and len(served) == 2 else b"ok")
        # A LOCAL header (the balancer's health check) is not counted per client.
        local = await trio.open_tcp_stream("127.0.0.1", port)
        streams.append(local)
        await local.send_all(V2_SIGNATURE + bytes([0x20, 0x00, 0, 0]))
        assert await local.receive_some() == b"ok"
        assert [a[0] for a in served] == ["203.0.113.1", "203.0.113.2", "203.0.113.3", "127.0.0.1"]
        stats = net.statistics()
        assert stats.per_client_connections_throttled_in == 1
        assert table_of(net).throttle.per_client == {
            "203.0.113.1": 1,
            "203.0.113.2": 1,
            "203.0.113.3": 1,
        }
        hold.set()
        for stream in streams:
            await stream.aclose()
        server.shutdown(1)
    assert net.statistics().connections_currently_open == 0
    assert table_of(net).throttle.per_client == {} and table_of(net).throttle.open == 0


async def test_plain_port_is_unaffected() -> None:
    # Without proxy_protocol, PROXY-looking bytes are payload.
    seen: list[bytes] = []

    async def handler(conn: Connection) -> None:
        seen.append(await conn.receive_some())

    net = NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, handler, AcceptOptions(host="127.0.0.1"))
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        async with stream:
            await stream.send_all(b"PROXY UNKNOWN\r\n")
            assert await stream.receive_some() == b""
        server.shutdown(0)
    assert seen == [b"PROXY UNKNOWN\r\n"]
    assert net.statistics().proxy_protocol_errors == 0


def test_public_names() -> None:
    assert trionet.ProxyHeader is ProxyHeader
    assert trionet.parse_proxy_header is parse_proxy_header


# ------------------------------------------------- who may send a PROXY header
def test_default_trust_is_loopback_only() -> None:
    assert [str(n) for n in AcceptOptions().proxy_protocol_trusted] == ["127.0.0.0/8", "::1/128"]


def test_trusting_no_source_is_refused() -> None:
    with pytest.raises(ValueError, match=r"AcceptOptions\.proxy_protocol_trusted=\(\): trusts no"):
        AcceptOptions(proxy_protocol=True, proxy_protocol_trusted=())


async def _prepare_from(peer: Any, **opts: Any) -> tuple[bool, NetProcessor, Any]:
    """Run the PROXY step on a connection whose socket peer is ``peer`` (a
    socketpair stands in for a source this loopback-only suite cannot have),
    with a valid header queued. Returns (admitted, processor, remote_address)."""
    net = NetProcessor()
    a, b = socket.socketpair()
    with a:
        a.sendall(b"PROXY TCP4 198.51.100.7 192.0.2.1 5000 80\r\n")
        conn = table_of(net).open(
            trio.socket.from_stdlib_socket(b), inbound=True, client=None, peer_address=peer
        )
        try:
            ok = await prepare_inbound(
                conn, AcceptOptions(proxy_protocol=True, **opts), table_of(net)
            )
            return ok, net, conn.remote_address
        finally:
            conn.close()


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        (("127.0.0.1", 4000), True),
        (("127.9.9.9", 4000), True),
        (("::1", 4000, 0, 0), True),
        (("::ffff:127.0.0.1", 4000, 0, 0), True),  # loopback on a dual-stack socket
        (("203.0.113.9", 4000), False),
        (("10.0.0.1", 4000), False),
        (("::ffff:203.0.113.9", 4000, 0, 0), False),
        (("2001:db8::9", 4000, 0, 0), False),
    ],
)
async def test_default_trusts_loopback_sources_only(peer: Any, trusted: bool) -> None:
    ok, net, remote = await _prepare_from(peer)
    stats = net.statistics()
    assert ok is trusted
    if trusted:
        assert remote == ("198.51.100.7", 5000) and stats.proxy_protocol_errors == 0
    else:  # refused before a byte is read, and counted
        assert stats.proxy_protocol_errors == 1 and stats.read_bytes == 0


@pytest.mark.parametrize("peer", [("203.0.113.9", 4000), ("2001:db8::9", 4000, 0, 0)])
async def test_trusting_every_source_is_explicit(peer: Any) -> None:
    ok, net, remote = await _prepare_from(peer, proxy_protocol_trusted=["0.0.0.0/0", "::/0"])
    assert ok and remote == ("198.51.100.7", 5000)
    assert net.statistics().proxy_protocol_errors == 0


@pytest.mark.parametrize("trusted", ["::ffff:127.0.0.0/104", "127.0.0.0/8"])
async def test_trusted_network_in_either_spelling_on_a_dual_stack_port(trusted: str) -> None:
    rec = Recorder()
    net = NetProcessor()
    spec = AcceptOptions(
        fd=dual_stack_listener(), proxy_protocol=True, proxy_protocol_trusted=[trusted]
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, rec, spec)
        reply, _ = await _exchange(server.ports[0], b"PROXY TCP4 9.9.9.9 8.8.8.8 9 8\r\nx")
        server.shutdown(0)
    assert reply == b"echo:x"
    assert rec.seen[0][2][0] == "::ffff:127.0.0.1"  # the socket peer, mapped
    assert rec.seen[0][0] == ("9.9.9.9", 9)
    assert net.statistics().proxy_protocol_errors == 0


async def test_relayed_client_in_either_spelling_is_one_client() -> None:
    hold = trio.Event()

    async def handler(conn: Connection) -> None:
        await conn.send_all(b"ok")
        await hold.wait()

    net = NetProcessor(per_client_max_connections=1)
    headers = [
        b"PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 5000 80\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 5001 80\r\n",
        v2(0x21, 0x11, inet("203.0.113.7", "192.0.2.1", 5002, 80)),
    ]
    replies = []
    streams = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            net.serve, handler, AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        )
        for header in headers:
            stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
            streams.append(stream)
            await stream.send_all(header)
            replies.append(await stream.receive_some())
        assert table_of(net).throttle.per_client == {"203.0.113.7": 1}
        hold.set()
        for stream in streams:
            await stream.aclose()
        server.shutdown(1)
    assert replies == [b"ok", b"", b""]
    assert net.statistics().per_client_connections_throttled_in == 2
    assert (
        table_of(net).throttle.per_client == {} and net.statistics().connections_currently_open == 0
    )
