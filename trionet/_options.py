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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._resolve import Resolver

__all__ = ["AcceptOptions", "ConnectOptions", "SocketOptions"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FAMILIES = {socket.AF_INET, socket.AF_INET6}


def _bad(owner: str, name: str, value: object, why: str) -> ValueError:
    return ValueError(f"{owner}.{name}={value!r}: {why}")


def _check_int(owner: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(owner, name, value, "must be an int")
    if value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _bad(owner, name, value, f"must be {bound}")


def _check_opt_int(owner: str, name: str, value: object, lo: int, hi: int | None = None) -> None:
    if value is not None:
        _check_int(owner, name, value, lo, hi)


def _check_seconds(owner: str, name: str, value: object, *, allow_zero: bool = True) -> None:
    """``None`` (disabled) or a finite number of seconds >= 0 (> 0 if not allow_zero)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(owner, name, value, "must be a number of seconds or None")
    if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
        rule = ">= 0" if allow_zero else "> 0"
        raise _bad(owner, name, value, f"must be {rule} seconds (None disables it)")


def _check_bool(owner: str, name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _bad(owner, name, value, "must be True or False")


def _check_family(owner: str, value: object) -> None:
    if value is not None and value not in _FAMILIES:
        raise _bad(owner, "family", value, "must be socket.AF_INET, socket.AF_INET6 or None")


def _to_networks(owner: str, name: str, values: Iterable[object]) -> tuple[Network, ...]:
    if isinstance(values, str | bytes):
        raise _bad(owner, name, values, "must be a list of networks, not a single string")
    out: list[Network] = []
    for v in values:
        try:
            out.append(ipaddress.ip_network(v, strict=False))  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
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
      linger: ``SO_LINGER`` seconds; ``0`` makes close send a reset; ``None``
        leaves the kernel default.
      recv_bufsize / send_bufsize: ``SO_RCVBUF`` / ``SO_SNDBUF`` in bytes.
      tos: ``IP_TOS`` (IPv4) or ``IPV6_TCLASS`` (IPv6), 0..255.
      mark: ``SO_MARK`` (Linux; needs ``CAP_NET_ADMIN``).
      notsent_lowat: ``TCP_NOTSENT_LOWAT`` in bytes.
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
        _check_opt_int(o, "linger", self.linger, 0, 65535)
        _check_opt_int(o, "recv_bufsize", self.recv_bufsize, 1)
        _check_opt_int(o, "send_bufsize", self.send_bufsize, 1)
        _check_opt_int(o, "tos", self.tos, 0, 255)
        _check_opt_int(o, "mark", self.mark, 0, 2**32 - 1)
        _check_opt_int(o, "notsent_lowat", self.notsent_lowat, 0, 2**32 - 1)


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
      host: address to bind; ``None`` binds every address of both families
        (``::`` with ``IPV6_V6ONLY`` and ``0.0.0.0``) on the same port.
      localhost_only: bind ``127.0.0.1`` and ``::1`` only (``host`` must be None).
      family: restrict to ``AF_INET`` or ``AF_INET6``; ``None`` for both.
      backlog: ``listen()`` backlog, >= 1.
      reuse_port: ``SO_REUSEPORT`` (several processes share the port).
      defer_accept: ``TCP_DEFER_ACCEPT`` seconds (Linux): accept only once data arrived.
      transparent: ``IP_TRANSPARENT`` (needs ``CAP_NET_ADMIN``).
      backdoor: exempt this port from the connection throttle and per-client limit
        (ATS's backdoor port for health checks).
      socket: :class:`SocketOptions` for the listening and accepted sockets.
      inactivity_timeout / active_timeout: seconds, set on every accepted
        connection (see :attr:`Connection.inactivity_timeout`).
      fd: serve an already-open listening socket (inherited from systemd or a
        parent process) instead of binding one; ``host``/``port`` are then ignored.
      ssl_context: wrap every accepted connection in TLS.
      tls_handshake_timeout: seconds a client may take to finish its TLS handshake.
      proxy_protocol: expect a PROXY protocol v1 or v2 header on each connection.
      proxy_protocol_trusted: networks allowed to send the header; a connection
        from elsewhere is closed and counted in ``proxy_protocol_errors``.
        Default: loopback only (``127.0.0.0/8``, ``::1``); every source only
        when asked, with ``("0.0.0.0/0", "::/0")``.
      proxy_protocol_timeout: seconds to wait for the complete header.
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
        _check_int(o, "port", self.port, 0, 65535)
        if self.host is not None and not isinstance(self.host, str):
            raise _bad(o, "host", self.host, "must be a str or None")
        _check_bool(o, "localhost_only", self.localhost_only)
        if self.localhost_only and self.host is not None:
            raise _bad(o, "host", self.host, "cannot be combined with localhost_only=True")
        _check_family(o, self.family)
        _check_int(o, "backlog", self.backlog, 1)
        for name in ("reuse_port", "transparent", "backdoor", "proxy_protocol"):
            _check_bool(o, name, getattr(self, name))
        _check_seconds(o, "defer_accept", self.defer_accept)
        if not isinstance(self.socket, SocketOptions):
            raise _bad(o, "socket", self.socket, "must be a SocketOptions")
        _check_seconds(o, "inactivity_timeout", self.inactivity_timeout)
        _check_seconds(o, "active_timeout", self.active_timeout)
        _check_opt_int(o, "fd", self.fd, 0)
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise _bad(o, "ssl_context", self.ssl_context, "must be an ssl.SSLContext")
        _check_seconds(o, "tls_handshake_timeout", self.tls_handshake_timeout, allow_zero=False)
        _check_seconds(o, "proxy_protocol_timeout", self.proxy_protocol_timeout, allow_zero=False)
        if self.proxy_protocol_timeout is None:
            raise _bad(o, "proxy_protocol_timeout", None, "must be a number of seconds")
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
        30 s); ``None`` disables it; zero or negative is rejected.
      local_address / local_port: bind the socket before connecting.
      happy_eyeballs_delay: seconds between staggered attempts (RFC 8305).
      family: restrict resolution to ``AF_INET`` or ``AF_INET6``.
      socket: :class:`SocketOptions` applied before connecting.
      inactivity_timeout / active_timeout: set on the returned connection.
      resolver: a :class:`Resolver`; ``None`` uses ``getaddrinfo``.
      ssl_context / server_hostname / alpn_protocols: make a TLS connection.
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
        _check_seconds(o, "connect_timeout", self.connect_timeout, allow_zero=False)
        if self.local_address is not None:
            try:
                ipaddress.ip_address(self.local_address)
            except ValueError:
                raise _bad(o, "local_address", self.local_address, "not an IP address") from None
        _check_int(o, "local_port", self.local_port, 0, 65535)
        _check_seconds(o, "happy_eyeballs_delay", self.happy_eyeballs_delay)
        _check_family(o, self.family)
        if not isinstance(self.socket, SocketOptions):
            raise _bad(o, "socket", self.socket, "must be a SocketOptions")
        _check_seconds(o, "inactivity_timeout", self.inactivity_timeout)
        _check_seconds(o, "active_timeout", self.active_timeout)
        if self.resolver is not None and not callable(getattr(self.resolver, "resolve", None)):
            raise _bad(o, "resolver", self.resolver, "must have an async resolve() method")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise _bad(o, "ssl_context", self.ssl_context, "must be an ssl.SSLContext")
        if self.alpn_protocols is not None:
            protos: Any = self.alpn_protocols
            if isinstance(protos, str) or not all(isinstance(p, str) and p for p in protos):
                raise _bad(o, "alpn_protocols", protos, "must be a list of non-empty str")
            object.__setattr__(self, "alpn_protocols", tuple(protos))
