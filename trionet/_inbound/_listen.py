"""Opening listening sockets from :class:`AcceptOptions` (ATS ``NetAccept::init_accept``,
``Server::listen``).

Listening sockets are plain non-blocking stdlib sockets rather than trio
sockets: the accept loop calls ``accept()`` on them directly so it can take
several pending connections per wake-up (see ``_server._accept_loop``), which
trio's socket wrapper -- one scheduler round trip per ``accept`` -- cannot.

A Unix domain socket (``AcceptOptions(path=...)``) is opened here too; its
file is the part TCP does not have: a stale one left by a crashed server is
removed, anything else at the path never is, and the server removes its own
file when it closes (:meth:`Listener.close`).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import final

import trio

from .._base._addr import (
    AddrInfo,
    SocketAddress,
    TcpAddress,
    as_socket_address,
    host_port,
    host_problem,
    unix_path,
)
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

logger = logging.getLogger("trionet.server")


@final
@dataclass(eq=False)
class Listener:
    """One listening socket of a server.

    Attributes:
      socket: the non-blocking ``socket.socket`` (owned by the server).
      options: the :class:`AcceptOptions` it was opened from.
      address: the bound :data:`SocketAddress`, as ``getsockname()`` returns
        it (a Unix socket's path, ``"@name"`` for an abstract one).
    """

    socket: socket.socket
    options: AcceptOptions
    address: SocketAddress
    # (st_dev, st_ino) of the socket file this listener bound, removed by
    # close() if it is still that file; None when there is none of ours.
    _socket_file: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        """The TCP port (0 for a Unix socket)."""
        address = self.address
        return 0 if isinstance(address, str) else int(address[1])

    @property
    def path(self) -> str | None:
        """A Unix socket's path (``"@name"`` for an abstract one), else None."""
        address = self.address
        return address if isinstance(address, str) else None

    @property
    def family(self) -> int:
        return int(self.socket.family)

    def close(self) -> None:
        """Close the socket; for a Unix socket this listener bound, remove its
        file too, unless something else has replaced it since (another
        server that took the path over). Idempotent."""
        self.socket.close()
        owned, self._socket_file = self._socket_file, None
        if owned is not None and self.path is not None:
            _remove_if_ours(self.path, owned)

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
    if opts.path is not None:
        return [open_unix_listener(opts.path, opts)]
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
            listener.close()
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
            address: TcpAddress = (sockaddr[0], port, *sockaddr[2:])
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


def bind_socket(family: int, sockaddr: TcpAddress, opts: AcceptOptions) -> socket.socket | None:
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


# ------------------------------------------------------------ Unix sockets
def open_unix_listener(path: str, opts: AcceptOptions) -> Listener:
    """Bind and listen on the Unix socket ``path`` (``"@name"``: abstract).

    The file gets ``opts.mode`` and ``opts.owner``/``opts.group`` before
    ``listen()``, so no client connects under other permissions.

    Raises:
      OSError: naming ``unix:path``: ``EADDRINUSE`` if a server accepts on
        it; ``EEXIST`` if something other than a socket is there (never
        removed); the errno of a failed bind, chmod or chown. Nothing stays
        open or bound.
    """
    address = unix_path(path)
    abstract = address.startswith("\0")
    if not abstract:
        _clear_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    owned: tuple[int, int] | None = None
    try:
        _unix_call(path, "bind", sock.bind, address)
        if not abstract:
            st = os.lstat(path)
            owned = (st.st_dev, st.st_ino)
            _set_file_attributes(path, opts)
        apply_socket_options(sock, opts.socket)
        sock.listen(opts.backlog)
        sock.setblocking(False)
        return Listener(sock, opts, unix_address(sock.getsockname()), owned)
    except BaseException:
        sock.close()
        if owned is not None:
            _remove_if_ours(path, owned)
        raise


def unix_address(sockname: object) -> str:
    """A Unix socket's ``getsockname()``/``getpeername()`` as a str: Linux
    gives an abstract name as bytes (``b"\\0name"``), written ``"@name"`` here."""
    if isinstance(sockname, bytes):
        name = sockname[1:] if sockname.startswith(b"\0") else sockname
        return "@" + name.decode(errors="backslashreplace")
    return str(sockname)


def _unix_call(path: str, what: str, call: Callable[..., object], *args: object) -> None:
    """``call(*args)``, an ``OSError`` reworded to name the socket."""
    try:
        call(*args)
    except OSError as exc:
        raise OSError(
            exc.errno, f"cannot listen on unix:{path}: {what} failed: {exc.strerror}"
        ) from exc


def _set_file_attributes(path: str, opts: AcceptOptions) -> None:
    if opts.mode is not None:
        _unix_call(path, f"chmod {opts.mode:#o}", os.chmod, path, opts.mode)
    if opts.owner is not None or opts.group is not None:
        uid = -1 if opts.owner is None else int(opts.owner)
        gid = -1 if opts.group is None else int(opts.group)
        _unix_call(path, f"chown {uid}:{gid}", os.chown, path, uid, gid)


def _clear_stale_socket(path: str) -> None:
    """Make way for binding ``path``: remove a socket file nobody accepts on.

    A server that crashed leaves its socket file behind, and ``bind()`` then
    fails with EADDRINUSE although nothing listens. Whether something does is
    asked the only reliable way: connecting. Refused: the file is stale and is
    removed. Accepted (or the backlog full): a live server's, left alone. A
    path that is not a socket -- a regular file, a directory, a symlink -- is
    never removed (unlinking a file because a config named it is how data
    gets lost).

    Raises:
      OSError: EADDRINUSE (a live server), EEXIST (not a socket), or the
        errno of the check, naming the path.
    """
    where = f"cannot listen on unix:{path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OSError(exc.errno, f"{where}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{where}: the path exists and is not a socket (not removed)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: nobody accepts on it
    except BlockingIOError:
        raise OSError(errno.EADDRINUSE, f"{where}: a server is listening on it") from None
    except OSError as exc:
        raise OSError(exc.errno, f"{where}: cannot check the socket file: {exc.strerror}") from exc
    else:
        raise OSError(errno.EADDRINUSE, f"{where}: a server is listening on it")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # removed meanwhile
    except OSError as exc:
        raise OSError(
            exc.errno, f"{where}: cannot remove the stale socket file: {exc.strerror}"
        ) from exc
    logger.info("removed stale socket file %s (nothing was listening on it)", path)


def _remove_if_ours(path: str, owned: tuple[int, int]) -> None:
    """Unlink ``path`` if it is still the socket file ``owned`` names."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == owned and stat.S_ISSOCK(st.st_mode):
            os.unlink(path)
    except OSError as exc:  # gone already, or the directory no longer ours
        logger.debug("socket file %s not removed: %s", path, exc)


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
        address = sock.getsockname()
        if sock.family == socket.AF_UNIX:  # the file stays: it is the opener's
            address = unix_address(address)
        return Listener(sock, opts, address)
    except BaseException:
        sock.detach()  # not ours to close when we refuse it
        raise


def check_listening_fd(fd: int) -> None:
    """Check that ``fd`` is a listening TCP or Unix stream socket, without
    taking it over.

    Raises:
      ValueError: ``fd`` is closed, not a socket, not a stream socket of
        those families, or not listening.
    """
    sock = _socket_for_fd(fd)
    try:
        _check_listening(fd, sock)
    finally:
        sock.detach()


_STREAM_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)


def _socket_for_fd(fd: int) -> socket.socket:
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"fd {fd} cannot be served: {exc.strerror or exc}") from exc


def _check_listening(fd: int, sock: socket.socket) -> None:
    if sock.type != socket.SOCK_STREAM or sock.family not in _STREAM_FAMILIES:
        raise ValueError(
            f"fd {fd} is not a TCP or Unix stream socket ({sock.family!r}, {sock.type!r})"
        )
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError(f"fd {fd} is a socket but is not listening")
