"""Opening listening sockets from :class:`AcceptOptions` (ATS ``NetAccept::init_accept``,
``Server::listen``).

Listening sockets are plain non-blocking stdlib sockets rather than trio
sockets: the accept loop calls ``accept()`` on them directly so it can take
several pending connections per wake-up (see ``_server._accept_loop``), which
trio's socket wrapper -- one scheduler round trip per ``accept`` -- cannot.
"""

from __future__ import annotations

import dataclasses
import errno
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

import trio

from .._base._addr import AddrInfo, SocketAddress, as_socket_address, host_port, host_problem
from .._base._options import AcceptOptions
from .._base._sockopt import apply_listen_options, apply_socket_options

__all__ = [
    "Listener",
    "adopt_listener",
    "bind_addresses",
    "bind_socket",
    "bind_sockets",
    "check_listening_fd",
    "open_listeners",
]


@final
@dataclass(eq=False)
class Listener:
    """One listening socket of a server.

    Attributes:
      socket: the non-blocking ``socket.socket`` (owned by the server).
      options: the :class:`AcceptOptions` it was opened from.
      address: the bound :data:`SocketAddress`, as ``getsockname()`` returns it.
    """

    socket: socket.socket
    options: AcceptOptions
    address: SocketAddress

    @property
    def port(self) -> int:
        return int(self.address[1])

    @property
    def family(self) -> int:
        return int(self.socket.family)

    def __repr__(self) -> str:
        return f"<trionet.Listener {self.address!r}>"


async def open_listeners(opts: AcceptOptions) -> list[Listener]:
    """Bind and listen on every address ``opts`` names. On failure nothing stays open.

    Raises:
      OSError: binding failed (EADDRINUSE, EACCES...), with the address in the message;
        ``socket.gaierror`` naming the host and port if ``opts.host`` cannot be resolved.
      UnsupportedOptionError: an option the platform or our privileges lack.
    """
    if opts.fd is not None:
        return [adopt_listener(opts.fd, opts)]
    bound = bind_sockets(await bind_addresses(opts), opts)
    listeners: list[Listener] = []
    try:
        while bound:
            _, sock = bound.pop(0)
            listeners.append(_listen_on(sock, opts))
    except BaseException:
        for _, sock in bound:
            sock.close()
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


async def bind_addresses(opts: AcceptOptions) -> list[AddrInfo]:
    if opts.localhost_only:
        candidates: list[AddrInfo] = [
            (socket.AF_INET, ("127.0.0.1", 0)),
            (socket.AF_INET6, ("::1", 0, 0, 0)),
        ]
        return [c for c in candidates if opts.family in (None, c[0])]
    infos = await _resolve_bind_host(opts)
    seen: list[AddrInfo] = []
    for family, _, _, _, sockaddr in infos:
        address = as_socket_address(family, sockaddr)
        if address is not None and (int(family), address) not in seen:
            seen.append((int(family), address))
    # IPv6 first: with IPV6_V6ONLY both sockets coexist, and a wildcard v6 bind
    # is the one most likely to be refused (no IPv6 on the host), which we skip.
    seen.sort(key=lambda item: item[0] != socket.AF_INET6)
    return seen


async def _resolve_bind_host(
    opts: AcceptOptions,
) -> Sequence[tuple[int, int, int, str, object]]:
    """``getaddrinfo`` for a passive socket, with errors that name the host.

    Raises:
      socket.gaierror: the host cannot be resolved, or is not a name trionet
        resolves (:func:`host_problem`: a NUL, which the C resolver would cut
        the name at, other control characters, a bad IDNA name...); the
        message names the host and the port, which getaddrinfo's own
        (``[Errno -2] Name or service not known``) does not.
    """
    host = opts.host
    where = f"cannot listen on host {host!r} port {opts.port}"
    # AcceptOptions already refused such a host; the same rule, applied again
    # here, keeps a bypassed check from reaching the C resolver.
    if host is not None and (why := host_problem(host)) is not None:
        raise socket.gaierror(socket.EAI_NONAME, f"{where}: {why}")
    try:
        return await trio.socket.getaddrinfo(
            host,
            opts.port,
            opts.family or socket.AF_UNSPEC,
            socket.SOCK_STREAM,
            0,
            socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
        )
    except socket.gaierror as exc:
        raise socket.gaierror(exc.errno, f"{where}: {exc.strerror}") from exc
    except UnicodeError as exc:  # the IDNA encoding of the name failed
        raise socket.gaierror(socket.EAI_NONAME, f"{where}: not a valid host name ({exc})") from exc


def bind_sockets(
    addresses: Sequence[AddrInfo], opts: AcceptOptions
) -> list[tuple[AddrInfo, socket.socket]]:
    """Bind one socket per address, all on one port, not yet listening.

    Port 0 on several addresses: every socket gets the port the first one got,
    so a server has one port whatever the family. That port is free on the
    first address only; another program may hold it on the next (seen in CI:
    127.0.0.1:P was ours, [::1]:P someone else's). Then the whole set is closed
    and bound again on a fresh ephemeral port, a bounded number of times; an
    explicit port is never retried (EADDRINUSE there is the answer). Addresses
    without IPv6 on the host are skipped (see :func:`bind_socket`).

    Raises:
      OSError: no address could be bound (EADDRNOTAVAIL) or binding failed,
        with the address in the message. Nothing stays open.
    """
    attempts = _EPHEMERAL_ATTEMPTS if opts.port == 0 and len(addresses) > 1 else 1
    for attempt in range(attempts):
        try:
            return _bind_once(addresses, opts)
        except _SharedPortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


# How many fresh ephemeral ports bind_sockets tries for a port-0 server on
# several addresses before it gives up (each collision needs another program to
# hold exactly that port on a later address: a handful is plenty).
_EPHEMERAL_ATTEMPTS = 8


class _SharedPortTaken(OSError):
    """The port the first socket got is taken on a later address (EADDRINUSE)."""


def _bind_once(
    addresses: Sequence[AddrInfo], opts: AcceptOptions
) -> list[tuple[AddrInfo, socket.socket]]:
    bound: list[tuple[AddrInfo, socket.socket]] = []
    try:
        port = opts.port
        for family, sockaddr in addresses:
            address: SocketAddress = (sockaddr[0], port, *sockaddr[2:])
            try:
                sock = bind_socket(family, address, opts)
            except OSError as exc:
                if bound and opts.port == 0 and exc.errno == errno.EADDRINUSE:
                    raise _SharedPortTaken(exc.errno, str(exc)) from exc
                raise
            if sock is None:
                continue
            port = sock.getsockname()[1]
            bound.append(((family, sock.getsockname()), sock))
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    if not bound:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {opts!r}")
    return bound


def _listen_on(sock: socket.socket, opts: AcceptOptions) -> Listener:
    try:
        apply_socket_options(sock, opts.socket)
        sock.listen(opts.backlog)
        sock.setblocking(False)
        return Listener(sock, opts, sock.getsockname())
    except BaseException:
        sock.close()
        raise


def bind_socket(family: int, sockaddr: SocketAddress, opts: AcceptOptions) -> socket.socket | None:
    """A TCP socket bound to ``sockaddr`` with ``opts``' listening options, not
    yet listening (``bind_sockets`` binds every address this way).

    Returns None when the host has no IPv6 on that address (the server then
    serves IPv4 only). Raises OSError naming the address when binding fails.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if hasattr(socket, "SO_REUSEADDR"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        apply_listen_options(sock, opts)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                sock.close()
                return None
            raise OSError(
                exc.errno, f"cannot listen on {host_port(sockaddr[0], sockaddr[1])}: {exc.strerror}"
            ) from exc
        return sock
    except BaseException:
        sock.close()
        raise


def adopt_listener(fd: int, opts: AcceptOptions) -> Listener:
    """Serve a listening socket someone else opened (systemd, a parent process,
    ATS's ``main_accept(cont, fd, opt)``). The fd is taken over: the server closes
    it when it stops.

    The socket is made non-blocking and ``opts.socket`` is applied to it (and so
    inherited by accepted sockets), as is ``defer_accept``, which works on a
    listening socket. ``reuse_port`` and ``transparent`` only act before
    ``bind()``, which the opener did: asking for them is an error rather than
    an option silently not applied.

    Raises:
      ValueError: ``fd`` is closed, not a socket, not TCP, or not listening;
        or a bind-time option was asked for.
    """
    for name in ("reuse_port", "transparent"):
        if getattr(opts, name):
            raise ValueError(
                f"fd {fd}: AcceptOptions.{name}=True cannot be applied to a socket "
                "that is already bound; set it where the socket is opened"
            )
    sock = _socket_for_fd(fd)
    try:
        _check_listening(fd, sock)
        apply_socket_options(sock, opts.socket)
        if opts.defer_accept is not None:
            apply_listen_options(sock, dataclasses.replace(opts, reuse_port=False))
        sock.setblocking(False)
        return Listener(sock, opts, sock.getsockname())
    except BaseException:
        sock.detach()  # not ours to close when we refuse it
        raise


def check_listening_fd(fd: int) -> None:
    """Check that ``fd`` is a listening TCP socket, without taking it over.

    Raises:
      ValueError: ``fd`` is closed, not a socket, not TCP, or not listening.
    """
    sock = _socket_for_fd(fd)
    try:
        _check_listening(fd, sock)
    finally:
        sock.detach()


def _socket_for_fd(fd: int) -> socket.socket:
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"fd {fd} cannot be served: {exc.strerror or exc}") from exc


def _check_listening(fd: int, sock: socket.socket) -> None:
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"fd {fd} is not a TCP socket ({sock.family!r}, {sock.type!r})")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError(f"fd {fd} is a socket but is not listening")
