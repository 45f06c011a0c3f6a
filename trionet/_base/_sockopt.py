"""Applying :class:`SocketOptions` (and the listening-only options) to sockets.

Every option that was asked for is applied or fails loudly with
:class:`UnsupportedOptionError` naming the option, the platform constant and
the errno -- never silently skipped. Options left at their "kernel default"
value (``None`` / ``False`` where off is the default) are not touched.
"""

from __future__ import annotations

import socket
import struct
from contextlib import suppress
from typing import Protocol

from ._errors import UnsupportedOptionError
from ._options import AcceptOptions, SocketOptions

__all__ = ["apply_listen_options", "apply_socket_options", "linger_abort"]

# Linux values for constants the socket module does not export everywhere.
_LINUX_FALLBACK = {
    "SO_MARK": 36,
    "IP_TRANSPARENT": 19,
    "TCP_NOTSENT_LOWAT": 25,
    "TCP_DEFER_ACCEPT": 9,
    "IPV6_TRANSPARENT": 75,
}


_AF_UNIX = getattr(socket, "AF_UNIX", None)


class _SockLike(Protocol):
    @property
    def family(self) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int | bytes, /) -> None: ...


def _const(name: str) -> int | None:
    value = getattr(socket, name, None)
    if value is None and socket.__dict__.get("AF_NETLINK") is not None:  # Linux
        value = _LINUX_FALLBACK.get(name)
    return value


def _set(sock: _SockLike, what: str, level: int, const: str, value: int | bytes) -> None:
    opt = _const(const)
    if opt is None:
        raise UnsupportedOptionError(f"{what}: this platform has no {const}")
    try:
        sock.setsockopt(level, opt, value)
    except OSError as exc:
        raise UnsupportedOptionError(
            exc.errno, f"{what}: setsockopt({const}) failed: {exc.strerror}"
        ) from exc


def apply_socket_options(sock: _SockLike, opts: SocketOptions) -> None:
    """Apply ``opts`` to ``sock`` (TCP, either family; on a Unix socket
    ``nodelay``, on by default, does not apply and is skipped)."""
    if opts.nodelay and sock.family != _AF_UNIX:
        _set(sock, "SocketOptions.nodelay", socket.IPPROTO_TCP, "TCP_NODELAY", 1)
    if opts.keepalive:
        _set(sock, "SocketOptions.keepalive", socket.SOL_SOCKET, "SO_KEEPALIVE", 1)
    if opts.linger is not None:
        packed = struct.pack("ii", 1, opts.linger)  # struct linger {l_onoff, l_linger}
        _set(sock, "SocketOptions.linger", socket.SOL_SOCKET, "SO_LINGER", packed)
    if opts.recv_bufsize is not None:
        _set(sock, "SocketOptions.recv_bufsize", socket.SOL_SOCKET, "SO_RCVBUF", opts.recv_bufsize)
    if opts.send_bufsize is not None:
        _set(sock, "SocketOptions.send_bufsize", socket.SOL_SOCKET, "SO_SNDBUF", opts.send_bufsize)
    if opts.tos is not None:
        if sock.family == socket.AF_INET6:
            _set(sock, "SocketOptions.tos", socket.IPPROTO_IPV6, "IPV6_TCLASS", opts.tos)
        else:
            _set(sock, "SocketOptions.tos", socket.IPPROTO_IP, "IP_TOS", opts.tos)
    if opts.mark is not None:
        # The kernel's mark is a u32, but setsockopt() with a Python int passes
        # a signed C int (2**31 and up fail with TypeError): pass the 4 bytes.
        packed_mark = struct.pack("=I", opts.mark)
        _set(sock, "SocketOptions.mark", socket.SOL_SOCKET, "SO_MARK", packed_mark)
    if opts.notsent_lowat is not None:
        _set(
            sock,
            "SocketOptions.notsent_lowat",
            socket.IPPROTO_TCP,
            "TCP_NOTSENT_LOWAT",
            opts.notsent_lowat,
        )


def apply_listen_options(sock: _SockLike, opts: AcceptOptions) -> None:
    """Options that only make sense on a listening socket, before ``bind``."""
    if opts.reuse_port:
        _set(sock, "AcceptOptions.reuse_port", socket.SOL_SOCKET, "SO_REUSEPORT", 1)
    if opts.transparent:
        if sock.family == socket.AF_INET6:
            _set(sock, "AcceptOptions.transparent", socket.IPPROTO_IPV6, "IPV6_TRANSPARENT", 1)
        else:
            _set(sock, "AcceptOptions.transparent", socket.IPPROTO_IP, "IP_TRANSPARENT", 1)
    if opts.defer_accept is not None:
        # AcceptOptions bounds it to a C int of seconds; TCP_DEFER_ACCEPT takes whole ones.
        seconds = max(1, round(opts.defer_accept)) if opts.defer_accept else 0
        _set(sock, "AcceptOptions.defer_accept", socket.IPPROTO_TCP, "TCP_DEFER_ACCEPT", seconds)


# struct linger {l_onoff=1, l_linger=0}: close() then discards unsent data and
# sends RST instead of FIN (an abortive close).
_LINGER_ABORT = struct.pack("ii", 1, 0)


def linger_abort(sock: _SockLike) -> None:
    """Make the next ``close()`` of ``sock`` abortive: ``SO_LINGER`` {on, 0 s},
    so the kernel drops what is unsent and answers with RST instead of FIN.
    Never raises (the peer may have reset first: closing is all that is left)."""
    with suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
