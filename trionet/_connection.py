"""``Connection``: the one stream object a trionet user holds for a TCP (or TLS)
connection, inbound or outbound (ATS ``UnixNetVConnection``, Netty ``Channel``).

It talks to the trio socket directly instead of wrapping a ``trio.SocketStream``:
the hot path (``receive_some`` / ``send_all``) is where statistics are counted and
activity is recorded for the inactivity timeout, and doing it here costs a few
attribute stores per call instead of another stream layer.

Activity is recorded as a timestamp only; nothing is scheduled per I/O call.
The processor's :class:`~trionet._timeouts.TimeoutCop` re-arms lazily when a
deadline comes up (see that module for why).

Two ways to end a connection: :meth:`Connection.aclose` is the orderly one (TLS
``close_notify``, then FIN), :meth:`Connection.abort` the abortive one (RST, no
``close_notify``) for when what was sent must not look complete -- a proxy
passing on a peer's reset, or a session cut by a deadline.
"""

from __future__ import annotations

import errno
import math
import socket as _stdlib_socket
import struct
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager, suppress
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, final

import trio

from ._options import _check_seconds

if TYPE_CHECKING:
    from ._stats import Counters
    from ._timeouts import TimeoutCop
    from ._tls import TLSInfo

__all__ = ["Connection", "TimedOut"]

TimedOut = Literal["inactivity", "active", "evicted"]

DEFAULT_RECEIVE_SIZE: Final = 65536
_INF: Final = math.inf
# Module-level, not a bound method per connection (64 bytes each); honours MockClock.
_now: Final = trio.current_time
_NO_TLVS: Final[Mapping[int, bytes]] = MappingProxyType({})

# errnos after which the connection is broken (the peer went away), as opposed
# to an errno that means we misused a closed socket.
_CLOSED_ERRNOS: Final = frozenset({errno.EBADF, errno.ENOTSOCK})
# struct linger {l_onoff=1, l_linger=0}: close() then discards unsent data and
# sends RST instead of FIN (an abortive close).
_LINGER_ABORT: Final = struct.pack("ii", 1, 0)

Address = Any  # what getpeername() returns: (host, port) or (host, port, flow, scope)


class _Owner:
    """What a connection needs from whoever created it (a NetProcessor):
    counters, the timeout cop, and a release callback run exactly once on close.
    Kept as a tiny interface so the connection does not import the server."""

    __slots__ = ("cop", "counters", "release")

    def __init__(
        self,
        counters: Counters,
        cop: TimeoutCop,
        release: Callable[[Connection], None],
    ) -> None:
        self.counters = counters
        self.cop = cop
        self.release = release


@final
class Connection(trio.abc.HalfCloseableStream):
    """A TCP connection, inbound (from :meth:`NetProcessor.serve`) or outbound
    (from :meth:`NetProcessor.connect`).

    A :class:`trio.abc.HalfCloseableStream`: ``receive_some``, ``send_all``,
    ``send_eof``, ``wait_send_all_might_not_block``, ``aclose``; plus
    :meth:`close` (at once, no TLS ``close_notify``) and :meth:`abort` (at
    once, with a reset: the peer sees an error, never a clean end).

    Attributes:
      id: unique per processor, increasing.
      remote_address / local_address: the peer's and our address. With the
        PROXY protocol these are the addresses the header carries; the socket's
        own are then in ``peer_address`` / ``sock_address``.
      opened_at: ``trio.current_time()`` when the connection was set up.
      bytes_received / bytes_sent: payload bytes (after TLS decryption).
      timed_out: ``None``, or why the connection was ended by the processor:
        ``"inactivity"``, ``"active"`` or ``"evicted"``.
      broken: ``True`` once an I/O call found the connection broken (the
        peer reset it; for TLS also a close without ``close_notify``). The
        iocore shim reports a reset as ``VC_EVENT_EOS``, as ATS does; this
        tells the two apart.
      tls: a :class:`TLSInfo` for TLS connections, else ``None``.
      socket: the underlying ``trio.socket.SocketType``.
      inbound: ``True`` for accepted connections.
    """

    __slots__ = (
        "_acked_seen",
        "_active_deadline",
        "_client_key",
        "_closed",
        "_cop_armed",
        "_cop_gen",
        "_idle",
        "_inactivity_timeout",
        "_last_activity",
        "_local_address",
        "_owner",
        "_peer",
        "_peer_address",
        "_receiving",
        "_remote_address",
        "_reserved",
        "_scopes",
        "_sending",
        "_sock_address",
        "_ssl",
        "_timeout_hook",
        "broken",
        "bytes_received",
        "bytes_sent",
        "id",
        "inbound",
        "opened_at",
        "proxy_tlvs",
        "socket",
        "timed_out",
        "tls",
    )

    def __init__(
        self,
        sock: trio.socket.SocketType,
        *,
        conn_id: int,
        owner: _Owner,
        inbound: bool,
        peer_address: Address = None,
    ) -> None:
        self.socket = sock
        self.id = conn_id
        self.inbound = inbound
        self._owner = owner
        now = _now()
        self.opened_at = now
        self._last_activity = now
        # The peer address comes from accept()/connect() (free); our own address
        # costs a syscall and is looked up when first asked for.
        self._peer_address: Address = peer_address
        self._remote_address: Address = None
        # Our own address costs a getsockname() syscall: asked for lazily.
        self._sock_address: Address = None
        self._local_address: Address = None
        # Shared empty mapping: most connections never carry PROXY TLVs, and an
        # empty dict per connection would cost 64 bytes each.
        self.proxy_tlvs: Mapping[int, bytes] = _NO_TLVS
        self.bytes_received = 0
        self.bytes_sent = 0
        self.timed_out: TimedOut | None = None
        self.tls: TLSInfo | None = None
        self._ssl: trio.SSLStream[Any] | None = None
        self._inactivity_timeout: float | None = None
        self._active_deadline = _INF
        self._cop_gen = 0
        self._cop_armed = False
        self._acked_seen = -1  # tcpi_bytes_acked at the cop's last look; -1: none yet
        self._idle = False
        self._closed = False
        self._client_key: str | None = None
        self._receiving = False
        self._sending = False
        # Scopes cancelled when a timeout fires: the serve() handler's and any
        # enforce_timeouts() blocks. A tuple: shared and free while empty.
        self._scopes: tuple[trio.CancelScope, ...] = ()
        self._timeout_hook: Callable[[TimedOut], None] | None = None
        self.broken = False
        # The connection spliced with this one (see trionet._proxy.splice), whose
        # activity counts as this one's for the inactivity timeout; else None.
        self._peer: Connection | None = None
        # An outbound slot the accept loop reserved with this inbound connection
        # for its handler's connect (NetProcessor.connect(for_connection=...)):
        # taken once by that connect, or given back once when this one closes.
        self._reserved = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<trionet.Connection #{self.id} {self.remote_address!r} {state}>"

    # ------------------------------------------------------------------ I/O
    # The public I/O methods are plain functions returning the coroutine of the
    # plain-TCP or the TLS implementation, so ``await conn.receive_some()`` runs
    # exactly one coroutine frame, as trio's own SocketStream does: an async
    # wrapper that awaited the implementation would keep a second frame (~250
    # bytes) alive in every idle connection and cost a frame per call.
    def receive_some(self, max_bytes: int | None = None) -> Coroutine[Any, Any, bytes]:
        if self._ssl is not None:
            return self._tls_receive_some(max_bytes)
        return self._raw_receive_some(max_bytes)

    def send_all(self, data: bytes | bytearray | memoryview) -> Coroutine[Any, Any, None]:
        if self._ssl is not None:
            return self._tls_send_all(data)
        return self._raw_send_all(data)

    def wait_send_all_might_not_block(self) -> Coroutine[Any, Any, None]:
        if self._ssl is not None:
            return self._ssl.wait_send_all_might_not_block()
        return self._raw_wait_send_all_might_not_block()

    def send_eof(self) -> Coroutine[Any, Any, None]:
        if self._ssl is not None:
            return self._tls_send_eof()
        return self._raw_send_eof()

    async def _tls_receive_some(self, max_bytes: int | None) -> bytes:
        assert self._ssl is not None
        try:
            data = bytes(await self._ssl.receive_some(max_bytes))
        except trio.BrokenResourceError:
            self.broken = True  # also a close without close_notify (truncation)
            raise
        self.bytes_received += len(data)  # plaintext; see trionet._tls._RawTransport
        return data

    async def _tls_send_all(self, data: bytes | bytearray | memoryview) -> None:
        assert self._ssl is not None
        try:
            await self._ssl.send_all(data)
        except trio.BrokenResourceError:
            self.broken = True
            raise
        self.bytes_sent += memoryview(data).nbytes  # plaintext, as above

    async def _tls_send_eof(self) -> None:
        # TLS has no half-close: close_notify ends both directions.
        await trio.lowlevel.checkpoint()
        raise trio.BrokenResourceError("a TLS connection cannot half-close (send_eof)")

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._ssl is not None and self.timed_out is None:
            # Send close_notify if we can do so promptly; never hang on a dead peer.
            with trio.move_on_after(1.0) as scope:
                scope.shield = True
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._ssl.aclose()
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close the socket at once (no TLS close_notify) and release the
        connection's slot. Idempotent; safe from synchronous code."""
        if self._closed:
            return
        self._closed = True
        self.socket.close()
        self._owner.release(self)

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
        # The peer may have reset first; closing is all that is left then.
        with suppress(OSError):
            self.socket.setsockopt(
                _stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, _LINGER_ABORT
            )
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peer_address(self) -> Address:
        """The socket's own peer address (``getpeername()``, cached; None if
        the socket was already closed or reset when first asked)."""
        if self._peer_address is None:
            self._peer_address = _peername(self.socket)
        return self._peer_address

    @property
    def remote_address(self) -> Address:
        """The client's address: the socket's peer, or the source a PROXY
        protocol header carries."""
        if self._remote_address is None:
            return self.peer_address
        return self._remote_address

    @remote_address.setter
    def remote_address(self, value: Address) -> None:
        self._remote_address = value

    @property
    def sock_address(self) -> Address:
        """The socket's own local address (``getsockname()``; None if the socket
        was closed before anyone asked)."""
        if self._sock_address is None:
            try:
                self._sock_address = self.socket.getsockname()
            except OSError:
                return None
        return self._sock_address

    @property
    def local_address(self) -> Address:
        """Our address as the client sees it: the socket's, or the destination
        a PROXY protocol header carries."""
        if self._local_address is None:
            return self.sock_address
        return self._local_address

    @local_address.setter
    def local_address(self, value: Address) -> None:
        self._local_address = value

    # --------------------------------------------------- raw socket I/O (TCP)
    # These are also the transport under trio.SSLStream for TLS connections, so
    # handshake and record bytes count as activity exactly like plain bytes.
    async def _raw_receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
            raise TypeError(f"max_bytes={max_bytes!r}: must be an int")
        elif max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes!r}: must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        self._receiving = True
        try:
            try:
                data = await self.socket.recv(max_bytes)
            except OSError as exc:
                raise self._translate(exc) from exc
        finally:
            self._receiving = False
        counters = self._owner.counters
        counters.calls_to_read += 1
        if data:
            n = len(data)
            counters.read_bytes += n
            self.bytes_received += n
            self._last_activity = _now()
        else:
            counters.calls_to_read_nodata += 1
        return data

    async def _raw_send_all(self, data: bytes | bytearray | memoryview) -> None:
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
                    self.bytes_sent += n
                    self._last_activity = _now()
        finally:
            self._sending = False

    async def _raw_wait_send_all_might_not_block(self) -> None:
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

    async def _raw_send_eof(self) -> None:
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

    # ---------------------------------------------------------------- timeouts
    @property
    def inactivity_timeout(self) -> float | None:
        """Seconds without activity after which the connection is timed out.

        Activity is a receive that returns data, a send that moves bytes into
        the kernel, and (Linux, TCP) the kernel delivering bytes it has not
        sent yet: checked only when the deadline comes, so with bytes unsent
        the timeout fires between T and 2T after the last progress. While the
        connection is spliced with another (:func:`~trionet.splice`), activity
        on either one counts for both (HAProxy's ``timeout tunnel``). Setting
        it restarts the idle clock; ``None`` cancels it (ATS
        ``set_inactivity_timeout`` / ``cancel_inactivity_timeout``).
        """
        return self._inactivity_timeout

    @inactivity_timeout.setter
    def inactivity_timeout(self, value: float | None) -> None:
        _check_seconds("Connection", "inactivity_timeout", value)
        self._inactivity_timeout = None if value is None else float(value)
        self._last_activity = _now()
        self._owner.cop.rearm(self)

    @property
    def active_timeout(self) -> float | None:
        """Seconds the connection may still live, counted from when it was set,
        whatever its activity; ``None`` cancels it (ATS ``set_active_timeout``)."""
        if self._active_deadline == _INF:
            return None
        return max(0.0, self._active_deadline - _now())

    @active_timeout.setter
    def active_timeout(self, value: float | None) -> None:
        _check_seconds("Connection", "active_timeout", value)
        self._active_deadline = _INF if value is None else _now() + value
        self._owner.cop.rearm(self)

    @property
    def last_activity(self) -> float:
        """``trio.current_time()`` of the last receive or send that moved bytes,
        or of the timeout check that found the kernel still delivering this
        connection's queued bytes to a reading peer (on a spliced connection,
        after the splice: on either side of it)."""
        return self._last_activity

    def _deadline(self) -> tuple[float, TimedOut]:
        """The earliest pending deadline and which timeout it belongs to."""
        idle = self._inactivity_timeout
        last = self._last_activity
        # Spliced with a peer: the session is idle only when neither side moved
        # a byte (HAProxy's `timeout tunnel`), so the later activity counts.
        # Read here, when a deadline comes up -- no cost per I/O call.
        peer = self._peer
        if peer is not None and peer._last_activity > last:
            last = peer._last_activity
        inactive_at = _INF if idle is None else last + idle
        if self._active_deadline <= inactive_at:
            return self._active_deadline, "active"
        return inactive_at, "inactivity"

    def _kernel_progressed(self, now: float) -> bool:
        """Called by the cop, only when the inactivity deadline is due: while
        the kernel holds bytes of ours it has not sent, has the peer acked more
        since the cop's last look? That counts as activity at ``now``.

        Returns:
          ``True`` if it progressed (``last_activity`` is then ``now``); ``False``
          when it did not, nothing is unsent, or the kernel cannot tell. See
          "kernel progress of a send" at the end of this module.
        """
        acked = _bytes_acked_if_unsent(self.socket)
        if acked is None:
            return False
        seen, self._acked_seen = self._acked_seen, acked
        if acked == seen:
            return False
        self._last_activity = now
        return True

    @contextmanager
    def enforce_timeouts(self) -> Iterator[trio.CancelScope]:
        """Run a block under this connection's timeouts.

        When the inactivity or active timeout passes (or the connection is
        evicted), the block is cancelled, the connection closed, and
        :attr:`timed_out` says why; the block then exits quietly, like
        ``trio.move_on_after`` (check ``conn.timed_out`` afterwards). Handlers run
        by :meth:`NetProcessor.serve` are already inside such a block.
        """
        with trio.CancelScope() as scope:
            if self.timed_out is not None:
                scope.cancel()
            self._scopes += (scope,)
            try:
                yield scope
            finally:
                self._scopes = tuple(s for s in self._scopes if s is not scope)

    def _fire_timeout(self, why: TimedOut) -> None:
        """Called by the cop (or the eviction logic): end the connection."""
        if self._closed:
            return
        counters = self._owner.counters
        if why == "inactivity":
            counters.inactivity_timeouts += 1
        elif why == "active":
            counters.active_timeouts += 1
        else:
            counters.keep_alive_evictions += 1
        if self._timeout_hook is not None and why != "evicted":
            # The iocore shim turns timeouts into VC_EVENT_*_TIMEOUT events and
            # keeps the connection open (ATS semantics); it re-arms itself.
            self._timeout_hook(why)
            return
        self.timed_out = why
        # Cancel first: the blocked task is rescheduled with Cancelled now, so
        # closing the socket next cannot turn it into a ClosedResourceError.
        for scope in self._scopes:
            scope.cancel()
        # A spliced connection is cut mid-session: abort it, so its peer does
        # not take the truncated stream for a complete one (trionet._proxy).
        if self._peer is not None:
            self.abort()
        else:
            self.close()

    # ------------------------------------------------------------- splicing
    def _link(self, peer: Connection) -> None:
        """Spliced with ``peer``: each side's activity keeps both alive (see
        :meth:`_deadline`) until :meth:`_unlink`."""
        self._peer = peer
        peer._peer = self

    def _unlink(self) -> None:
        """End the link made by :meth:`_link` (either side may call it)."""
        peer = self._peer
        if peer is None:
            return
        # What the session did counts as each side's own activity from now on:
        # the cop's armed deadlines were computed with the pair's latest
        # activity, and an armed deadline must never be later than the real one.
        last = max(self._last_activity, peer._last_activity)
        self._last_activity = peer._last_activity = last
        self._peer = peer._peer = None

    def _take_reserved_slot(self, owner: _Owner) -> bool:
        """Hand the outbound slot reserved with this connection to a connect of
        the same processor (``owner``); True if there was one. Exactly once:
        after this (or after close) there is none."""
        if not self._reserved or self._closed or owner is not self._owner:
            return False
        self._reserved = False
        return True

    # -------------------------------------------------------- keep-alive idle
    @property
    def idle(self) -> bool:
        """Mark a keep-alive connection as idle between requests. With
        ``NetProcessor(max_idle_connections=N)``, the oldest idle connections are
        evicted (``timed_out == "evicted"``) when more than N are idle."""
        return self._idle

    @idle.setter
    def idle(self, value: bool) -> None:
        value = bool(value)
        if value != self._idle and not self._closed:
            self._idle = value
            self._owner.cop.set_idle(self, value)


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


def _bytes_acked_if_unsent(sock: trio.socket.SocketType) -> int | None:
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


def _peername(sock: trio.socket.SocketType) -> Address:
    if sock.fileno() == -1:
        return None
    try:
        return sock.getpeername()
    except OSError:
        return None
