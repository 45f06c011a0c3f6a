"""The socket end of a connection: the wire primitive, closing, and the
accounting a connection carries for its table.

:meth:`Wire._wire_receive` and :meth:`Wire._wire_send` are the only code that
moves bytes through the socket: they count the processor's statistics
(``calls_to_read``, ``read_bytes``...) and record activity. Plain TCP's
``Connection.receive_some`` / ``send_all`` *are* them (one coroutine frame per
call: the public methods return these coroutines); TLS runs ``trio.SSLStream``
over them with ``payload=False`` and counts the plaintext itself; the PROXY
header reader peeks and reads through them too. Nothing is counted twice and
nothing is subtracted afterwards.

:class:`Wire` is ``Connection``'s base class: the fields here are written by
these methods only. Activity is recorded as a timestamp (the timeout cop reads
it when a deadline comes up), and, at expiry only, by asking the kernel whether
it still delivers our unsent bytes ("kernel progress of a send", below).
"""

from __future__ import annotations

import errno
import socket as _stdlib_socket
import struct
import sys
from typing import TYPE_CHECKING, Final, Protocol

import trio

from .._base._sockopt import linger_abort

if TYPE_CHECKING:
    from ._stats import Counters
    from ._table import Reservation
    from ._timeouts import TimeoutCop

__all__ = ["DEFAULT_RECEIVE_SIZE", "Owner", "Wire", "bytes_acked_if_unsent"]

DEFAULT_RECEIVE_SIZE: Final = 65536
# Module-level, not a bound method per connection (64 bytes each); honours MockClock.
_now: Final = trio.current_time

# errnos after which the connection is broken (the peer went away), as opposed
# to an errno that means we misused a closed socket.
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


class Owner(Protocol):
    """What a connection needs from the table that opened it
    (:class:`~trionet._core._table.ConnectionTable`): the counters its I/O
    counts in, the timeout cop, and two calls."""

    @property
    def counters(self) -> Counters: ...

    @property
    def cop(self) -> TimeoutCop: ...

    def release(self, conn: Wire, client: str | None) -> None:
        """Called exactly once per connection, when it closes; ``client`` is
        the key it counted under for the per-client limit."""

    def admit_client(self, host: str) -> bool:
        """Count one more connection from ``host`` if the per-client limit
        allows it (a PROXY header named the client after the accept)."""


class Wire:
    """A connected socket with its accounting (see the module notes); the base
    of :class:`~trionet.Connection`, which documents the public members."""

    __slots__ = (
        "_acked_seen",
        "_client_key",
        "_closed",
        "_last_activity",
        "_owner",
        "_receiving",
        "_reserved",
        "_sending",
        "broken",
        "bytes_received",
        "bytes_sent",
        "id",
        "socket",
    )

    # Declared here (the slots above hold them) so that type checkers see the
    # public fields' types, also where ``Connection`` writes them.
    socket: trio.socket.SocketType
    id: int
    bytes_received: int
    bytes_sent: int
    broken: bool

    def __init__(
        self,
        sock: trio.socket.SocketType,
        conn_id: int,
        owner: Owner,
        client: str | None,
        reservation: Reservation | None,
    ) -> None:
        self.socket = sock
        self.id = conn_id
        self._owner = owner
        self._client_key = client
        # An outbound slot the accept loop reserved with this inbound connection
        # for its handler's connect (NetProcessor.connect(for_connection=...)):
        # taken once by that connect, or given back once when this one closes.
        self._reserved = reservation
        self._closed = False
        self._receiving = False
        self._sending = False
        self._last_activity = _now()
        self._acked_seen = -1  # tcpi_bytes_acked at the cop's last look; -1: none yet
        self.bytes_received = 0
        self.bytes_sent = 0
        self.broken = False

    def close(self) -> None:
        """Close the socket at once (no TLS close_notify) and release the
        connection's slot. Idempotent; safe from synchronous code."""
        if self._closed:
            return
        self._closed = True
        self.socket.close()
        reservation = self._reserved
        if reservation is not None:  # reserved for an outbound connect that never took it
            self._reserved = None
            reservation.release()
        self._owner.release(self, self._client_key)

    def abort(self) -> None:
        """Abortive close: the peer gets a reset (RST), never a clean end.

        ``SO_LINGER`` {on, 0 s} then close: the kernel discards whatever is
        still unsent and answers with RST instead of FIN, so the peer's next
        receive fails (``ECONNRESET``) instead of returning EOF. A TLS
        connection sends no ``close_notify``, TLS's authenticated "that was
        all". Use it when the bytes sent so far must not look complete: a
        proxy passing on the other side's reset, a session cut by a deadline
        or a shutdown. :meth:`aclose` stays the orderly close.

        Idempotent, synchronous (safe in ``finally`` blocks under
        cancellation); releases the slot like :meth:`close`.
        """
        if self._closed:
            return
        linger_abort(self.socket)
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_activity(self) -> float:
        """``trio.current_time()`` of the last receive or send that moved bytes,
        or of the timeout check that found the kernel still delivering this
        connection's queued bytes to a reading peer (on a spliced connection,
        after the splice: on either side of it)."""
        return self._last_activity

    # ----------------------------------------------------------- accounting
    def _relay_client(self, host: str) -> bool:
        """Count the connection against ``host`` for the per-client limit
        (the client a PROXY header relays), if the limit allows one more.

        Returns:
          False at the limit (the caller closes the connection).
        """
        if not self._owner.admit_client(host):
            return False
        self._client_key = host
        return True

    def _take_reservation(self, owner: Owner) -> Reservation | None:
        """Hand the outbound slot reserved with this connection to a connect of
        the same processor (``owner``), or None. Exactly once: after this (or
        after close) there is none."""
        reservation = self._reserved
        if reservation is None or self._closed or owner is not self._owner:
            return None
        self._reserved = None
        return reservation

    def _kernel_progressed(self, now: float) -> bool:
        """Called by the cop, only when the inactivity deadline is due: while
        the kernel holds bytes of ours it has not sent, has the peer acked more
        since the cop's last look? That counts as activity at ``now``.

        Returns:
          ``True`` if it progressed (``last_activity`` is then ``now``); ``False``
          when it did not, nothing is unsent, or the kernel cannot tell. See
          "kernel progress of a send" at the end of this module.
        """
        acked = bytes_acked_if_unsent(self.socket)
        if acked is None:
            return False
        seen, self._acked_seen = self._acked_seen, acked
        if acked == seen:
            return False
        self._last_activity = now
        return True

    # ------------------------------------------------------ the wire primitive
    # Plain TCP's receive_some/send_all are these coroutines themselves; TLS's
    # transport (trionet._core._tls) and the PROXY header reader call them with
    # payload=False, so handshake, record and header bytes are counted in the
    # processor's statistics and are activity exactly like plain bytes, while
    # bytes_received/bytes_sent stay payload counts.
    async def _wire_receive(
        self, max_bytes: int | None = None, flags: int = 0, payload: bool = True
    ) -> bytes:
        """One ``recv`` on the socket, counted.

        Args:
          max_bytes: as ``receive_some``.
          flags: ``socket.MSG_PEEK`` to look without taking: nothing is counted
            (the receive that takes the bytes counts them).
          payload: count the bytes in ``bytes_received`` too.
        """
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        # Written out rather than _base._checks.is_int: no call on the hot path.
        elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes={max_bytes!r}: must be an int")
        elif max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes!r}: must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        self._receiving = True
        try:
            try:
                # No flags argument unless asked: it would travel through
                # trio's wrappers on every call of the hot path.
                if flags:
                    data = await self.socket.recv(max_bytes, flags)
                else:
                    data = await self.socket.recv(max_bytes)
            except OSError as exc:
                raise self._translate(exc) from exc
        finally:
            self._receiving = False
        if flags:  # MSG_PEEK: the bytes stay queued for the receive that takes them
            return data
        counters = self._owner.counters
        counters.calls_to_read += 1
        if data:
            n = len(data)
            counters.read_bytes += n
            if payload:
                self.bytes_received += n
            self._last_activity = _now()
        else:
            counters.calls_to_read_nodata += 1
        return data

    async def _wire_send(self, data: bytes | bytearray | memoryview, payload: bool = True) -> None:
        """``send`` until every byte of ``data`` is in the kernel, counted
        (``payload``: in ``bytes_sent`` too)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._sending = True
        try:
            if self.socket.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            with memoryview(data) as view:
                total = len(view)
                if not total:
                    await trio.lowlevel.checkpoint()
                    if self._closed:
                        raise trio.ClosedResourceError("connection was closed")
                    return
                counters = self._owner.counters
                sent = 0
                while sent < total:
                    try:
                        n = await self.socket.send(view[sent:] if sent else view)
                    except OSError as exc:
                        raise self._translate(exc) from exc
                    # Every send that moves bytes into the kernel is activity (Netty's
                    # observeOutput); while one is stuck on a full send buffer, the
                    # cop asks the kernel instead ("kernel progress of a send").
                    sent += n
                    counters.calls_to_write += 1
                    counters.write_bytes += n
                    if payload:
                        self.bytes_sent += n
                    self._last_activity = _now()
        finally:
            self._sending = False

    async def _wait_wire_writable(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._sending = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("connection was closed")
            try:
                await self.socket.wait_writable()
            except OSError as exc:
                raise self._translate(exc) from exc
        finally:
            self._sending = False

    async def _wire_send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("connection was closed")
        if self.socket.did_shutdown_SHUT_WR:
            return
        try:
            self.socket.shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise self._translate(exc) from exc

    # Bytes moved between this socket and a pipe inside the kernel (splice(2),
    # trionet._apps._zero_copy): counted exactly as a receive / send above
    # counts them (statistics, payload counts, activity), one call per splice.
    def _count_received(self, n: int) -> None:
        counters = self._owner.counters
        counters.calls_to_read += 1
        if n:
            counters.read_bytes += n
            self.bytes_received += n
            self._last_activity = _now()
        else:
            counters.calls_to_read_nodata += 1

    def _count_sent(self, n: int) -> None:
        counters = self._owner.counters
        counters.calls_to_write += 1
        counters.write_bytes += n
        self.bytes_sent += n
        self._last_activity = _now()

    def _translate(self, exc: OSError) -> Exception:
        if self._closed or exc.errno in _CLOSED_ERRNOS:
            return trio.ClosedResourceError("connection was closed")
        self.broken = True
        return trio.BrokenResourceError(f"connection #{self.id} broken: {exc}")

    # ----------------------------------------------------------- socket options
    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """``setsockopt`` on the underlying socket."""
        self.socket.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> int | bytes:
        """``getsockopt`` on the underlying socket."""
        if buflen is None:
            return self.socket.getsockopt(level, option)
        return self.socket.getsockopt(level, option, buflen)


# ------------------------------------------------ kernel progress of a send
# A slow but steady reader must not be cut off while it reads. trionet counts a
# send as activity when bytes move into the kernel, but one send() can fill a
# send buffer the kernel has grown to megabytes, and Linux wakes the writer
# only when about a third of it has drained: a peer reading 1.5 MB/s from a
# 4 MiB buffer keeps the writer asleep for most of a second although it reads
# all the time. The user-space timestamp cannot see that; the kernel can.
#
# * Looked at only when the inactivity deadline is due (TimeoutCop._expire),
#   never per I/O call: the hot path keeps its single timestamp store, and the
#   look (one getsockopt) runs at most once per timeout period per connection,
#   only for connections that user space already judges idle.
# * Acked bytes, not the queue size: ``tcpi_bytes_acked`` only grows, by exactly
#   what the peer acknowledged. The queue size (SIOCOUTQ) moves both ways --
#   our writes raise it, acks lower it -- so two readings only show progress
#   when we know how many bytes were written in between, which TLS hides.
#   Acked bytes work the same under TLS: the records go through this socket.
# * Only while the kernel holds bytes it has not sent yet (tcpi_notsent_bytes):
#   that is a writer waiting for the peer to read (a closed receive window) or
#   for the network (the congestion window). Bytes sent and merely awaiting
#   their ACK do not count: they are in flight, acked within a round trip, and
#   a reply whose ACK the peer delays must not stretch an idle connection's
#   timeout. With nothing unsent the connection times out as before.
# * A reader that stops reading closes its receive window; the acked count
#   stops (zero-window probes carry no new data), the next look sees the same
#   count and the timeout fires. Progress is only seen at looks, and the first
#   look has nothing to compare with (it counts as progress), so a connection
#   with unsent bytes is timed out between T and 2T after its last progress
#   (its last read or write, or the kernel's last ack); exactly T after its
#   last read or write when the kernel acked nothing since the previous look.
# * Not Linux, not TCP (a Unix socket), an old kernel with a shorter
#   struct tcp_info, or any error: no information, the timeout fires as before.
#
# Offsets in struct tcp_info (linux/tcp.h; checked against the header and by
# experiment): u64 tcpi_bytes_acked at 120, u32 tcpi_notsent_bytes at 144.
_TCP_INFO: Final = getattr(_stdlib_socket, "TCP_INFO", None) if sys.platform == "linux" else None
_TCP_INFO_LEN: Final = 148  # through tcpi_notsent_bytes, the newer of the two
_INET_FAMILIES: Final = frozenset({_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6})


def bytes_acked_if_unsent(sock: trio.socket.SocketType) -> int | None:
    """The kernel's count of bytes the peer acknowledged on ``sock``, if the
    kernel still holds bytes for it that it has not sent.

    Returns:
      ``tcpi_bytes_acked``, or ``None`` when nothing is waiting to be sent or
      the kernel cannot tell (not Linux, not TCP, the socket closed).

    Error handling:
      never raises: an ``OSError`` from ``getsockopt`` means "cannot tell".
    """
    if _TCP_INFO is None or sock.family not in _INET_FAMILIES or sock.fileno() == -1:
        return None
    try:
        info = sock.getsockopt(_stdlib_socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LEN or not struct.unpack_from("=I", info, 144)[0]:
        return None
    acked: int = struct.unpack_from("=Q", info, 120)[0]
    return acked
