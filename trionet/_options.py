"""Option objects: frozen dataclasses that validate themselves on construction.

A bad value fails where it is written, with a ``ValueError`` naming the field
and the value, not later inside an accept loop. Applying the options to a
socket (and failing clearly when the platform lacks one) is done by
:mod:`trionet._sockopt`.
"""

from __future__ import annotations

import ipaddress
import math
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ._resolve import host_problem, resolve_literal

if TYPE_CHECKING:
    from ._resolve import Resolver

__all__ = ["AcceptOptions", "ConnectOptions", "SocketOptions"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FAMILIES = {socket.AF_INET, socket.AF_INET6}

# Kernel integer options are C ints: setsockopt() with a Python int passes one
# (a bigger value fails inside serve()/connect() with a TypeError that names
# nothing), and so does listen()'s backlog and an fd number.
C_INT_MAX: Final = 2**31 - 1
U32_MAX: Final = 2**32 - 1


def _bad(owner: str, name: str, value: object, why: str) -> ValueError:
    return ValueError(f"{owner}.{name}={value!r}: {why}")


# One copy of each check below; every field of every option object, and the
# processor's and the proxy's arguments, go through them, so a bad value is
# always refused the same way: ValueError "Owner.field=<repr>: rule".


def _check_int(owner: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    """An int (not a bool) in ``lo..hi`` (``hi=None``: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(owner, name, value, "must be an int")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _bad(owner, name, value, f"must be {bound}")


def _check_opt_int(owner: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    if value is not None:
        _check_int(owner, name, value, lo, hi)


def _int_field(
    obj: object, owner: str, name: str, lo: int, hi: int | None = None, *, optional: bool = False
) -> None:
    """Check the int field ``name`` of a frozen option object and store it as
    a plain int: an int subclass (an ``IntEnum``) passes ``_check_int`` but
    ``getaddrinfo()`` refuses it as a port ("Int or String expected")."""
    value = getattr(obj, name)
    if value is None and optional:
        return
    _check_int(owner, name, value, lo, hi)
    object.__setattr__(obj, name, int(value))


def _check_seconds(
    owner: str,
    name: str,
    value: object,
    *,
    allow_zero: bool = True,
    finite: bool = False,
    hi: float | None = None,
    optional: bool = True,
) -> None:
    """``None`` (disabled) or a number of seconds.

    Args:
      optional: accept ``None``.
      allow_zero: accept 0 (else the value must be > 0).
      finite: refuse ``inf`` (option fields do: ``None`` is how to disable them).
      hi: the largest value accepted (a kernel limit).

    An int too big for a float (``10**400``) is refused here: trio deadlines
    are floats, and the conversion would otherwise fail later with a bare
    ``OverflowError``.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        or_none = " or None" if optional else ""
        raise _bad(owner, name, value, f"must be a number of seconds{or_none}")
    try:
        seconds = float(value)
    except OverflowError:
        raise _bad(owner, name, value, "too large for a number of seconds") from None
    rule = ">= 0" if allow_zero else "> 0"
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise _bad(owner, name, value, f"must be {rule} seconds (None disables it)")
    if finite and math.isinf(seconds):
        raise _bad(owner, name, value, "must be finite (None disables it)")
    if hi is not None and seconds > hi:
        raise _bad(owner, name, value, f"must be at most {hi} seconds")


def _check_bool(owner: str, name: str, value: object) -> None:
    """A real bool: ``"no"`` or ``0`` would otherwise be taken by truth value."""
    if not isinstance(value, bool):
        raise _bad(owner, name, value, "must be True or False")


def _check_family(owner: str, value: object) -> None:
    if value is not None and (not isinstance(value, int) or value not in _FAMILIES):
        raise _bad(owner, "family", value, "must be socket.AF_INET, socket.AF_INET6 or None")


def _check_instance(owner: str, name: str, value: object, cls: type, what: str) -> None:
    """``None`` or an instance of ``cls``."""
    if value is not None and not isinstance(value, cls):
        raise _bad(owner, name, value, f"must be {what} or None")


def _check_host(owner: str, name: str, value: object) -> None:
    """``None`` or a host name or IP literal (:func:`trionet._resolve.host_problem`)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(owner, name, value, "must be a str (a host name or an IP address) or None")
    why = host_problem(value)
    if why is not None:
        raise _bad(owner, name, value, f"not a valid host name or address: {why}")


def _to_networks(owner: str, name: str, values: object) -> tuple[Network, ...]:
    """A tuple of networks from an iterable of ``"10.0.0.0/8"``-style strings
    or ``ipaddress`` networks/addresses (``ip_network`` would also take an int
    or packed bytes as an address: refused, they are not written networks)."""
    if isinstance(values, str | bytes):
        raise _bad(owner, name, values, "must be a list of networks, not a single string")
    if not isinstance(values, Iterable):
        raise _bad(owner, name, values, "must be a list of networks")
    out: list[Network] = []
    for v in values:
        if not isinstance(v, str | Network | ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise _bad(owner, name, v, "not an IP network (write it as a str, '10.0.0.0/8')")
        try:
            out.append(ipaddress.ip_network(v, strict=False))
        except ValueError as exc:
            raise _bad(owner, name, v, f"not an IP network ({exc})") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """Options applied to a listening socket and to every socket accepted from
    it (or to an outbound socket before it connects).

    Args:
      nodelay: ``TCP_NODELAY`` (ATS ``sock_option_flag_in`` bit 0x1, on by
        default as in ATS).
      keepalive: ``SO_KEEPALIVE``.
      linger: ``SO_LINGER`` seconds, 0..65535; ``0`` makes close send a
        reset; ``None`` leaves the kernel default.
      recv_bufsize / send_bufsize: ``SO_RCVBUF`` / ``SO_SNDBUF`` in bytes,
        1..2**31-1 (a C int; the kernel caps it at ``net.core.rmem_max`` /
        ``wmem_max``).
      tos: ``IP_TOS`` (IPv4) or ``IPV6_TCLASS`` (IPv6), 0..255.
      mark: ``SO_MARK`` (Linux; needs ``CAP_NET_ADMIN``), 0..2**32-1 (the
        kernel's mark is a u32).
      notsent_lowat: ``TCP_NOTSENT_LOWAT`` in bytes, 0..2**31-1.

    Every field is checked on construction: a bool field takes only ``True``
    or ``False``, an int field only an int (not a bool) in its range; anything
    else raises ``ValueError`` naming the field and the value.
    """

    nodelay: bool = True
    keepalive: bool = False
    linger: int | None = None
    recv_bufsize: int | None = None
    send_bufsize: int | None = None
    tos: int | None = None
    mark: int | None = None
    notsent_lowat: int | None = None

    def __post_init__(self) -> None:
        o = "SocketOptions"
        _check_bool(o, "nodelay", self.nodelay)
        _check_bool(o, "keepalive", self.keepalive)
        _int_field(self, o, "linger", 0, 65535, optional=True)
        _int_field(self, o, "recv_bufsize", 1, C_INT_MAX, optional=True)
        _int_field(self, o, "send_bufsize", 1, C_INT_MAX, optional=True)
        _int_field(self, o, "tos", 0, 255, optional=True)
        _int_field(self, o, "mark", 0, U32_MAX, optional=True)
        _int_field(self, o, "notsent_lowat", 0, C_INT_MAX, optional=True)


# The TLS handshake timeout default: ATS ships proxy.config.ssl.handshake_timeout_in
# = 0 (disabled), which leaves a server open to clients that connect and never
# finish the handshake; hypercorn and most proxies use 5-10 s. 10 s leaves room
# for a slow mobile client's round trips while bounding what an idle attacker holds.
DEFAULT_TLS_HANDSHAKE_TIMEOUT = 10.0
# How long a client may take to send its PROXY protocol header. HAProxy sends it
# with the first segment; 5 s only matters for a misbehaving or hostile peer.
DEFAULT_PROXY_PROTOCOL_TIMEOUT = 5.0
# Who may send a PROXY header: loopback unless told otherwise (gunicorn's
# --proxy-allow-from defaults the same way). A port believing every source lets
# any client that reaches it claim any address, past the per-client limit and
# into the logs; trusting everyone takes ("0.0.0.0/0", "::/0"), written out.
DEFAULT_PROXY_PROTOCOL_TRUSTED: tuple[Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)


@dataclass(frozen=True, slots=True)
class AcceptOptions:
    """How one inbound port is opened and served (ATS ``NetProcessor::AcceptOptions``).

    Args:
      port: TCP port, 0..65535; 0 picks an ephemeral port (see ``Server.ports``).
      host: address (or host name) to bind; ``None`` binds every address of
        both families (``::`` with ``IPV6_V6ONLY`` and ``0.0.0.0``) on the
        same port. A name is checked as :meth:`NetProcessor.connect` checks
        one (no control characters, no over-long labels, valid IDNA).
      localhost_only: bind ``127.0.0.1`` and ``::1`` only (``host`` must be None).
      family: restrict to ``AF_INET`` or ``AF_INET6``; ``None`` for both.
      backlog: ``listen()`` backlog, 1..2**31-1 (a C int; Linux caps it at
        ``net.core.somaxconn``).
      reuse_port: ``SO_REUSEPORT`` (several processes share the port).
      defer_accept: ``TCP_DEFER_ACCEPT`` seconds (Linux), 0..2**31-1, rounded
        to whole seconds (at least 1 unless 0): accept only once data arrived.
      transparent: ``IP_TRANSPARENT`` (needs ``CAP_NET_ADMIN``).
      backdoor: exempt this port from the connection throttle and per-client limit
        (ATS's backdoor port for health checks).
      socket: :class:`SocketOptions` for the listening and accepted sockets.
      inactivity_timeout / active_timeout: seconds (> 0, finite; ``None``
        for none), set on every accepted connection (see
        :attr:`Connection.inactivity_timeout`). Zero is refused: it would
        end every connection as it opens (ATS reads 0 as "no timeout"; here
        that is ``None``).
      fd: serve an already-open listening socket (inherited from systemd or a
        parent process) instead of binding one, 0..2**31-1; ``host``/``port``
        are then ignored.
      ssl_context: wrap every accepted connection in TLS.
      tls_handshake_timeout: seconds a client may take to finish its TLS
        handshake (> 0, finite; ``None`` for no limit).
      proxy_protocol: expect a PROXY protocol v1 or v2 header on each connection.
      proxy_protocol_trusted: networks allowed to send the header; a connection
        from elsewhere is closed and counted in ``proxy_protocol_errors``.
        Default: loopback only (``127.0.0.0/8``, ``::1``); every source only
        when asked, with ``("0.0.0.0/0", "::/0")``.
      proxy_protocol_timeout: seconds to wait for the complete header (> 0, finite).

    Every field is checked on construction (type and range, as in
    :class:`SocketOptions`); a bad one raises ``ValueError`` naming the field
    and the value.
    """

    port: int = 0
    host: str | None = None
    localhost_only: bool = False
    family: socket.AddressFamily | None = None
    backlog: int = 1024
    reuse_port: bool = False
    defer_accept: float | None = None
    transparent: bool = False
    backdoor: bool = False
    socket: SocketOptions = field(default_factory=SocketOptions)
    inactivity_timeout: float | None = None
    active_timeout: float | None = None
    fd: int | None = None
    ssl_context: ssl.SSLContext | None = None
    tls_handshake_timeout: float | None = DEFAULT_TLS_HANDSHAKE_TIMEOUT
    proxy_protocol: bool = False
    proxy_protocol_trusted: tuple[Network, ...] = DEFAULT_PROXY_PROTOCOL_TRUSTED
    proxy_protocol_timeout: float = DEFAULT_PROXY_PROTOCOL_TIMEOUT

    def __post_init__(self) -> None:
        o = "AcceptOptions"
        _int_field(self, o, "port", 0, 65535)
        _check_host(o, "host", self.host)
        _check_bool(o, "localhost_only", self.localhost_only)
        if self.localhost_only and self.host is not None:
            raise _bad(o, "host", self.host, "cannot be combined with localhost_only=True")
        _check_family(o, self.family)
        _int_field(self, o, "backlog", 1, C_INT_MAX)
        for name in ("reuse_port", "transparent", "backdoor", "proxy_protocol"):
            _check_bool(o, name, getattr(self, name))
        _check_seconds(o, "defer_accept", self.defer_accept, finite=True, hi=C_INT_MAX)
        if not isinstance(self.socket, SocketOptions):
            raise _bad(o, "socket", self.socket, "must be a SocketOptions")
        for name in ("inactivity_timeout", "active_timeout", "tls_handshake_timeout"):
            _check_seconds(o, name, getattr(self, name), allow_zero=False, finite=True)
        _int_field(self, o, "fd", 0, C_INT_MAX, optional=True)
        _check_instance(o, "ssl_context", self.ssl_context, ssl.SSLContext, "an ssl.SSLContext")
        ppt = self.proxy_protocol_timeout
        _check_seconds(
            o, "proxy_protocol_timeout", ppt, allow_zero=False, finite=True, optional=False
        )
        nets = _to_networks(o, "proxy_protocol_trusted", self.proxy_protocol_trusted)
        if self.proxy_protocol and not nets:
            why = 'trusts no source; ("0.0.0.0/0", "::/0") trusts every source'
            raise _bad(o, "proxy_protocol_trusted", self.proxy_protocol_trusted, why)
        object.__setattr__(self, "proxy_protocol_trusted", nets)

    @classmethod
    def coerce(cls, spec: int | AcceptOptions) -> AcceptOptions:
        """``serve(handler, 8080)`` is shorthand for ``AcceptOptions(port=8080)``."""
        if isinstance(spec, AcceptOptions):
            return spec
        if isinstance(spec, bool) or not isinstance(spec, int):
            raise TypeError(f"listen spec {spec!r}: expected a port number or AcceptOptions")
        return cls(port=spec)


@dataclass(frozen=True, slots=True)
class ConnectOptions:
    """How an outbound connection is made (Netty ``Bootstrap`` options, ATS
    ``NetVCOptions``).

    Args:
      connect_timeout: seconds for resolution, every connection attempt and
        the TLS handshake together (Netty ``CONNECT_TIMEOUT_MILLIS``, default
        30 s); ``None`` disables it; zero, negative or infinite is rejected.
      local_address / local_port: bind the socket before connecting;
        ``local_address`` is an IP address str (``"10.0.0.2"``, ``"::1"``,
        ``"fe80::1%eth0"``), ``local_port`` 0..65535.
      happy_eyeballs_delay: seconds between staggered attempts (RFC 8305),
        >= 0 and finite; ``None`` tries one address at a time.
      family: restrict resolution to ``AF_INET`` or ``AF_INET6``.
      socket: :class:`SocketOptions` applied before connecting.
      inactivity_timeout / active_timeout: seconds (> 0, finite; ``None``
        for none), set on the returned connection.
      resolver: a :class:`Resolver`; ``None`` uses ``getaddrinfo``.
      ssl_context / server_hostname / alpn_protocols: make a TLS connection.
        ``server_hostname`` is a host name checked as ``connect()`` checks
        one; each ALPN protocol name is an ASCII str of 1..255 characters
        (RFC 7301's limit; Python's ``ssl`` takes ASCII only).

    Every field is checked on construction; a bad one raises ``ValueError``
    naming the field and the value.
    """

    connect_timeout: float | None = 30.0
    local_address: str | None = None
    local_port: int = 0
    happy_eyeballs_delay: float | None = 0.25
    family: socket.AddressFamily | None = None
    socket: SocketOptions = field(default_factory=SocketOptions)
    inactivity_timeout: float | None = None
    active_timeout: float | None = None
    resolver: Resolver | None = None
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    alpn_protocols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        o = "ConnectOptions"
        _check_seconds(o, "connect_timeout", self.connect_timeout, allow_zero=False, finite=True)
        _check_family(o, self.family)
        _check_local_address(o, self.local_address, self.family)
        _int_field(self, o, "local_port", 0, 65535)
        _check_seconds(o, "happy_eyeballs_delay", self.happy_eyeballs_delay, finite=True)
        if not isinstance(self.socket, SocketOptions):
            raise _bad(o, "socket", self.socket, "must be a SocketOptions")
        for name in ("inactivity_timeout", "active_timeout"):
            _check_seconds(o, name, getattr(self, name), allow_zero=False, finite=True)
        if self.resolver is not None and not callable(getattr(self.resolver, "resolve", None)):
            raise _bad(o, "resolver", self.resolver, "must have an async resolve() method")
        _check_instance(o, "ssl_context", self.ssl_context, ssl.SSLContext, "an ssl.SSLContext")
        _check_host(o, "server_hostname", self.server_hostname)
        if self.alpn_protocols is not None:
            protos = _alpn_names(o, self.alpn_protocols)
            object.__setattr__(self, "alpn_protocols", protos)


def _check_local_address(owner: str, value: object, family: object) -> None:
    """An IP literal this host could bind (a scope id names a real interface),
    of ``family`` if one is asked for (connect() would refuse it later)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise _bad(owner, "local_address", value, "must be an IP address str or None")
    why = host_problem(value)  # a NUL would cut "127.0.0.1\x00..." short
    try:
        ipaddress.ip_address(value)
    except ValueError:
        why = why or "not an IP address"
    local = resolve_literal(value, 0) if why is None else None
    if why is None and local is None:
        why = "not an address this host can bind (unknown interface?)"
    if why is not None:
        raise _bad(owner, "local_address", value, why)
    if family is not None and local is not None and local[0] != family:
        raise _bad(owner, "family", family, f"local_address={value!r} is not of that family")


def _alpn_names(owner: str, value: object) -> tuple[str, ...]:
    """ALPN protocol names: ASCII str, 1..255 characters each (RFC 7301)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise _bad(owner, "alpn_protocols", value, "must be a list of str (['h2', 'http/1.1'])")
    names = tuple(value)  # once: a generator could not be read twice
    for name in names:
        if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= 255:
            raise _bad(
                owner, "alpn_protocols", name, "each protocol must be an ASCII str of 1..255 chars"
            )
    return names
