"""``Connection``: the one stream object a trionet user holds for a TCP (or TLS)
connection, inbound or outbound (ATS ``UnixNetVConnection``, Netty ``Channel``).

It talks to the non-blocking stdlib socket directly instead of wrapping a
``trio.SocketStream`` (or a trio socket): the hot path (``receive_some`` /
``send_all``) calls ``recv``/``send`` and waits with
``trio.lowlevel.wait_readable``/``wait_writable`` only when the call would
block; it is where statistics are counted and activity is recorded for the
inactivity timeout, and doing it here costs a few attribute stores per call
instead of two more layers.

Activity is recorded as a timestamp only; nothing is scheduled per I/O call.
The processor's :class:`~trionet._core._timeouts.TimeoutCop` re-arms lazily
when a deadline comes up (see that module for why).

Two ways to end a connection: :meth:`Connection.aclose` is the orderly one (TLS
``close_notify``, then FIN), :meth:`Connection.abort` the abortive one (RST, no
``close_notify``) for when what was sent must not look complete -- a proxy
passing on a peer's reset, or a session cut by a deadline.

One owner per piece of state: every field is set in the constructor or by
one method of ``Connection`` (its socket end, :class:`~trionet._core._wire.Wire`,
is the base class: the wire primitive, closing, the accounting). What others
need from a connection they declare as a ``typing.Protocol`` in their own
(lower) module -- the cop's ``Timed``, TLS's ``TLSWire``, the PROXY reader's
``HeaderSource`` -- and :class:`~trionet._core._wire.Owner` says what a
connection needs from the table that opened it.
"""

from __future__ import annotations

import math
import socket as _stdlib_socket
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager, suppress
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, final

import trio

from .._base._addr import SocketAddress, unspecified_address
from .._base._checks import check_seconds
from ._access_log import RESERVED_FIELDS, SESSION_ENDS, SessionEnd
from ._timeouts import TimedOut
from ._wire import Owner, Wire

if TYPE_CHECKING:
    from ._table import Reservation
    from ._tls import TLSInfo

__all__ = ["Connection", "Owner", "TimedOut", "TimeoutHook"]

_INF: Final = math.inf
# Module-level, not a bound method per connection (64 bytes each); honours MockClock.
_now: Final = trio.current_time
_NO_TLVS: Final[Mapping[int, bytes]] = MappingProxyType({})
_NO_NOTES: Final[Mapping[str, object]] = MappingProxyType({})

TimeoutHook = Callable[[TimedOut], None]
"""Called instead of closing when a timeout fires (the iocore shim turns it into
a ``VC_EVENT_*_TIMEOUT`` event); ``"evicted"`` always closes."""


class _AwaitedAs(Protocol):
    """What ``Connection``'s plain-def stream methods are to their callers:
    ``async def`` methods (``await conn.receive_some()`` gives ``bytes``).

    Each method carries its declaration here as ``__wrapped__``, which
    ``inspect.signature`` and ``help()`` follow, and so does
    sphinxcontrib-trio's method documenter: it writes ``await`` before a
    coroutine function, and ``docs/reference.rst`` has it render these four
    (``automethod``; Sphinx's own class documenter does not follow
    ``__wrapped__``). Type checkers read the methods' own annotations, which
    say the same: a coroutine of ``bytes``. Nothing changes on the call path.
    """

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def wait_send_all_might_not_block(self) -> None: ...

    async def send_eof(self) -> None: ...


_Method = TypeVar("_Method", bound=Callable[..., Coroutine[Any, Any, object]])


def _awaited_as(
    declaration: Callable[..., Coroutine[Any, Any, object]],
) -> Callable[[_Method], _Method]:
    """Mark a plain function returning a coroutine as behaving like the
    coroutine function ``declaration`` (see :class:`_AwaitedAs`)."""

    def mark(method: _Method) -> _Method:
        method.__wrapped__ = declaration  # type: ignore[attr-defined]
        return method

    return mark


@final
class Connection(Wire, trio.abc.HalfCloseableStream):
    """A TCP connection, inbound (from :meth:`NetProcessor.serve`) or outbound
    (from :meth:`NetProcessor.connect`).

    A :class:`trio.abc.HalfCloseableStream`: ``receive_some``, ``send_all``,
    ``send_eof``, ``wait_send_all_might_not_block``, ``aclose``; plus
    :meth:`close` (at once, no TLS ``close_notify``) and :meth:`abort` (at
    once, with a reset: the peer sees an error, never a clean end).

    Attributes:
      id: unique per processor, increasing.
      remote_address / local_address: the peer's and our
        :data:`SocketAddress`. With the PROXY protocol these are the addresses
        the header carries; the socket's own are then in ``peer_address`` /
        ``sock_address``.
      opened_at: ``trio.current_time()`` when the connection was set up.
      bytes_received / bytes_sent: payload bytes (after TLS decryption).
      timed_out: ``None``, or why the connection was ended by the processor:
        ``"inactivity"``, ``"active"`` or ``"evicted"``.
      broken: ``True`` once an I/O call found the connection broken (the
        peer reset it; for TLS also a close without ``close_notify``). The
        iocore shim reports a reset as ``VC_EVENT_EOS``, as ATS does; this
        tells the two apart.
      tls: a :class:`TLSInfo` for TLS connections, else ``None``.
      socket: the underlying ``trio.socket.SocketType`` (made when first
        asked for).
      inbound: ``True`` for accepted connections.
    """

    __slots__ = (
        "_active_deadline",
        "_idle",
        "_inactivity_timeout",
        "_local_address",
        "_peer",
        "_peer_address",
        "_proxy_tlvs",
        "_remote_address",
        "_scopes",
        "_session",
        "_sock_address",
        "_ssl",
        "_timeout_hook",
        "_tls",
        "inbound",
        "opened_at",
        "timed_out",
    )

    # The TLS I/O below counts plaintext and marks the connection broken in
    # these fields of the socket end (Wire): declared again for type checkers,
    # which otherwise take those writes for new, unannotated attributes.
    bytes_received: int
    bytes_sent: int
    broken: bool

    def __init__(
        self,
        sock: _stdlib_socket.socket | trio.socket.SocketType,
        conn_id: int,
        owner: Owner,
        inbound: bool,
        peer_address: SocketAddress,
        client: str | None = None,
        inactivity_timeout: float | None = None,
        active_timeout: float | None = None,
        scope: trio.CancelScope | None = None,
        reservation: Reservation | None = None,
    ) -> None:
        """Wrap a connected socket (by :meth:`ConnectionTable.open`, which has
        counted it; users get connections from ``serve`` and ``connect``).
        The table passes every argument by position (the accept path runs
        this once per connection; keywords cost a dict lookup each).

        Args:
          peer_address: the socket's peer, as ``accept()`` or the connect
            attempt knew it (free; ``getpeername()`` would be a syscall).
          client: the per-client key the table counted it under, or None.
          inactivity_timeout / active_timeout: seconds, or None; armed now.
          scope: the cancel scope the handler task runs in (cancelled with the
            connection's timeouts), or None.
          reservation: an outbound slot held for this (inbound) connection's
            handler to connect with (see ``_inbound._accept``'s slot pairing).
        """
        super().__init__(sock, conn_id, owner, client, reservation)
        self.inbound: bool = inbound
        now = self._last_activity
        self.opened_at: float = now
        # The peer address comes from accept()/connect() (free); our own address
        # costs a getsockname() syscall and is looked up when first asked for.
        # None in the other three: not relayed by a PROXY header / not asked yet.
        self._peer_address = peer_address
        self._remote_address: SocketAddress | None = None
        self._sock_address: SocketAddress | None = None
        self._local_address: SocketAddress | None = None
        # Shared empty mapping: most connections never carry PROXY TLVs, and an
        # empty dict per connection would cost 64 bytes each.
        self._proxy_tlvs: Mapping[int, bytes] = _NO_TLVS
        self.timed_out: TimedOut | None = None
        self._tls: TLSInfo | None = None
        self._ssl: trio.SSLStream[Any] | None = None
        self._inactivity_timeout = None if inactivity_timeout is None else float(inactivity_timeout)
        self._active_deadline = _INF if active_timeout is None else now + active_timeout
        self._idle = False
        # Scopes cancelled when a timeout fires: the serve() handler's and any
        # enforce_timeouts() blocks. A tuple: shared and free while empty.
        self._scopes: tuple[trio.CancelScope, ...] = () if scope is None else (scope,)
        self._timeout_hook: TimeoutHook | None = None
        # What the handler told the session log (note_session); the shared
        # empty mapping until then.
        self._session: Mapping[str, object] = _NO_NOTES
        # The connection spliced with this one (see trionet._apps._tcp_proxy.splice),
        # whose activity counts as this one's for the inactivity timeout; else None.
        self._peer: Connection | None = None
        # Armed directly at the earliest deadline (cop.arm: a new connection has
        # nothing armed to drop, and _deadline() would compute the same thing).
        active_at = self._active_deadline
        if inactivity_timeout is not None:
            idle_at = now + inactivity_timeout
            owner.cop.arm(self, idle_at if idle_at < active_at else active_at)
        elif active_timeout is not None:
            owner.cop.arm(self, self._active_deadline)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<trionet.Connection #{self.id} {self.remote_address!r} {state}>"

    # ------------------------------------------------------------------ I/O
    # The public I/O methods are plain functions returning the coroutine of the
    # plain-TCP or the TLS implementation, so ``await conn.receive_some()`` runs
    # exactly one coroutine frame, as trio's own SocketStream does: an async
    # wrapper that awaited the implementation would keep a second frame (~250
    # bytes) alive in every idle connection and cost a frame per call.
    # Each carries the ``async def`` it behaves as (see _AwaitedAs, below).
    @_awaited_as(_AwaitedAs.receive_some)
    def receive_some(self, max_bytes: int | None = None) -> Coroutine[Any, Any, bytes]:
        """Wait until data arrives and return some of it
        (:meth:`trio.abc.ReceiveStream.receive_some`).

        Always a cancel point; a schedule point when it had to wait, and
        otherwise at least every ``schedule_interval`` calls of the
        processor's connections (:class:`NetProcessor`; TLS: as the
        transport's calls).

        Args:
          max_bytes: the most bytes to return, >= 1 (default: 65536 on plain
            TCP; TLS picks its own).

        Returns:
          bytes: what arrived; ``b""`` once the peer has ended its side (EOF).

        Raises:
          trio.BusyResourceError: another task is already receiving.
          trio.BrokenResourceError: the connection is broken (reset by the
            peer; for TLS also a close without ``close_notify``):
            :attr:`broken` is then True.
          trio.ClosedResourceError: the connection was closed (by this side,
            a timeout or a shutdown).
          TypeError: ``max_bytes`` is not an int.
          ValueError: ``max_bytes`` is below 1.
        """
        if self._ssl is not None:
            return self._tls_receive_some(max_bytes)
        return self._wire_receive(max_bytes)

    @_awaited_as(_AwaitedAs.send_all)
    def send_all(self, data: bytes | bytearray | memoryview) -> Coroutine[Any, Any, None]:
        """Send every byte of ``data``, waiting while the socket's send buffer
        is full (:meth:`trio.abc.SendStream.send_all`). It returns once the
        kernel holds them all, which is not delivery. Checkpoints as
        :meth:`receive_some`.

        Raises:
          trio.BusyResourceError: another task is already sending (or in
            :meth:`send_eof` / :meth:`wait_send_all_might_not_block`).
          trio.BrokenResourceError: the connection is broken (as for
            :meth:`receive_some`).
          trio.ClosedResourceError: the connection was closed, or
            :meth:`send_eof` was called.
        """
        if self._ssl is not None:
            return self._tls_send_all(data)
        return self._wire_send(data)

    @_awaited_as(_AwaitedAs.wait_send_all_might_not_block)
    def wait_send_all_might_not_block(self) -> Coroutine[Any, Any, None]:
        """Wait until :meth:`send_all` could make progress at once: the socket
        is writable (:meth:`trio.abc.SendStream.wait_send_all_might_not_block`).

        Raises:
          trio.BusyResourceError: another task is already sending.
          trio.BrokenResourceError: the connection is broken.
          trio.ClosedResourceError: the connection was closed.
        """
        if self._ssl is not None:
            return self._ssl.wait_send_all_might_not_block()
        return self._wait_wire_writable()

    @_awaited_as(_AwaitedAs.send_eof)
    def send_eof(self) -> Coroutine[Any, Any, None]:
        """Half-close: tell the peer nothing more will be sent (a FIN), while
        receiving goes on (:meth:`trio.abc.HalfCloseableStream.send_eof`).
        Calling it again does nothing.

        Raises:
          trio.BrokenResourceError: on a TLS connection, which cannot
            half-close (TLS's ``close_notify`` ends both directions); or the
            connection is broken.
          trio.BusyResourceError: another task is sending.
          trio.ClosedResourceError: the connection was closed.
        """
        if self._ssl is not None:
            return self._tls_send_eof()
        return self._wire_send_eof()

    async def _tls_receive_some(self, max_bytes: int | None) -> bytes:
        assert self._ssl is not None
        try:
            data = bytes(await self._ssl.receive_some(max_bytes))
        except trio.BrokenResourceError:
            self.broken = True  # also a close without close_notify (truncation)
            raise
        self.bytes_received += len(data)  # plaintext; the wire counted the records
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

    @property
    def tls(self) -> TLSInfo | None:  # documented with the class's attributes
        return self._tls

    @property
    def proxy_tlvs(self) -> Mapping[int, bytes]:
        """The TLVs of the connection's PROXY protocol v2 header, by type
        (empty without one)."""
        return self._proxy_tlvs

    # ---------------------------------------------------------- session log
    def note_session(self, end: SessionEnd | None = None, **fields: object) -> None:
        """Tell the session log (``NetProcessor(access_log=True)``) about this
        connection's session: how it ended, when the handler knows better than
        trionet (a proxy's ``"upstream_failed"``), and fields for its record
        (``upstream="10.0.0.5:80"``). Later calls add to earlier ones.

        Raises:
          ValueError: ``end`` is not one of the session log's ends, or a
            field would replace one every record has (``client``...) or an
            attribute of :class:`logging.LogRecord` (``name``, ``msg``...).
        """
        if end is not None and end not in SESSION_ENDS:
            raise ValueError(f"end={end!r}: must be one of {', '.join(SESSION_ENDS)}")
        taken = RESERVED_FIELDS.intersection(fields)
        if taken:
            raise ValueError(
                f"{sorted(taken)[0]}=...: reserved (a field of every session record, "
                "or an attribute of logging.LogRecord)"
            )
        notes = dict(self._session)
        notes.update(fields)
        if end is not None:
            notes["end"] = end
        self._session = notes

    @property
    def session_notes(self) -> Mapping[str, object]:
        """What :meth:`note_session` recorded (``end`` among them, if given)."""
        return self._session

    # ------------------------------------------------------------ the seams
    # Set by the lower modules through the Protocols they declare (TLSWire in
    # _tls, HeaderSource in _inbound._proxy_protocol), or by the iocore shim:
    # each field has this one method as its only writer besides __init__.
    def _start_tls(self, stream: trio.SSLStream[Any]) -> None:
        """From now on the connection's I/O goes through ``stream`` (which runs
        over the wire primitive); set before the handshake, so that closing
        during it sends what TLS can."""
        self._ssl = stream

    def _tls_established(self, info: TLSInfo) -> None:
        """The handshake completed: ``conn.tls`` reports ``info``."""
        self._tls = info

    def _relay(
        self,
        source: SocketAddress | None,
        destination: SocketAddress | None,
        tlvs: Mapping[int, bytes],
    ) -> None:
        """What a PROXY protocol header carries: the relayed client's and
        server's addresses (``None``: keep the socket's own) and its TLVs."""
        if source is not None:
            self._remote_address = source
            self._local_address = destination
        if tlvs:  # else keep the shared empty mapping
            self._proxy_tlvs = tlvs

    def _set_timeout_hook(self, hook: TimeoutHook | None) -> None:
        """Call ``hook(why)`` instead of closing when the inactivity or active
        timeout fires (the iocore shim delivers it as an event and keeps the
        connection open); ``None`` restores closing."""
        self._timeout_hook = hook

    @property
    def peer_address(self) -> SocketAddress:
        """The socket's own peer address (as ``accept()`` or the connect
        attempt gave it)."""
        return self._peer_address

    @property
    def remote_address(self) -> SocketAddress:
        """The client's address, which is the socket's peer or the source a
        PROXY protocol header carries."""
        if self._remote_address is None:
            return self._peer_address
        return self._remote_address

    @remote_address.setter
    def remote_address(self, value: SocketAddress) -> None:
        self._remote_address = value

    @property
    def sock_address(self) -> SocketAddress:
        """The socket's own local address (``getsockname()``, asked once, when
        first needed). A socket closed before anyone asked can no longer
        tell: the all-zero address of its family then (``("0.0.0.0", 0)`` or
        ``("::", 0, 0, 0)``), as ATS's ``get_local_addr`` reports it."""
        if self._sock_address is None:
            try:
                self._sock_address = self._sock.getsockname()
            except OSError:
                return unspecified_address(self._sock.family)
        return self._sock_address

    @property
    def local_address(self) -> SocketAddress:
        """Our address as the client sees it, which is the socket's or the
        destination a PROXY protocol header carries."""
        if self._local_address is None:
            return self.sock_address
        return self._local_address

    @local_address.setter
    def local_address(self, value: SocketAddress) -> None:
        self._local_address = value

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
        check_seconds("Connection", "inactivity_timeout", value)
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
        check_seconds("Connection", "active_timeout", value)
        self._active_deadline = _INF if value is None else _now() + value
        self._owner.cop.rearm(self)

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
        # not take the truncated stream for a complete one (trionet._apps._tcp_proxy).
        if self._peer is not None:
            self.abort()
        else:
            self.close()

    # ------------------------------------------------------------- splicing
    @contextmanager
    def _linked(self, peer: Connection) -> Iterator[None]:
        """Spliced with ``peer`` for the block: each side's activity keeps both
        alive (see :meth:`_deadline`)."""
        self._peer = peer
        peer._peer = self
        try:
            yield
        finally:
            # What the session did counts as each side's own activity from now
            # on: the cop's armed deadlines were computed with the pair's latest
            # activity, and an armed deadline must never be later than the real one.
            last = max(self._last_activity, peer._last_activity)
            self._last_activity = peer._last_activity = last
            self._peer = peer._peer = None

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
