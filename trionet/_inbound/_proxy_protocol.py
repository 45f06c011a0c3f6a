"""PROXY protocol v1 and v2 (HAProxy's ``proxy-protocol.txt``): an I/O-free,
table-driven header parser, plus the few lines that read a header off a socket.

:func:`parse_proxy_header` takes the bytes received so far and answers one of
three things: ``None`` (a valid prefix, need more bytes), a
:class:`ProxyHeader` whose ``length`` is exactly how many bytes the header used,
or :class:`~trionet.ProxyProtocolError`. The answer depends only on the header
bytes: whatever follows the header is never looked at, and once a prefix is
decided (header or error) every longer input is decided the same way.

Why not the ``proxy-protocol`` package (0.11.3, evaluated for this module):
its ``unpack`` works on bytes, but it is not strict enough to sit in front of a
server that trusts the addresses it reports, and it cannot say how many bytes
the header used. Measured against the specification:

* v1 ports go through ``int()``, so ``+1``, ``0001`` and ``1_0`` (= 10) are
  accepted, and the 107-byte line limit is not enforced;
* v1 IPv6 addresses with a scope id (``fe80::1%eth0``) are accepted;
* errors are not one class: ``AddressValueError``, ``UnicodeDecodeError`` and,
  for a v2 address block shorter than its family needs, ``struct.error``
  (not even a ``ValueError``) escape;
* v2 TLVs whose length runs past the block are silently truncated, and bytes
  given after the header are parsed as TLVs of a LOCAL header instead of being
  left to the application -- so a caller must already know the header's length;
* it needs the caller to read "a line" for v1, i.e. a buffered reader that
  reads past the header; trionet must hand those bytes to the handler intact.

Strictness here (each a :class:`ProxyProtocolError`, the connection is dropped):
v1 lines longer than 107 bytes or ending in a lone CR or LF, fields not
separated by exactly one space, IPv4 octets or ports with leading zeros,
addresses of the wrong family, scope ids, ports above 65535; v2 versions other
than 2, unassigned commands, families or protocols, address blocks shorter than
the family needs, TLVs that do not exactly fill the block, duplicate TLVs
(which one would the application believe?), a CRC32C TLV that does not match,
and headers longer than ``max_length``.

Valid but unsupported v2 combinations (UDP, AF_UNIX, AF_UNSPEC) fall back to
the connection's real endpoints, as the specification requires of receivers
that do not implement them; so do v1 ``UNKNOWN`` and v2 ``LOCAL``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, final

from .._base._addr import SocketAddress
from .._base._checks import is_int
from .._base._errors import ProxyProtocolError
from .._base._proxy_header import V1_MAX_LENGTH, V1_PREFIX, V2_FIXED_LENGTH, V2_SIGNATURE

__all__ = [
    "DEFAULT_MAX_PROXY_HEADER",
    "HeaderSource",
    "ProxyHeader",
    "apply_proxy_header",
    "parse_proxy_header",
    "receive_proxy_header",
]

# HAProxy's own TLVs (unique-id <= 128 bytes, authority <= 255, the SSL block)
# and the cloud load balancers' (AWS VPC endpoint id, GCP PSC id) fit in a few
# hundred bytes; 4 KiB leaves room for them all while bounding what a source can
# make the server buffer before its handler even runs.
DEFAULT_MAX_PROXY_HEADER: Final = 4096

Command = Literal["PROXY", "LOCAL"]
Family = Literal["TCP4", "TCP6", "UNKNOWN"]


@final
@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY protocol header.

    Attributes:
      version: 1 or 2.
      command: ``"PROXY"`` (relayed for a client) or ``"LOCAL"`` (v2: the proxy's
        own connection, e.g. a health check).
      family: ``"TCP4"``, ``"TCP6"``, or ``"UNKNOWN"`` for every case whose
        addresses are not used (v1 UNKNOWN, v2 LOCAL / UNSPEC / UDP / AF_UNIX).
      source / destination: a :data:`SocketAddress`, ``(host, port)`` for
        TCP4 and ``(host, port, 0, 0)`` for TCP6 (the shape ``getpeername()``
        has for each family); else None.
      tlvs: v2 type-length-value fields by type (NOOP entries dropped).
      length: how many bytes the header took on the wire.
    """

    version: Literal[1, 2]
    command: Command
    family: Family
    source: SocketAddress | None
    destination: SocketAddress | None
    length: int
    tlvs: dict[int, bytes] = field(default_factory=dict)


def parse_proxy_header(
    data: bytes | bytearray | memoryview, max_length: int = DEFAULT_MAX_PROXY_HEADER
) -> ProxyHeader | None:
    """Parse a PROXY protocol header at the start of ``data``.

    Args:
      data: the bytes received so far on the connection.
      max_length: largest v2 header accepted (v1 lines are capped at 107 bytes).

    Returns:
      The header (its ``length`` says where the application's bytes start), or
      ``None`` if ``data`` is a valid but incomplete prefix of a header.

    Raises:
      ProxyProtocolError: ``data`` cannot start a valid header; the message
        says which field was wrong.
      TypeError: ``max_length`` is not an int.
      ValueError: ``max_length`` is below 16.
    """
    if not is_int(max_length):
        raise TypeError(f"max_length={max_length!r}: must be an int")
    if max_length < V2_FIXED_LENGTH:
        raise ValueError(f"max_length={max_length!r}: must be >= {V2_FIXED_LENGTH}")
    data = bytes(data[: max(max_length, V1_MAX_LENGTH)])
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data, max_length)
    if not data:
        return None
    raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:8]!r}")


# ---------------------------------------------------------------- version 1
def _parse_v1(data: bytes) -> ProxyHeader | None:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyProtocolError(f"PROXY v1: bad signature {data[:6]!r}")
    end = data.find(b"\n", 0, V1_MAX_LENGTH)
    cr = data.find(b"\r", 0, V1_MAX_LENGTH)
    if end < 0:
        # A CR may only be the last byte so far (its LF not yet received).
        if 0 <= cr < len(data) - 1:
            raise ProxyProtocolError("PROXY v1: CR not followed by LF")
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError(f"PROXY v1: no CRLF in the first {V1_MAX_LENGTH} bytes")
        return None
    if cr != end - 1:
        raise ProxyProtocolError("PROXY v1: line must end with CRLF (lone CR or LF)")
    return _parse_v1_line(data[len(V1_PREFIX) : cr], cr + 2)


def _parse_v1_line(line: bytes, length: int) -> ProxyHeader:
    proto, _, rest = line.partition(b" ")
    if proto == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, length)
    known = _V1_PROTOCOLS.get(proto)
    if known is None:
        raise ProxyProtocolError(f"PROXY v1: unknown protocol {proto!r}")
    family, sock_family, version = known
    parts = rest.split(b" ")
    if len(parts) != 4:
        raise ProxyProtocolError(
            f"PROXY v1: expected 4 space-separated fields after {proto.decode()}, got {rest!r}"
        )
    src = _v1_ip(sock_family, version, "source", parts[0])
    dst = _v1_ip(sock_family, version, "destination", parts[1])
    sport, dport = _v1_port("source", parts[2]), _v1_port("destination", parts[3])
    return ProxyHeader(
        1, "PROXY", family, _addr(sock_family, src, sport), _addr(sock_family, dst, dport), length
    )


def _v1_port(which: str, text: bytes) -> int:
    if not (1 <= len(text) <= 5 and text.isdigit() and text.isascii()):
        raise ProxyProtocolError(f"PROXY v1: bad {which} port {text!r}")
    if text[:1] == b"0" and len(text) > 1:
        raise ProxyProtocolError(f"PROXY v1: {which} port {text!r} has a leading zero")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1: {which} port {port} > 65535")
    return port


def _v1_ip(family: int, version: str, which: str, text: bytes) -> str:
    # inet_pton is the C parser getpeername()'s peers went through: it rejects
    # IPv4 octets with leading zeros, scope ids, and anything but 4 octets or
    # 128 bits; inet_ntop then gives the canonical text getpeername() would.
    # The character check first rules out non-ASCII look-alike digits.
    if not text or not set(text) <= _IP_CHARS:
        raise ProxyProtocolError(f"PROXY v1: bad {which} {version} address {text!r}")
    if family == socket.AF_INET and any(o[:1] == b"0" and len(o) > 1 for o in text.split(b".")):
        # glibc's inet_pton rejects these too; not every libc does.
        raise ProxyProtocolError(f"PROXY v1: bad {which} {version} address {text!r}")
    try:
        return socket.inet_ntop(family, socket.inet_pton(family, text.decode("ascii")))
    except OSError:
        raise ProxyProtocolError(f"PROXY v1: bad {which} {version} address {text!r}") from None


_IP_CHARS: Final = frozenset(b"0123456789abcdefABCDEF:.")
# protocol -> (family name, socket family, "IPv4"/"IPv6" for messages)
_V1_PROTOCOLS: Final[dict[bytes, tuple[Family, int, str]]] = {
    b"TCP4": ("TCP4", socket.AF_INET, "IPv4"),
    b"TCP6": ("TCP6", socket.AF_INET6, "IPv6"),
}


def _addr(family: int, host: str, port: int) -> SocketAddress:
    """The address in the shape getpeername() has for the family."""
    if family == socket.AF_INET:
        return (host, port)
    return (host, port, 0, 0)


# ---------------------------------------------------------------- version 2
_V2_COMMANDS: Final[dict[int, Command]] = {0x0: "LOCAL", 0x1: "PROXY"}
# family nibble -> (address block size, socket family); protocol nibble -> name
_V2_FAMILIES: Final[dict[int, tuple[int, int | None]]] = {
    0x0: (0, None),  # AF_UNSPEC
    0x1: (12, socket.AF_INET),
    0x2: (36, socket.AF_INET6),
    0x3: (216, None),  # AF_UNIX: valid, not used by a TCP server
}
_V2_PROTOCOLS: Final = {0x0: "UNSPEC", 0x1: "STREAM", 0x2: "DGRAM"}
_V2_FIXED: Final = struct.Struct("!12sBBH")
_V2_INET: Final = struct.Struct("!4s4sHH")
_V2_INET6: Final = struct.Struct("!16s16sHH")
_TLV_HEAD: Final = struct.Struct("!BH")
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyProtocolError("PROXY v2: bad signature")
    if len(data) > 12:
        _v2_check_version_command(data[12])
    if len(data) > 13:
        _v2_check_family_protocol(data[13])
    if len(data) < V2_FIXED_LENGTH:
        return None
    _, ver_cmd, fam_proto, block_len = _V2_FIXED.unpack_from(data)
    length = V2_FIXED_LENGTH + block_len
    if length > max_length:
        raise ProxyProtocolError(f"PROXY v2: header of {length} bytes exceeds {max_length}")
    if len(data) < length:
        return None
    return _parse_v2_block(data[:length], ver_cmd & 0xF, fam_proto)


def _v2_check_version_command(byte: int) -> None:
    if byte >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2: unsupported version {byte >> 4}")
    if byte & 0xF not in _V2_COMMANDS:
        raise ProxyProtocolError(f"PROXY v2: unassigned command {byte & 0xF:#x}")


def _v2_check_family_protocol(byte: int) -> None:
    if byte >> 4 not in _V2_FAMILIES:
        raise ProxyProtocolError(f"PROXY v2: unassigned address family {byte >> 4:#x}")
    if byte & 0xF not in _V2_PROTOCOLS:
        raise ProxyProtocolError(f"PROXY v2: unassigned transport protocol {byte & 0xF:#x}")


def _parse_v2_block(header: bytes, command: int, fam_proto: int) -> ProxyHeader:
    block = memoryview(header)[V2_FIXED_LENGTH:]
    addr_size, sock_family = _V2_FAMILIES[fam_proto >> 4]
    cmd = _V2_COMMANDS[command]
    if cmd == "LOCAL" and not block:
        # Health checks: "must not assume zero is presented", but zero is common.
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, len(header))
    if len(block) < addr_size:
        raise ProxyProtocolError(
            f"PROXY v2: address block of {len(block)} bytes, family needs {addr_size}"
        )
    tlvs = _parse_tlvs(header, V2_FIXED_LENGTH + addr_size)
    stream = fam_proto & 0xF == 0x1
    if cmd == "LOCAL" or sock_family is None or not stream:
        return ProxyHeader(2, cmd, "UNKNOWN", None, None, len(header), tlvs)
    fmt = _V2_INET if sock_family == socket.AF_INET else _V2_INET6
    src_ip, dst_ip, sport, dport = fmt.unpack_from(block)
    src, dst = socket.inet_ntop(sock_family, src_ip), socket.inet_ntop(sock_family, dst_ip)
    family: Family = "TCP4" if sock_family == socket.AF_INET else "TCP6"
    return ProxyHeader(
        2,
        "PROXY",
        family,
        _addr(sock_family, src, sport),
        _addr(sock_family, dst, dport),
        len(header),
        tlvs,
    )


def _parse_tlvs(header: bytes, start: int) -> dict[int, bytes]:
    """The TLVs in ``header[start:]``; they must fill it exactly."""
    view = memoryview(header)
    tlvs: dict[int, bytes] = {}
    pos, end = start, len(header)
    crc_at = -1
    while pos < end:
        if end - pos < _TLV_HEAD.size:
            raise ProxyProtocolError(f"PROXY v2: {end - pos} stray bytes after the last TLV")
        kind, size = _TLV_HEAD.unpack_from(view, pos)
        pos += _TLV_HEAD.size
        if pos + size > end:
            raise ProxyProtocolError(
                f"PROXY v2: TLV {kind:#x} of {size} bytes runs past the header"
            )
        if kind in tlvs:
            raise ProxyProtocolError(f"PROXY v2: duplicate TLV {kind:#x}")
        if kind == PP2_TYPE_CRC32C:
            crc_at = pos
        if kind != PP2_TYPE_NOOP:
            tlvs[kind] = bytes(view[pos : pos + size])
        pos += size
    if crc_at >= 0:
        _check_crc32c(header, crc_at, tlvs[PP2_TYPE_CRC32C])
    return tlvs


def _check_crc32c(header: bytes, offset: int, value: bytes) -> None:
    if len(value) != 4:
        raise ProxyProtocolError(f"PROXY v2: CRC32C TLV of {len(value)} bytes, expected 4")
    # The checksum covers the whole header with the checksum field zeroed.
    zeroed = header[:offset] + b"\0\0\0\0" + header[offset + 4 :]
    if crc32c(zeroed) != int.from_bytes(value, "big"):
        raise ProxyProtocolError("PROXY v2: CRC32C checksum mismatch")


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as the PP2_TYPE_CRC32C TLV uses (the standard
    library has only the zlib polynomial; headers are small, so a table is enough)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ------------------------------------------------------------ reading (I/O)
class HeaderSource(Protocol):
    """What the reader needs from a connection (``trionet.Connection`` is one):
    its wire primitive -- which translates socket errors, counts the bytes in
    the processor's statistics and records activity -- and where the header's
    contents go. Private to trionet."""

    async def _wire_receive(
        self, max_bytes: int | None = None, flags: int = 0, payload: bool = True
    ) -> bytes: ...

    def _relay(
        self,
        source: SocketAddress | None,
        destination: SocketAddress | None,
        tlvs: Mapping[int, bytes],
    ) -> None:
        """Report ``source``/``destination`` (unless None) and ``tlvs``."""
        ...


async def receive_proxy_header(
    conn: HeaderSource, max_length: int = DEFAULT_MAX_PROXY_HEADER
) -> ProxyHeader:
    """Read exactly one PROXY header off ``conn``'s socket, leaving every byte
    after it in the kernel for the handler (or the TLS handshake).

    The socket is read with ``MSG_PEEK`` first: the header is parsed from what
    is queued, then exactly the header's bytes are consumed. If the peeked bytes
    are still an incomplete header they are all header bytes, so they are
    consumed and the next peek blocks until more arrive -- no busy loop, no
    pushback buffer in the connection's hot path, never a byte read past the
    header (v1 gives no length up front, so reading "exactly" otherwise means
    one recv per byte). The header's bytes are wire bytes (read_bytes,
    activity), not payload (``bytes_received``).

    Raises:
      ProxyProtocolError: malformed or oversized header, or EOF before it ended.
      trio.BrokenResourceError: the socket failed (reset).
    """
    buf = bytearray()
    limit = max(max_length, V1_MAX_LENGTH)
    while True:
        peeked = await conn._wire_receive(limit - len(buf), socket.MSG_PEEK, False)
        if not peeked:
            raise ProxyProtocolError(f"EOF after {len(buf)} bytes of an incomplete PROXY header")
        header = parse_proxy_header(buf + peeked, max_length)
        take = len(peeked) if header is None else header.length - len(buf)
        while take:
            chunk = await conn._wire_receive(take, 0, False)
            if not chunk:  # cannot happen: the bytes were queued
                raise ProxyProtocolError("EOF inside a PROXY header")
            buf += chunk
            take -= len(chunk)
        if header is not None:
            return header


def apply_proxy_header(conn: HeaderSource, header: ProxyHeader) -> None:
    """Make ``conn`` report what ``header`` carries: the relayed client's and
    server's addresses (TCP4/TCP6 only; otherwise the socket's own stay) and
    the TLVs. ``conn.peer_address`` / ``sock_address`` keep the socket's own."""
    conn._relay(header.source, header.destination, header.tlvs)
