"""The outbound connect path (Netty ``Bootstrap.connect``, ATS ``connect_re``):
throttle, resolve, happy eyeballs, connect timeout, wrap in a ``Connection``.

One ``connect()`` call, step by step::

    connect(host, port, options)
    ├── reserve a throttle slot           (ThrottledError at max_connections),
    │                                      or take the one serve() reserved
    │                                      with `for_connection`
    └── with move_on_after(connect_timeout):       <- covers every step below
        ├── resolve                       (IP literal: no resolver call)
        ├── race: one attempt task per address, staggered (RFC 8305)
        │   └── attempt: socket() → options → bind → connect()
        ├── wrap the winner in a Connection (counted, timeouts set)
        ├── PROXY header if send_proxy_protocol (the client's addresses)
        └── TLS handshake if ssl_context (TLSError), inside the timeout

A ``unix:/path`` target (``unix:@name``: a Linux abstract name) takes the
same steps with one address and no resolver: a Unix stream socket connected
to the path, under the same throttle, timeout, statistics and TLS.

Where Netty differs, and why trionet does not:

* Netty creates and registers the channel *before* resolving, so a connect
  cancelled during DNS keeps a channel open until resolution ends. Here no
  socket exists until there is an address to connect to, and resolution is
  cancelled with everything else.
* Netty's connect timeout starts at ``doConnect`` (after DNS). Here one cancel
  scope covers resolution, every attempt, and the TLS handshake: the caller's
  timeout is the time they wait, whatever it was spent on.
* Netty tries one address. Here every resolved address is raced with RFC 8305
  staggering, first success wins and the losers are closed.
* Netty ignored cancellation once the transport had the connect (until
  4.1.108). Here cancellation is trio's: every await is a cancel point and
  every socket opened on the way is closed on the way out, whatever the exit.
"""

from __future__ import annotations

import errno
import socket
from typing import Final, Protocol

import trio

from .._base._addr import AddrInfo, SocketAddress, host_port, resolve_literal, unix_target
from .._base._checks import is_int
from .._base._errors import (
    ENET_THROTTLING,
    ConnectError,
    ConnectTimeoutError,
    ResolveError,
    ThrottledError,
    TLSError,
    named_error,
)
from .._base._options import ConnectOptions, Resolver, unix_path_problem
from .._base._proxy_header import ProxyVersion, encode_proxy_header
from .._base._sockopt import apply_socket_options
from .._core._connection import Connection
from .._core._table import ConnectionTable, Reservation
from .._core._tls import tls_client_handshake
from ._eyeballs import happy_eyeballs
from ._resolve import GetaddrinfoResolver, check_addresses, check_host

__all__ = ["connect"]

_DEFAULT_RESOLVER: Final = GetaddrinfoResolver()

# Linux: let bind() with port 0 defer the choice of the ephemeral port to
# connect(), so binding a local address does not use up the port range the
# way a plain bind would (the kernel can then reuse a port per destination).
_IP_BIND_ADDRESS_NO_PORT: Final = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)


def _open_tcp_socket(family: int) -> trio.socket.SocketType:
    return trio.socket.socket(family, socket.SOCK_STREAM)


async def connect(
    table: ConnectionTable,
    host: str,
    port: int,
    options: ConnectOptions | None = None,
    *,
    for_connection: Connection | None = None,
) -> Connection:
    """Open a TCP connection to ``host:port``, counted in ``table``.

    See :meth:`NetProcessor.connect` for the contract (``for_connection``:
    the inbound connection whose reserved slot to use).

    Statistics: ``connects_total`` counts every call admitted past the
    throttle; of those, ``connect_timeouts`` the ones that timed out and
    ``connect_failures`` the ones that failed otherwise (resolution included).
    A cancelled call is neither. A refused call counts only in
    ``connections_throttled_out``.
    """
    host, port, opts = _check_arguments(host, port, options)
    if for_connection is not None and not isinstance(for_connection, Connection):
        raise TypeError(f"for_connection={for_connection!r}: must be a trionet.Connection or None")
    target = host_port(host, port)
    counters = table.counters
    throttle = table.throttle
    # A slot serve() reserved with the client (see trionet._inbound._accept's
    # "slot pairing") is taken here, before any checkpoint, and from then on is
    # this call's like one it reserved itself: handed to the Connection, or
    # given back on failure -- exactly once either way.
    reserved = for_connection._take_reservation(table) if for_connection is not None else None
    if reserved is None and throttle.at_limit():
        counters.connections_throttled_out += 1
        raise named_error(
            ThrottledError,
            ENET_THROTTLING,
            f"too many connections ({throttle.max_connections} open), not connecting: {target}",
        )
    # The call holds a slot from here on, so concurrent connects (and the
    # accept loops) cannot overshoot max_connections while we resolve and race.
    # _establish hands it over to the Connection it creates.
    slot = reserved if reserved is not None else table.reserve()
    counters.connects_total += 1
    try:
        with trio.move_on_after(_timeout_seconds(opts)):
            return await _establish(table, host, port, opts, slot, for_connection)
        counters.connect_timeouts += 1
        raise named_error(
            ConnectTimeoutError,
            errno.ETIMEDOUT,
            f"connection timed out after {_format_ms(opts.connect_timeout)} ms: {target}",
        )
    except ConnectError as exc:
        if not isinstance(exc, ConnectTimeoutError):
            counters.connect_failures += 1
        raise
    finally:
        slot.release()


async def _establish(
    table: ConnectionTable,
    host: str,
    port: int,
    opts: ConnectOptions,
    slot: Reservation,
    client: Connection | None,
) -> Connection:
    """Resolve, race, wrap: everything the connect timeout covers."""
    path = unix_target(host)
    peer: SocketAddress
    if path is not None:
        sock, peer = await _connect_unix(host, path, opts), host[len("unix:") :]
    else:
        addresses = await _resolve(host, port, opts)
        sock, address = await happy_eyeballs(
            addresses,
            target=host_port(host, port),
            delay=opts.happy_eyeballs_delay,
            prepare=lambda s: _prepare_socket(s, opts),
            socket_factory=opts.socket_factory or _open_tcp_socket,
        )
        peer = address[1]
    slot.hand_over()
    try:
        conn = table.open(
            sock,
            inbound=False,
            client=None,
            peer_address=peer,
            inactivity_timeout=opts.inactivity_timeout,
            active_timeout=opts.active_timeout,
        )
    except BaseException:
        sock.close()
        raise
    try:
        # ---- PROXY header: the connection's first bytes, before TLS (as
        # HAProxy sends it), inside the timeout: a server that never reads
        # cannot hold the connect past it.
        if opts.send_proxy_protocol is not None:
            target = host_port(host, port)
            await _send_proxy_header(conn, opts.send_proxy_protocol, client, target)
        # ---- TLS: still inside connect()'s timeout scope, so a stalled
        # handshake ends as ConnectTimeoutError; an error (TLSError) or a
        # cancellation closes `conn` (below), which frees its slot.
        if opts.ssl_context is not None:
            try:
                await tls_client_handshake(
                    conn, opts.ssl_context, host, port, opts.server_hostname, opts.alpn_protocols
                )
            except TLSError:
                table.counters.tls_handshake_errors += 1
                raise
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        conn.close()
        raise
    return conn


class _HeaderWire(Protocol):
    """What sending a PROXY header needs from a connection (``Connection`` is
    one): the wire primitive, so that the header counts as wire bytes
    (``write_bytes``) but not as payload (``bytes_sent``). Private to trionet."""

    async def _wire_send(
        self, data: bytes | bytearray | memoryview, payload: bool = True
    ) -> None: ...


async def _send_proxy_header(
    conn: _HeaderWire, version: ProxyVersion, client: Connection | None, target: str
) -> None:
    """Send the PROXY header relaying ``client``'s addresses (none without one)."""
    if client is None:
        header = encode_proxy_header(version, None, None)
    else:
        header = encode_proxy_header(version, client.remote_address, client.local_address)
    try:
        await conn._wire_send(header, payload=False)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        # The server reset the connection before reading anything: as
        # unreachable as a refused connect, and reported the same way.
        raise named_error(
            ConnectError, errno.ECONNRESET, f"reset while sending the PROXY header: {target}"
        ) from exc


def _check_arguments(
    host: object, port: object, options: object
) -> tuple[str, int, ConnectOptions]:
    if not isinstance(host, str) or not host:
        raise TypeError(f"host={host!r}: must be a non-empty str (a name or an IP literal)")
    if not is_int(port):
        raise TypeError(f"port={port!r}: must be an int")
    unix = unix_target(host) is not None
    if unix and port != 0:
        raise ValueError(f"port={port!r}: a Unix socket ({host!r}) has no port; give 0")
    if not unix and not 1 <= port <= 65535:
        raise ValueError(f"port={port!r}: must be 1..65535")
    port = int(port)  # not an int subclass (IntEnum): getaddrinfo() refuses those
    if options is None:
        options = ConnectOptions()
    elif not isinstance(options, ConnectOptions):
        raise TypeError(f"options={options!r}: must be a trionet.ConnectOptions or None")
    if unix:
        _check_unix_target(host, options)
    return host, port, options


def _check_unix_target(host: str, opts: ConnectOptions) -> None:
    """Options that cannot apply to a ``unix:`` target are refused, not ignored.

    Raises:
      ValueError: naming the target and the option (or the bad path).
    """
    why = unix_path_problem(host[len("unix:") :])
    if why is not None:
        raise ValueError(f"host={host!r}: not a Unix socket path: {why}")
    for name in ("local_address", "family", "socket_factory"):
        if getattr(opts, name) is not None:
            raise ValueError(
                f"ConnectOptions.{name}={getattr(opts, name)!r}: does not apply to {host}"
            )
    if opts.local_port:
        raise ValueError(f"ConnectOptions.local_port={opts.local_port!r}: does not apply to {host}")
    if opts.ssl_context is not None and opts.server_hostname is None:
        raise ValueError(
            f"ConnectOptions.server_hostname=None: TLS to {host} needs the name to verify"
        )


async def _connect_unix(target: str, path: str, opts: ConnectOptions) -> trio.socket.SocketType:
    """A Unix stream socket connected to ``path`` (closed on any failure).

    Raises:
      ConnectError: the connect failed (ENOENT, ECONNREFUSED, EACCES...),
        the errno kept, the message ending with the target.
    """
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        apply_socket_options(sock, opts.socket)
        await sock.connect(path)
    except OSError as exc:
        sock.close()
        raise named_error(ConnectError, exc.errno, f"{exc.strerror or exc}: {target}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _timeout_seconds(opts: ConnectOptions) -> float:
    return float("inf") if opts.connect_timeout is None else opts.connect_timeout


def _format_ms(seconds: float | None) -> str:
    """A timeout in milliseconds as Netty prints it: ``5000``, ``250``, ``12.5``."""
    return f"{(seconds or 0.0) * 1000:.3f}".rstrip("0").rstrip(".")


async def _resolve(host: str, port: int, opts: ConnectOptions) -> list[AddrInfo]:
    """Addresses to try for ``host``, restricted to the wanted family.

    Raises:
      ResolveError: the lookup failed or gave no usable address, or ``host``
        is no valid name (control characters, over-long, IDNA failure: see
        :func:`~trionet._resolve.host_problem`), whatever the resolver.
      ValueError: ``family`` and ``local_address`` ask for different families.
    """
    # Checked here, for every resolver and for literals alike: getaddrinfo()
    # would cut "127.0.0.1\x00.example.com" at the NUL. Inside connect()'s
    # timeout scope, so the refusal counts in connect_failures like any other
    # name that cannot be resolved.
    check_host(host, port)
    target = host_port(host, port)
    family = _wanted_family(opts)
    literal = resolve_literal(host, port)
    if literal is not None:
        # Netty's isResolved(): an IP literal is its own answer.
        if family and literal[0] != family:
            raise ValueError(
                f"host={host!r} is not an address of the family "
                f"{socket.AddressFamily(family).name} that {_family_source(opts)} asks for"
            )
        await trio.lowlevel.checkpoint()
        return [literal]
    resolver: Resolver = opts.resolver if opts.resolver is not None else _DEFAULT_RESOLVER
    try:
        result = await resolver.resolve(host, port, family)
    except ConnectError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise named_error(ResolveError, exc.errno, f"cannot resolve ({reason}): {target}") from exc
    addresses = check_addresses(resolver, host, result)
    if family:
        addresses = [a for a in addresses if a[0] == family]
    if not addresses:
        raise named_error(ResolveError, None, f"no usable address found: {target}")
    return addresses


def _family_source(opts: ConnectOptions) -> str:
    """The option that restricts the family, for messages."""
    if opts.local_address is not None:
        return f"ConnectOptions.local_address={opts.local_address!r}"
    return f"ConnectOptions.family={opts.family!r}"


def _wanted_family(opts: ConnectOptions) -> int:
    family = int(opts.family or 0)
    if opts.local_address is not None:
        local = resolve_literal(opts.local_address, 0)
        assert local is not None  # ConnectOptions validated it as an IP address
        if family and family != local[0]:
            raise ValueError(
                f"ConnectOptions.family={opts.family!r} does not match "
                f"local_address={opts.local_address!r}"
            )
        family = local[0]
    return family


async def _prepare_socket(sock: trio.socket.SocketType, opts: ConnectOptions) -> None:
    """Socket options, then bind if a local address or port was asked for."""
    apply_socket_options(sock, opts.socket)
    if opts.local_address is None and not opts.local_port:
        await trio.lowlevel.checkpoint()
        return
    if opts.local_address is not None and not opts.local_port and _IP_BIND_ADDRESS_NO_PORT:
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    if opts.local_address is not None:
        local = resolve_literal(opts.local_address, opts.local_port)
        assert local is not None
        sockaddr = local[1]
    else:
        wildcard = "::" if sock.family == socket.AF_INET6 else "0.0.0.0"
        sockaddr = (wildcard, opts.local_port)
    await sock.bind(sockaddr)
