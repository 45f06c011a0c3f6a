"""PROXY protocol (HAProxy's ``proxy-protocol.txt``) on the wire: the constants
both directions share, and the encoder of the header a proxy sends upstream.

The parser (:mod:`trionet._inbound._proxy_protocol`) reads headers; this module
writes them, for ``ConnectOptions(send_proxy_protocol=1 | 2)``. It sits in
``_base`` because the outbound connect path (``_outbound``) sends the header
and may not import the inbound layer; both import the constants from here, so
the signature and sizes exist once.

What is sent (as HAProxy's ``send-proxy`` / ``send-proxy-v2`` do):

* Two IP addresses of one family: ``TCP4`` / ``TCP6`` with both addresses
  and ports. An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``, what a
  dual-stack socket reports for an IPv4 peer) is sent as the IPv4 address
  when both ends are IPv4; with one IPv4 and one IPv6 end, the IPv4 one is
  sent mapped, as ``TCP6``. A scope id (``fe80::1%eth0``) is dropped: the
  format has no room for it and receivers refuse it.
* Anything else -- no client (a connection the proxy makes on its own), a
  Unix socket's path -- has no address to relay: v1 ``PROXY UNKNOWN``, v2
  ``LOCAL``, and the receiver uses the connection's own endpoints.

No TLVs are sent: the receiver needs none to learn the client's address.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, Literal

__all__ = [
    "V1_MAX_LENGTH",
    "V1_PREFIX",
    "V2_FIXED_LENGTH",
    "V2_SIGNATURE",
    "ProxyVersion",
    "encode_proxy_header",
]

V1_PREFIX: Final = b"PROXY "
V1_MAX_LENGTH: Final = 107  # the worst case line of the specification, CRLF included
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH: Final = 16

ProxyVersion = Literal[1, 2]

# v2 byte 13 (version 2 in the high nibble), byte 14 (family | transport).
_V2_PROXY: Final = 0x21
_V2_LOCAL: Final = 0x20
_V2_TCP4: Final = 0x11  # AF_INET, STREAM
_V2_TCP6: Final = 0x21  # AF_INET6, STREAM
_V2_HEAD: Final = struct.Struct("!12sBBH")

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def encode_proxy_header(version: ProxyVersion, source: object, destination: object) -> bytes:
    """The PROXY header relaying a client's connection.

    Args:
      version: 1 (the text line) or 2 (binary).
      source / destination: the client's address and the address it
        connected to, as a :data:`~trionet.SocketAddress` (``(ip, port)`` or
        ``(ip, port, flowinfo, scope_id)``); anything else (``None``, a Unix
        socket path) means "no address to relay".

    Returns:
      The header's bytes: ``TCP4``/``TCP6`` with both addresses, or v1
      ``PROXY UNKNOWN`` / v2 ``LOCAL`` when there are no two IP addresses.

    Raises:
      ValueError: ``version`` is not 1 or 2.
    """
    if version not in (1, 2) or isinstance(version, bool):
        raise ValueError(f"send_proxy_protocol={version!r}: must be 1 or 2")
    pair = _ip_pair(source, destination)
    if version == 1:
        return _v1(pair)
    return _v2(pair)


def _v1(pair: tuple[_IP, _IP, int, int] | None) -> bytes:
    if pair is None:
        return V1_PREFIX + b"UNKNOWN\r\n"
    src, dst, sport, dport = pair
    proto = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def _v2(pair: tuple[_IP, _IP, int, int] | None) -> bytes:
    if pair is None:
        return _V2_HEAD.pack(V2_SIGNATURE, _V2_LOCAL, 0x00, 0)
    src, dst, sport, dport = pair
    block = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    family = _V2_TCP4 if src.version == 4 else _V2_TCP6
    return _V2_HEAD.pack(V2_SIGNATURE, _V2_PROXY, family, len(block)) + block


def _ip_pair(source: object, destination: object) -> tuple[_IP, _IP, int, int] | None:
    """Both endpoints as IP addresses of one family, or None."""
    src, dst = _endpoint(source), _endpoint(destination)
    if src is None or dst is None:
        return None
    (sip, sport), (dip, dport) = src, dst
    if sip.version != dip.version:
        # One IPv4 end and one IPv6 end: both as IPv6 (HAProxy does the same).
        sip, dip = _as_v6(sip), _as_v6(dip)
    return sip, dip, sport, dport


def _endpoint(address: object) -> tuple[_IP, int] | None:
    """``(ip, port)`` of a socket address; an IPv4-mapped IPv6 address as IPv4."""
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 65535:
        return None
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])  # no scope id on the wire
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, port


def _as_v6(ip: _IP) -> ipaddress.IPv6Address:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
