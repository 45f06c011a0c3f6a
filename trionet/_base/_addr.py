"""Addresses in text: ``host:port`` for messages, IP literals, and client
addresses as keys and as members of networks: one client, one identity.

Every module that prints a ``host:port``, asks "is this an IP literal" or
"is this a host name we may look up" goes through :func:`host_port`,
:func:`strip_brackets`, :func:`is_ip`, :func:`host_problem` and
:func:`resolve_literal`.

A dual-stack listener (``::`` without ``IPV6_V6ONLY``) reports an IPv4 client
as the IPv4-mapped IPv6 address ``::ffff:192.0.2.1``; an IPv4 listener, or a
PROXY protocol header, reports the same client as ``192.0.2.1``. Everything
that counts or matches clients (the per-client limit, its exempt networks, the
networks trusted to send PROXY headers) goes through this module, so both
spellings are one client:

* :func:`client_key` turns an address into the key the per-client limit counts
  under: a mapped address becomes its IPv4 form, anything else stays as is.
* :func:`normalize_networks` rewrites a set of networks so that testing the
  *normalised* address against it gives the same answer as testing the raw
  address against the networks as written: ``::ffff:10.0.0.0/104`` becomes
  ``10.0.0.0/8``, and a network that contains the whole mapped range
  (``::/0``, ``::/80``) also covers every IPv4 address.
* :func:`in_networks` tests an address against networks normalised so.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Final, TypeAlias

import idna

__all__ = [
    "AddrInfo",
    "Network",
    "SocketAddress",
    "TcpAddress",
    "as_socket_address",
    "client_key",
    "host_port",
    "host_problem",
    "in_networks",
    "is_ip",
    "normalize_networks",
    "parse_address",
    "resolve_literal",
    "strip_brackets",
    "unix_path",
    "unix_target",
    "unspecified_address",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TcpAddress: TypeAlias = tuple[str, int] | tuple[str, int, int, int]
"""An IPv4 ``(ip, port)`` or IPv6 ``(ip, port, flowinfo, scope_id)`` address."""

SocketAddress: TypeAlias = TcpAddress | str
# Exported and described as trionet.SocketAddress. A Unix domain socket's
# address is a str, as Python's socket module gives it: the path, "" for an
# unnamed (client) socket, or "\0name" for a Linux abstract name.

# How a Unix socket is written where a host is expected: "unix:/run/app.sock",
# or "unix:@name" for a Linux abstract name (HAProxy's "abns@", systemd's "@").
UNIX_PREFIX: Final = "unix:"

AddrInfo: TypeAlias = tuple[int, TcpAddress]
"""``(family, sockaddr)``: ``(AF_INET, (ip, port))`` or
``(AF_INET6, (ip, port, flowinfo, scope_id))``, as a resolver returns them."""

# RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, which
# leaves 253 characters in dotted form; a label is at most 63 octets.
MAX_NAME: Final = 253
MAX_LABEL: Final = 63
# C0 controls, DEL and C1 controls. getaddrinfo() takes a C string, so a NUL
# ends the name early ("localhost\x00.example.com" would reach 127.0.0.1, past
# an allow-list that checked the whole string); the others are in no host
# name and would put line breaks or escape sequences into logs.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
# A last label that inet_aton() reads as a number ("127.1", "2130706433",
# "0x7f.1"): the system resolver takes such a "name" as an IPv4 address in a
# non-standard spelling, another way round a check on the name (the WHATWG URL
# standard treats these as IPv4 addresses for the same reason).
_NUMERIC_LABEL: Final = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]*)")


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def as_socket_address(family: int, sockaddr: object) -> TcpAddress | None:
    """``sockaddr`` as a :data:`SocketAddress` of ``family``, or ``None`` if it
    is not one: ``(str, int)`` for ``AF_INET``; for ``AF_INET6`` a ``(str, int)``
    followed by up to two ints, which the result completes with zeros (the
    shape ``getpeername()`` has: a resolver may leave flowinfo and scope out)."""
    if not isinstance(sockaddr, tuple) or len(sockaddr) < 2:
        return None
    host, port, *rest = sockaddr
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
        return None
    if family == socket.AF_INET:
        return (host, port) if not rest else None
    if family != socket.AF_INET6 or len(rest) > 2:
        return None
    if any(isinstance(n, bool) or not isinstance(n, int) for n in rest):
        return None
    flowinfo, scope_id = (*rest, 0, 0)[:2]
    return (host, port, flowinfo, scope_id)


def unspecified_address(family: int) -> SocketAddress:
    """The all-zero address of ``family`` (``("0.0.0.0", 0)`` or
    ``("::", 0, 0, 0)``; ``""`` for a Unix socket): what ATS reports for an
    address it could not read."""
    if family == getattr(socket, "AF_UNIX", None):
        return ""
    return ("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)


def unix_path(path: str) -> str:
    """A Unix socket path as ``bind()``/``connect()`` take it: ``@name``
    (systemd's spelling of a Linux abstract name) becomes ``\\0name``."""
    return "\0" + path[1:] if path.startswith("@") else path


def unix_target(host: str) -> str | None:
    """The socket path of a ``unix:/path`` (or ``unix:@name``) target, or
    ``None`` if ``host`` is not written so (then it is a host name or an IP)."""
    if not host.startswith(UNIX_PREFIX):
        return None
    return unix_path(host[len(UNIX_PREFIX) :])


def host_port(host: str, port: object) -> str:
    """``host:port`` for messages, with IPv6 literals bracketed (``[::1]:80``);
    a host already in brackets is left as it is; a ``unix:/path`` target is
    written alone (it has no port)."""
    if host.startswith(UNIX_PREFIX):
        return host
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def strip_brackets(host: str) -> str:
    """``[::1]`` -> ``::1``; anything else unchanged."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 literal (a scope id allowed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_problem(host: str) -> str | None:
    """Why ``host`` can be neither an IP literal nor a host name, or ``None``
    if it is one of the two. Used for every name trionet resolves, binds or
    sends as TLS SNI, so what is checked is what is connected to.

    Refused: the empty string; any control character (NUL above all); names
    longer than 253 characters or with an empty label or one longer than 63
    (after IDNA encoding); a last label that is a number (``"127.1"``, which
    the system resolver reads as ``127.0.0.1``); non-ASCII names IDNA 2008
    (UTS 46, as trio encodes them) cannot encode, or would change other than in
    case (``"local\\u00adhost"`` is sent as ``localhost``: the caller must
    write the name that is looked up). IP literals, bracketed IPv6 and scope
    ids (``"fe80::1%eth0"``) pass unchanged.
    """
    if not host:
        return "an empty string"
    control = _CONTROL.search(host)
    if control is not None:
        return f"a control character, {control.group()!r} at position {control.start()}"
    bare = strip_brackets(host)
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return None
    if host.isascii():
        return _name_problem(host)
    # trio hands an ASCII name to getaddrinfo as it is and encodes any other
    # with the idna package (IDNA 2008, UTS 46 mapping): check that encoding.
    try:
        encoded = idna.encode(host, uts46=True).decode("ascii")
        same = idna.decode(encoded) == host.lower()
    except UnicodeError as exc:  # idna.IDNAError is one
        return f"not a valid internationalised name: {exc}"
    if not same:
        return f"IDNA encodes it as {encoded!r}; write that name"
    return _name_problem(encoded)


def _name_problem(name: str) -> str | None:
    """Length and label checks on an ASCII (or IDNA-encoded) name."""
    dotted = name[:-1] if name.endswith(".") else name
    if len(dotted) > MAX_NAME:
        return f"{len(dotted)} characters long, more than {MAX_NAME}"
    labels = dotted.split(".")
    for label in labels:
        if not label:
            return "an empty label"
        if len(label) > MAX_LABEL:
            return f"a label of {len(label)} characters, more than {MAX_LABEL}"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return "ends in a number, which would be read as an IPv4 address; write the address"
    return None


def resolve_literal(host: str, port: int) -> AddrInfo | None:
    """The address of an IP literal (``"10.0.0.1"``, ``"::1"``, ``"[::1]"``,
    ``"fe80::1%eth0"``), or ``None`` if ``host`` is a name to be resolved.

    This is Netty's ``isResolved`` fast path: no resolver is consulted for a
    literal. The conversion uses ``getaddrinfo`` with ``AI_NUMERICHOST``, which
    never touches DNS and does not block, so it runs inline.
    """
    bare = strip_brackets(host)
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return None
    # ipaddress accepts it; getaddrinfo fills in the sockaddr (scope id for %iface).
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    try:
        infos = socket.getaddrinfo(bare, port, 0, socket.SOCK_STREAM, 0, flags)
    except socket.gaierror:
        return None  # e.g. an unknown interface name after '%': let a resolver decide
    family, _, _, _, sockaddr = infos[0]
    address = as_socket_address(family, sockaddr)
    return None if address is None else (int(family), address)


_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_ALL_IPV4: Final = ipaddress.IPv4Network("0.0.0.0/0")


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an IP address with a mapped IPv6 address turned into its
    IPv4 form and a scope id (``fe80::1%eth0``) dropped; ``None`` if ``host``
    is not an IP address."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def client_key(host: str) -> str:
    """The per-client key of ``host``: an IPv4-mapped IPv6 address in IPv4
    form (``::ffff:127.0.0.1`` -> ``127.0.0.1``), any other text unchanged.

    IPv4 addresses cost one test, other IPv6 addresses two; only text that
    could be a mapped address (every spelling has ``ffff`` in it) is parsed.
    """
    if ":" not in host or "ffff" not in host.lower():
        return host
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:  # a scope id, or not an address at all
        return host
    return host if mapped is None else str(mapped)


def normalize_networks(networks: Iterable[Network]) -> tuple[Network, ...]:
    """``networks`` rewritten for matching normalised addresses (see the module
    docstring): mapped IPv6 networks in IPv4 form, and ``0.0.0.0/0`` added when
    an IPv6 network contains the whole mapped range. Order kept, repeats dropped."""
    out: list[Network] = []
    for net in networks:
        if isinstance(net, ipaddress.IPv6Network):
            if net.subnet_of(_MAPPED):
                net = ipaddress.IPv4Network(
                    (int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96)
                )
            elif net.supernet_of(_MAPPED) and _ALL_IPV4 not in out:
                out.append(_ALL_IPV4)
        if net not in out:
            out.append(net)
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _normalized(networks: tuple[Network, ...]) -> tuple[Network, ...]:
    return normalize_networks(networks)


def in_networks(host: str, networks: tuple[Network, ...]) -> bool:
    """Is ``host`` (an address as the kernel or a PROXY header prints it) in
    one of ``networks`` (as written by the user; normalised here, cached per
    tuple)? A ``host`` that is not an IP address is in none."""
    addr = parse_address(host)
    if addr is None:
        return False
    return any(addr in net for net in _normalized(networks))
