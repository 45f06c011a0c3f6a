"""Option objects: frozen dataclasses that validate themselves on construction.

A bad value fails where it is written, with a ``ValueError`` naming the field
and the value, not later inside an accept loop (the checks are
:mod:`trionet._base._checks`). Applying the options to a socket (and failing
clearly when the platform lacks one) is done by :mod:`trionet._base._sockopt`.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, runtime_checkable

import trio

from ._addr import Network, TcpAddress, host_problem, resolve_literal
from ._checks import (
    C_INT_MAX,
    U32_MAX,
    bad_value,
    check_bool,
    check_family,
    check_host_field,
    check_instance,
    check_int,
    check_seconds,
    int_field,
    is_int,
    to_networks,
)

__all__ = ["AcceptOptions", "ConnectOptions", "Resolver", "SocketFactory", "SocketOptions"]


@runtime_checkable
class Resolver(Protocol):
    """Resolves a host name to socket addresses.

    ``resolve(host, port, family)`` returns a list of ``(family, sockaddr)``
    pairs (a TCP :data:`~trionet.SocketAddress` of that family: ``(ip, port)``
    or ``(ip, port, flowinfo, scope_id)``), in the order the connection attempts
    should consider them.
    ``family`` is ``socket.AF_INET``, ``socket.AF_INET6`` or ``0`` (either).
    A failed lookup should raise :class:`trionet.ResolveError` (a plain
    ``OSError`` such as ``socket.gaierror`` is wrapped into one by ``connect``).
    """

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, TcpAddress]]: ...


SocketFactory = Callable[[int], trio.socket.SocketType]
"""Opens an unconnected TCP socket of the given family (``ConnectOptions.socket_factory``)."""


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
        check_bool(o, "nodelay", self.nodelay)
        check_bool(o, "keepalive", self.keepalive)
        int_field(self, o, "linger", 0, 65535, optional=True)
        int_field(self, o, "recv_bufsize", 1, C_INT_MAX, optional=True)
        int_field(self, o, "send_bufsize", 1, C_INT_MAX, optional=True)
        int_field(self, o, "tos", 0, 255, optional=True)
        int_field(self, o, "mark", 0, U32_MAX, optional=True)
        int_field(self, o, "notsent_lowat", 0, C_INT_MAX, optional=True)


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
      proxy_protocol_trusted: networks allowed to send the header
        (``"10.0.0.0/8"`` or ``ipaddress`` networks; kept as a tuple of
        ``ipaddress`` networks); a connection
        from elsewhere is closed and counted in ``proxy_protocol_errors``.
        Default: loopback only (``127.0.0.0/8``, ``::1``); every source only
        when asked, with ``("0.0.0.0/0", "::/0")``.
      proxy_protocol_timeout: seconds to wait for the complete header (> 0, finite).
      path: listen on a Unix domain socket at this path instead of TCP (at
        most 107 bytes; ``"@name"`` is a Linux abstract name, with no file).
        Cannot be combined with ``host``, ``port``, ``localhost_only``,
        ``family``, ``fd`` or the TCP-only ``reuse_port``, ``transparent``,
        ``defer_accept``. A stale socket file (nobody accepts on it:
        connecting is refused) is removed and bound again; a path someone
        listens on fails with ``EADDRINUSE`` naming it, and a path that is
        not a socket (a regular file...) is never removed: ``EEXIST``. The
        file is removed when the server closes it, if it is still the one
        bound. ``SocketOptions.nodelay`` does not apply (no TCP); the
        per-client limits do not either (a Unix client has no address), while
        the connection limit, the rate limit, timeouts and statistics do. A
        PROXY protocol header is believed from any Unix peer (who may connect
        is what the file's permissions say), whatever
        ``proxy_protocol_trusted`` says.
      mode: permission bits of the socket file (``0o660``), 0..0o777; set
        before ``listen()``, so no client connects under the umask's.
        ``None`` leaves what the umask gives. Needs a file ``path``.
      owner / group: the socket file's owner and group, a user or group name
        or a numeric id (a name is looked up on construction and kept as its
        id); needs a file ``path`` and the privilege to ``chown`` it.

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
    # Written as strs or networks; __post_init__ stores a tuple of networks.
    proxy_protocol_trusted: Sequence[str | Network] = DEFAULT_PROXY_PROTOCOL_TRUSTED
    proxy_protocol_timeout: float = DEFAULT_PROXY_PROTOCOL_TIMEOUT
    path: str | None = None
    mode: int | None = None
    owner: int | str | None = None
    group: int | str | None = None

    def __post_init__(self) -> None:
        o = "AcceptOptions"
        self._check_unix(o)
        int_field(self, o, "port", 0, 65535)
        check_host_field(o, "host", self.host)
        check_bool(o, "localhost_only", self.localhost_only)
        if self.localhost_only and self.host is not None:
            raise bad_value(o, "host", self.host, "cannot be combined with localhost_only=True")
        check_family(o, self.family)
        int_field(self, o, "backlog", 1, C_INT_MAX)
        for name in ("reuse_port", "transparent", "backdoor", "proxy_protocol"):
            check_bool(o, name, getattr(self, name))
        check_seconds(o, "defer_accept", self.defer_accept, finite=True, hi=C_INT_MAX)
        if not isinstance(self.socket, SocketOptions):
            raise bad_value(o, "socket", self.socket, "must be a SocketOptions")
        for name in ("inactivity_timeout", "active_timeout", "tls_handshake_timeout"):
            check_seconds(o, name, getattr(self, name), allow_zero=False, finite=True)
        int_field(self, o, "fd", 0, C_INT_MAX, optional=True)
        check_instance(o, "ssl_context", self.ssl_context, ssl.SSLContext, "an ssl.SSLContext")
        ppt = self.proxy_protocol_timeout
        check_seconds(
            o, "proxy_protocol_timeout", ppt, allow_zero=False, finite=True, optional=False
        )
        nets = to_networks(o, "proxy_protocol_trusted", self.proxy_protocol_trusted)
        if self.proxy_protocol and not nets:
            why = 'trusts no source; ("0.0.0.0/0", "::/0") trusts every source'
            raise bad_value(o, "proxy_protocol_trusted", self.proxy_protocol_trusted, why)
        object.__setattr__(self, "proxy_protocol_trusted", nets)

    def _check_unix(self, o: str) -> None:
        """``path`` and what goes with it (file mode and owner), exclusive of
        the TCP fields; names are resolved to ids."""
        path = self.path
        file_fields = ("mode", "owner", "group")
        if path is None:
            for name in file_fields:
                if getattr(self, name) is not None:
                    raise bad_value(o, name, getattr(self, name), "needs path (a Unix socket)")
            return
        why = unix_path_problem(path)
        if why is not None:
            raise bad_value(o, "path", path, why)
        for name, default in _TCP_ONLY:
            value = getattr(self, name)
            if value is not default and value != default:
                raise bad_value(o, name, value, f"cannot be combined with path={path!r}")
        if path.startswith("@"):
            for name in file_fields:
                if getattr(self, name) is not None:
                    raise bad_value(
                        o, name, getattr(self, name), f"an abstract name ({path!r}) has no file"
                    )
        mode = self.mode
        if mode is not None and (not is_int(mode) or not 0 <= mode <= 0o777):
            shown = oct(mode) if is_int(mode) else repr(mode)
            raise ValueError(f"{o}.mode={shown}: must be permission bits, 0o000..0o777")
        object.__setattr__(self, "owner", _user_id(o, "owner", self.owner, _uid_of))
        object.__setattr__(self, "group", _user_id(o, "group", self.group, _gid_of))

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
      socket_factory: ``socket_factory(family)`` opens the unconnected TCP
        socket of each connection attempt; ``None`` uses
        ``trio.socket.socket(family, SOCK_STREAM)``. The seam for fault
        injection (a socket whose ``connect`` stalls or fails), as httpcore
        lets a test replace its network backend; every socket it returns is
        closed by ``connect`` unless it becomes the connection.
      send_proxy_protocol: send a PROXY protocol header of this version (1:
        text, 2: binary) as the connection's first bytes, before any TLS
        handshake (HAProxy's ``send-proxy`` / ``send-proxy-v2``), so the
        server learns the client's address. It carries the addresses of the
        ``for_connection`` passed to :meth:`NetProcessor.connect`
        (:attr:`Connection.remote_address` / ``local_address``: those of its
        own PROXY header when proxies are chained); without one, or when they
        are not IP addresses (a Unix socket), a header without addresses (v1
        ``UNKNOWN``, v2 ``LOCAL``). ``None`` (default) sends none.

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
    socket_factory: SocketFactory | None = None
    send_proxy_protocol: Literal[1, 2] | None = None

    def __post_init__(self) -> None:
        o = "ConnectOptions"
        check_seconds(o, "connect_timeout", self.connect_timeout, allow_zero=False, finite=True)
        check_family(o, self.family)
        _check_local_address(o, self.local_address, self.family)
        int_field(self, o, "local_port", 0, 65535)
        check_seconds(o, "happy_eyeballs_delay", self.happy_eyeballs_delay, finite=True)
        if not isinstance(self.socket, SocketOptions):
            raise bad_value(o, "socket", self.socket, "must be a SocketOptions")
        for name in ("inactivity_timeout", "active_timeout"):
            check_seconds(o, name, getattr(self, name), allow_zero=False, finite=True)
        if self.resolver is not None and not callable(getattr(self.resolver, "resolve", None)):
            raise bad_value(o, "resolver", self.resolver, "must have an async resolve() method")
        check_instance(o, "ssl_context", self.ssl_context, ssl.SSLContext, "an ssl.SSLContext")
        check_host_field(o, "server_hostname", self.server_hostname)
        if self.alpn_protocols is not None:
            protos = _alpn_names(o, self.alpn_protocols)
            object.__setattr__(self, "alpn_protocols", protos)
        if self.socket_factory is not None and not callable(self.socket_factory):
            raise bad_value(o, "socket_factory", self.socket_factory, "must be callable or None")
        spp = self.send_proxy_protocol
        if spp is not None and (not is_int(spp) or spp not in (1, 2)):
            raise bad_value(o, "send_proxy_protocol", spp, "must be 1, 2 or None")


# The fields a Unix socket path cannot be combined with, and their defaults.
_TCP_ONLY: Final = (
    ("host", None),
    ("port", 0),
    ("localhost_only", False),
    ("family", None),
    ("fd", None),
    ("reuse_port", False),
    ("transparent", False),
    ("defer_accept", None),
)
# sockaddr_un's sun_path is 108 bytes on Linux, one of them the final NUL.
MAX_UNIX_PATH: Final = 107


def unix_path_problem(path: object) -> str | None:
    """Why ``path`` cannot name a Unix socket, or ``None``."""
    if not isinstance(path, str):
        return "must be a str (a file system path, or '@name' for an abstract name)"
    if not path or path == "@":
        return "an empty path"
    if "\0" in path:
        return "a NUL character (write an abstract name as '@name')"
    control = next((c for c in path if c.isascii() and not c.isprintable()), None)
    if control is not None:  # legal to the kernel, but it would break log lines
        return f"a control character, {control!r}"
    try:
        size = len(os.fsencode(path))
    except UnicodeEncodeError as exc:
        return f"not encodable as a file name ({exc.reason})"
    if size > MAX_UNIX_PATH:
        return f"{size} bytes long, more than the {MAX_UNIX_PATH} a Unix socket address holds"
    return None


def _uid_of(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid_of(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _user_id(owner: str, name: str, value: object, lookup: Callable[[str], int]) -> int | None:
    """``None``, a numeric id, or a user/group name turned into its id."""
    if value is None:
        return None
    if is_int(value):
        check_int(owner, name, value, 0, U32_MAX - 1)  # (uid_t)-1 means "unchanged"
        return int(value)
    if not isinstance(value, str) or not value:
        raise bad_value(owner, name, value, "must be a name or a numeric id")
    try:
        return lookup(value)
    except KeyError:
        what = "user" if name == "owner" else "group"
        raise bad_value(owner, name, value, f"no such {what} on this host") from None


def _check_local_address(owner: str, value: object, family: object) -> None:
    """An IP literal this host could bind (a scope id names a real interface),
    of ``family`` if one is asked for (connect() would refuse it later)."""
    if value is None:
        return
    if not isinstance(value, str):
        raise bad_value(owner, "local_address", value, "must be an IP address str or None")
    why = host_problem(value)  # a NUL would cut "127.0.0.1\x00..." short
    try:
        ipaddress.ip_address(value)
    except ValueError:
        why = why or "not an IP address"
    local = resolve_literal(value, 0) if why is None else None
    if why is None and local is None:
        why = "not an address this host can bind (unknown interface?)"
    if why is not None:
        raise bad_value(owner, "local_address", value, why)
    if family is not None and local is not None and local[0] != family:
        raise bad_value(owner, "family", family, f"local_address={value!r} is not of that family")


def _alpn_names(owner: str, value: object) -> tuple[str, ...]:
    """ALPN protocol names: ASCII str, 1..255 characters each (RFC 7301)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise bad_value(
            owner, "alpn_protocols", value, "must be a list of str (['h2', 'http/1.1'])"
        )
    names = tuple(value)  # once: a generator could not be read twice
    for name in names:
        if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= 255:
            raise bad_value(
                owner, "alpn_protocols", name, "each protocol must be an ASCII str of 1..255 chars"
            )
    return names
