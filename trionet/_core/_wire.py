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

__all__ = [
    "DEFAULT_RECEIVE_SIZE",
    "DEFAULT_SCHEDULE_INTERVAL",
    "Owner",
    "Wire",
    "bytes_acked_if_unsent",
    "count_received",
    "count_sent",
    "raw_socket",
]

DEFAULT_RECEIVE_SIZE: Final = 65536
# A schedule point at least every this many wire calls that did not wait (see
# "Checkpoints" below and in docs/design.rst); 1 = every call.
DEFAULT_SCHEDULE_INTERVAL: Final = 16
# Module-level, not a bound method per connection (64 bytes each); honours MockClock.
_now: Final = trio.current_time
# trio's public low-level API, bound once (a module global, not an attribute
# lookup through trio.lowlevel per call).
_checkpoint_if_cancelled: Final = trio.lowlevel.checkpoint_if_cancelled
_cancel_shielded_checkpoint: Final = trio.lowlevel.cancel_shielded_checkpoint
_wait_readable: Final = trio.lowlevel.wait_readable
_wait_writable: Final = trio.lowlevel.wait_writable

# errnos after which the connection is broken (the peer went away), as opposed
# to an errno that means we misused a closed socket.
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})


class Owner(Protocol):
    """What a connection needs from the table that opened it
    (:class:`~trionet._core._table.ConnectionTable`): the counters its I/O
    counts in, the timeout cop, the schedule-point policy's interval and
    count (shared by the processor's connections), and two calls."""

    schedule_interval: int
    unyielded_calls: int

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
        "_shut_wr",
        "_sock",
        "_trio_socket",
        "broken",
        "bytes_received",
        "bytes_sent",
        "id",
    )

    # Declared here (the slots above hold them) so that type checkers see the
    # public fields' types, also where ``Connection`` writes them.
    id: int
    bytes_received: int
    bytes_sent: int
    broken: bool

    def __init__(
        self,
        sock: _stdlib_socket.socket | trio.socket.SocketType,
        conn_id: int,
        owner: Owner,
        client: str | None,
        reservation: Reservation | None,
    ) -> None:
        if not isinstance(sock, _stdlib_socket.socket):
            # A trio socket (an outbound connect's): the wire works on a stdlib
            # socket, so take over its descriptor; the trio object is left
            # closed (fileno() -1) and ``socket`` makes a new one if asked.
            family, kind, proto = sock.family, sock.type, sock.proto
            sock = _stdlib_socket.socket(family, kind, proto, fileno=sock.detach())
        # Non-blocking: recv/send raise BlockingIOError instead of waiting.
        sock.setblocking(False)
        self._sock = sock
        # The trio socket object over it, made when first asked for (``socket``):
        # the hot path never needs one, and it costs ~200 bytes per connection.
        self._trio_socket: trio.socket.SocketType | None = None
        self._shut_wr = False
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
        sock = self._sock
        if sock.fileno() != -1:
            # Wake a task waiting on the descriptor (ClosedResourceError) before
            # the number can be reused, as trio's own socket close does.
            trio.lowlevel.notify_closing(sock)
        sock.close()
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
        linger_abort(self._sock)
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def socket(self) -> trio.socket.SocketType:  # documented with Connection's attributes
        # A trio socket object over the stdlib one, made when first asked for:
        # the connection's own I/O calls the stdlib socket directly.
        tsock = self._trio_socket
        if tsock is None:
            tsock = self._trio_socket = trio.socket.from_stdlib_socket(self._sock)
        return tsock

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
        acked = bytes_acked_if_unsent(self._sock)
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
    #
    # The raw path: the stdlib socket's recv/send are called directly (the
    # socket is non-blocking), and trio.lowlevel.wait_readable/wait_writable
    # run only when the call would block (BlockingIOError). An idle connection
    # waiting to read is this one frame plus trio's wait; a call that does not
    # block allocates nothing but the bytes it returns.
    #
    # Checkpoints ("schedule points on purpose"): every call starts with
    # checkpoint_if_cancelled, so every call is a cancel point, as trio's own
    # stream methods. A call that waited has been a schedule point; one that
    # did not is followed by a real (cancel-shielded) schedule point only when
    # it is the owner's ``schedule_interval``-th call in a row that did not
    # wait -- counted per processor across its connections, so a task pumping
    # data that is always ready yields at least every N calls, and another
    # connection's task waits for at most that many calls of it (the
    # fairness bound, tests/test_wire.py). With N = 1 every call is a full
    # checkpoint, trio's contract for its own streams; the default (16) saves
    # most of a scheduler round trip per call (see docs/design.rst,
    # "Checkpoints"), as asyncio's streams do when data is buffered.
    async def _wire_receive(
        self, max_bytes: int | None = None, flags: int = 0, payload: bool = True
    ) -> bytes:
        """One ``recv`` on the socket, counted; a cancel point, and a schedule
        point when it waited or by the owner's schedule interval (above).

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
            await _checkpoint_if_cancelled()
            sock = self._sock
            waited = False
            while True:
                try:
                    data = _recv(sock, max_bytes, flags)
                except OSError as exc:
                    raise self._translate(exc) from exc
                if data is not None:
                    break
                await _wait_readable(sock)
                waited = True
            owner = self._owner
            if flags:  # MSG_PEEK: the bytes stay queued for the receive that takes them
                await _schedule(owner, waited)
                return data
            counters = owner.counters
            counters.calls_to_read += 1
            if data:
                n = len(data)
                counters.read_bytes += n
                if payload:
                    self.bytes_received += n
                self._last_activity = _now()
            else:
                counters.calls_to_read_nodata += 1
            if waited:
                owner.unyielded_calls = 0
            else:
                calls = owner.unyielded_calls + 1
                if calls >= owner.schedule_interval:
                    owner.unyielded_calls = 0
                    # Shielded: the bytes are taken, a cancellation must not lose them.
                    await _cancel_shielded_checkpoint()
                else:
                    owner.unyielded_calls = calls
            return data
        finally:
            self._receiving = False

    async def _wire_send(self, data: bytes | bytearray | memoryview, payload: bool = True) -> None:
        """``send`` until every byte of ``data`` is in the kernel, counted
        (``payload``: in ``bytes_sent`` too); checkpoints as ``_wire_receive``."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._sending = True
        try:
            if self._shut_wr:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            await _checkpoint_if_cancelled()
            sock = self._sock
            # The common case first: one send() takes it all; no memoryview.
            try:
                n = _send(sock, data)
            except OSError as exc:
                raise self._translate(exc) from exc
            total = len(data) if type(data) is bytes else memoryview(data).nbytes
            owner = self._owner
            counters = owner.counters
            if n:
                # Every send that moves bytes into the kernel is activity (Netty's
                # observeOutput); while one is stuck on a full send buffer, the
                # cop asks the kernel instead ("kernel progress of a send").
                counters.calls_to_write += 1
                counters.write_bytes += n
                if payload:
                    self.bytes_sent += n
                self._last_activity = _now()
            if n < total:
                await self._send_rest(data, n, total, payload)
                owner.unyielded_calls = 0
                return
            calls = owner.unyielded_calls + 1
            if calls >= owner.schedule_interval:
                owner.unyielded_calls = 0
                await _cancel_shielded_checkpoint()
            else:
                owner.unyielded_calls = calls
        finally:
            self._sending = False

    async def _send_rest(
        self, data: bytes | bytearray | memoryview, sent: int, total: int, payload: bool
    ) -> None:
        """The slow part of ``_wire_send``: the socket's send buffer is full;
        wait until it is writable and send the rest, counted."""
        sock = self._sock
        counters = self._owner.counters
        with memoryview(data) as whole, whole.cast("B") as view:
            while sent < total:
                await _wait_writable(sock)
                try:
                    n = _send(sock, view[sent:])
                except OSError as exc:
                    raise self._translate(exc) from exc
                sent += n
                counters.calls_to_write += 1
                counters.write_bytes += n
                if payload:
                    self.bytes_sent += n
                self._last_activity = _now()

    async def _wait_wire_writable(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._sending = True
        try:
            if self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.ClosedResourceError("connection was closed")
            await _wait_writable(self._sock)
        finally:
            self._sending = False

    async def _wire_send_eof(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this connection")
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("connection was closed")
        if self._shut_wr:
            return
        try:
            self._sock.shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise self._translate(exc) from exc
        self._shut_wr = True

    def _translate(self, exc: OSError) -> Exception:
        if self._closed or exc.errno in _CLOSED_ERRNOS:
            return trio.ClosedResourceError("connection was closed")
        self.broken = True
        return trio.BrokenResourceError(f"connection #{self.id} broken: {exc}")

    # ----------------------------------------------------------- socket options
    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """``setsockopt`` on the underlying socket."""
        self._sock.setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> int | bytes:
        """``getsockopt`` on the underlying socket."""
        if buflen is None:
            return self._sock.getsockopt(level, option)
        return self._sock.getsockopt(level, option, buflen)


# The socket calls, as plain functions returning None / 0 when the call would
# block. Catching BlockingIOError in the coroutine itself would make CPython
# materialize the coroutine's frame object for the traceback, and that object
# (272 bytes) stays with the coroutine as long as it lives: in every idle
# connection. Here it is this call's frame, gone when the call returns.
def _recv(sock: _stdlib_socket.socket, max_bytes: int, flags: int) -> bytes | None:
    try:
        # No flags argument unless asked: one argument less per call.
        return sock.recv(max_bytes, flags) if flags else sock.recv(max_bytes)
    except BlockingIOError:
        return None


def _send(sock: _stdlib_socket.socket, data: bytes | bytearray | memoryview) -> int:
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


async def _schedule(owner: Owner, waited: bool) -> None:
    """The schedule-point policy of a call that is not counted inline (a peek)."""
    if waited:
        owner.unyielded_calls = 0
        return
    calls = owner.unyielded_calls + 1
    if calls >= owner.schedule_interval:
        owner.unyielded_calls = 0
        await _cancel_shielded_checkpoint()
    else:
        owner.unyielded_calls = calls


# --------------------------------------------- for code moving bytes itself
# A zero-copy path (splice(2) between two sockets) moves bytes without these
# methods; it reads the raw socket here and reports what it moved, so that
# statistics, byte counts and activity stay exactly what recv/send would give.
def raw_socket(wire: Wire) -> _stdlib_socket.socket:
    """The connection's non-blocking stdlib socket (the one the wire primitive
    calls ``recv``/``send`` on). Wait on it with ``trio.lowlevel.wait_*``."""
    return wire._sock


def count_received(wire: Wire, n: int) -> None:
    """Count one read call that took ``n`` payload bytes off ``wire``'s socket
    (0: it found EOF), as ``_wire_receive`` would: statistics, ``bytes_received``
    and, when ``n`` > 0, activity now."""
    counters = wire._owner.counters
    counters.calls_to_read += 1
    if n:
        counters.read_bytes += n
        wire.bytes_received += n
        wire._last_activity = _now()
    else:
        counters.calls_to_read_nodata += 1


def count_sent(wire: Wire, n: int) -> None:
    """Count one write call that put ``n`` (> 0) payload bytes into ``wire``'s
    socket, as ``_wire_send`` would: statistics, ``bytes_sent``, activity now."""
    counters = wire._owner.counters
    counters.calls_to_write += 1
    counters.write_bytes += n
    wire.bytes_sent += n
    wire._last_activity = _now()


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


def bytes_acked_if_unsent(sock: _stdlib_socket.socket | trio.socket.SocketType) -> int | None:
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
