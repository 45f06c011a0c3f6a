"""A TCP proxy: bytes pumped both ways between two streams, with backpressure
and half-close (the job ATS's Net module exists for).

:func:`splice` is the pump, usable between any two half-closeable streams;
:class:`TcpProxy` is a ``serve()`` handler that connects upstream for each
inbound connection and splices the two. ``examples/tcp_proxy.py`` and
``trionet proxy`` are both built on it.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Final, Literal, final

import trio

from .._base._addr import host_problem
from .._base._checks import check_bool, check_int, is_int
from .._base._errors import ConnectError
from .._base._options import ConnectOptions
from .._base._sockopt import linger_abort
from .._core._connection import Connection
from .._processor import NetProcessor
from ._zero_copy import kernel_pumps

__all__ = ["ProxyStatistics", "SpliceResult", "TcpProxy", "splice"]

logger = logging.getLogger("trionet.proxy")

# One read's worth per direction is all a splice ever holds: the pump does not
# read again until send_all has handed the previous chunk to the kernel, so a
# slow receiver throttles a fast sender through TCP flow control (ATS's VIO
# watermarks, Netty's autoRead=false), with no unbounded buffer in between.
DEFAULT_CHUNK: Final = 64 * 1024
# A receive allocates its whole size before the kernel says how much there is,
# and one read never returns more than the socket's receive buffer holds (a few
# MiB at most on Linux defaults): a bigger chunk only costs memory per session.
MAX_CHUNK: Final = 16 * 1024 * 1024

Ending = Literal["eof", "reset"]

# What a splice does at each kind of ending -- the proxy must never make a
# truncated stream look complete (HAProxy behaves the same way):
#
# * A clean EOF from one side is forwarded as a half-close (send_eof) and the
#   other direction keeps flowing until its own EOF: no byte is lost.
# * TLS cannot half-close (close_notify ends the whole TLS session, and OpenSSL
#   3.0 drops what it reads after sending one). When the destination of an EOF
#   is TLS, the EOF waits: the other direction runs to its end, every byte of it
#   delivered, and the caller's graceful close then sends close_notify. Ending
#   the splice at once instead lost the rest of a TLS client's upload: 64 KiB
#   of a 2 MiB request reached the upstream, followed by a normal EOF.
# * A reset (or a stream closed under us) ends both directions, and both
#   streams are aborted: the other peer gets RST, not FIN, and a TLS peer gets
#   no close_notify, TLS's authenticated "that was all".
# * A cut -- the splice cancelled by a timeout or a server shutdown's grace
#   deadline, or any error escaping it -- aborts both streams the same way.


@final
@dataclass(frozen=True, slots=True)
class SpliceResult:
    """How a :func:`splice` ended.

    Attributes:
      a_to_b / b_to_a: bytes copied in each direction.
      ending: ``"eof"`` when both directions ended with an orderly EOF,
        ``"reset"`` when either side broke (reset, or closed under us); both
        streams were then aborted.
      zero_copy: ``True`` when the bytes were moved inside the kernel
        (Linux ``splice(2)``), ``False`` when they were copied through the
        process (TLS on either side, streams that are not plain-TCP
        :class:`Connection` objects, another platform, or switched off).
    """

    a_to_b: int
    b_to_a: int
    ending: Ending
    zero_copy: bool = False


@final
class _Pump:
    """One direction of a splice: read from ``src``, write to ``dst``, then
    forward the EOF with ``send_eof`` (half-close).

    ``ending`` is None while it runs, then "eof" (everything copied, the EOF
    forwarded or, for a TLS destination, left to the caller's close) or "reset".
    """

    __slots__ = ("chunk", "copied", "dst", "ending", "src")

    def __init__(
        self, src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream, chunk: int
    ) -> None:
        self.src, self.dst, self.chunk = src, dst, chunk
        self.copied = 0
        self.ending: Ending | None = None

    async def run(self, cancel_both: trio.CancelScope) -> None:
        try:
            while data := await self.src.receive_some(self.chunk):
                await self.dst.send_all(data)
                self.copied += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A reset (or a close under us) on either side: the other direction
            # has nowhere to go, and splice() aborts both streams.
            logger.debug("splice direction broke: %r", exc)
            self.ending = "reset"
            cancel_both.cancel()
            return
        self.ending = "eof"
        try:
            await self.dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The destination cannot half-close (TLS), or is gone. Every byte
            # was delivered; the EOF goes out with the caller's graceful close
            # once the other direction has ended (cancelling that direction now
            # would lose its data). If the destination was really reset, the
            # other direction, which reads from it, ends with "reset" itself.
            logger.debug("splice: send_eof not possible (%r); EOF left to the close", exc)


async def splice(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    chunk: int = DEFAULT_CHUNK,
    *,
    zero_copy: bool = True,
) -> SpliceResult:
    """Copy bytes ``a → b`` and ``b → a`` until both directions have ended.

    When one side sends EOF, it is forwarded to the other side with
    ``send_eof`` and the opposite direction keeps flowing (TCP half-close), so
    request/response protocols that half-close work through the proxy. A side
    that cannot half-close (a TLS :class:`Connection`) gets the EOF when the
    caller closes it after the splice: the opposite direction still runs to
    its end first, so no byte is lost.

    An abort stays an abort: when either side resets, or the splice is cut
    (cancelled by a timeout or a server shutdown), both streams are aborted --
    the peers see a reset (no TLS ``close_notify``), never a clean end that
    would make a truncated stream look complete.

    While two :class:`Connection` objects are spliced, activity on either one
    counts for both toward the inactivity timeout (HAProxy's ``timeout
    tunnel``): a client reading a slow download is not cut because the
    upstream side has only been waiting for the client to read.

    Zero-copy: between two plain-TCP :class:`Connection` objects on Linux the
    bytes never enter the process: ``splice(2)`` moves them from one socket
    into a pipe and from the pipe into the other socket, inside the kernel
    (one 1 MiB pipe per direction -- less if ``fs.pipe-max-size`` is lower --
    from a pool kept per trio run). Everything above holds the same way, and
    statistics, byte counts and activity are counted as for ``receive_some``
    / ``send_all``. Where it does not apply (TLS on either side, other
    streams, no ``os.splice``, no descriptors left for the pipes) bytes are
    copied through the process; :attr:`SpliceResult.zero_copy` says which way
    ran.

    Args:
      a, b: the two streams (e.g. a client connection and an upstream one).
      chunk: the most bytes read at once, and so held in memory, per direction
        (zero-copy holds none in the process; its pipes are in the kernel).
      zero_copy: ``False`` copies through the process even where
        ``splice(2)`` could be used.

    Returns:
      A :class:`SpliceResult` with the bytes copied each way.

    Resource handling:
      After a clean end neither stream is closed: the caller owns both
      (``async with``), and its close sends any EOF still due. After a reset
      or a cut both are aborted (:meth:`Connection.abort`; other streams get
      ``SO_LINGER`` 0 on a socket underneath if there is one, then
      :func:`trio.aclose_forcefully`), so the caller's close does nothing more.
      At most ``chunk`` bytes per direction are in flight in the process.
      Zero-copy pipes go back to the pool when the session ends with them
      empty; a pipe still holding bytes (a reset or a cut mid-transfer) is
      closed. The pool keeps at most 16 idle pipes and closes them when the
      trio run ends.

    Error handling:
      ``BrokenResourceError`` / ``ClosedResourceError`` on either side end
      both directions and are reported as ``ending="reset"``, not raised.
      Cancellation (e.g. a connection's timeout) propagates as usual.

    Raises:
      ValueError: ``chunk`` is not a positive int, or ``zero_copy`` not a
        bool.
    """
    if not is_int(chunk) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be an int >= 1")
    check_bool("splice", "zero_copy", zero_copy)
    kernel = kernel_pumps(a, b) if zero_copy else None
    forward, backward = kernel or (_Pump(a, b, chunk), _Pump(b, a, chunk))
    # While two Connections are spliced, each one's activity keeps both alive.
    linked: AbstractContextManager[None] = nullcontext()
    if isinstance(a, Connection) and isinstance(b, Connection):
        linked = a._linked(b)
    with linked:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward.run, nursery.cancel_scope)
                nursery.start_soon(backward.run, nursery.cancel_scope)
        except BaseException:
            await _abort(a, b)  # cut short: cancelled, or an error escaped
            raise
    if forward.ending == "reset" or backward.ending == "reset":
        await _abort(a, b)
        return SpliceResult(forward.copied, backward.copied, "reset", kernel is not None)
    return SpliceResult(forward.copied, backward.copied, "eof", kernel is not None)


async def _abort(*streams: trio.abc.AsyncResource) -> None:
    """Abortive close of each stream (see :meth:`Connection.abort`); safe
    while cancelled (a Connection's abort has no checkpoint, the others'
    forceful close is shielded so that every stream gets it)."""
    for stream in streams:
        if isinstance(stream, Connection):
            stream.abort()
            continue
        # Any other stream: a reset from the socket underneath if there is one
        # (a trio.SocketStream, possibly under SSLStreams), and a close that
        # sends nothing more (aclose_forcefully: no close_notify).
        inner: object = stream
        while isinstance(inner, trio.SSLStream):
            inner = inner.transport_stream
        if isinstance(inner, trio.SocketStream):
            linger_abort(inner.socket)
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


@final
@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """What a :class:`TcpProxy` has done (bytes are in the processor's
    ``read_bytes`` / ``write_bytes``, which count both sides).

    Attributes:
      sessions: client connections handled.
      sessions_open: sessions currently splicing (a gauge).
      upstream_failures: sessions whose upstream connect failed (refused,
        unresolvable, throttled), including ``upstream_timeouts``.
      upstream_timeouts: upstream connects that hit the connect timeout.
      resets: sessions ended by a reset (or close) on either side; the other
        side was aborted.
      timeouts: sessions ended by an inactivity or active timeout on either
        side; both sides were aborted.
      cut: sessions cut by cancellation, e.g. a server shutdown's grace
        deadline; both sides were aborted.
    """

    sessions: int = 0
    sessions_open: int = 0
    upstream_failures: int = 0
    upstream_timeouts: int = 0
    resets: int = 0
    timeouts: int = 0
    cut: int = 0


@final
class TcpProxy:
    """A ``serve()`` handler that forwards each client connection upstream.

    ``await nursery.start(net.serve, TcpProxy(net, "10.0.0.5", 80), 8080)``

    For every client connection it connects to ``host:port`` through
    ``net.connect`` (so the upstream connection counts toward
    ``max_connections`` and has its own timeouts) and :func:`splice` joins the
    two until both directions have ended.

    Slots: it has ``reserve_outbound_slot = True``, so the processor serving
    it admits a client only when there is a slot for its upstream connection
    too, and keeps that slot for it: at ``max_connections`` clients wait in
    the backlog (``throttle="pause"``) or are refused at accept (``"close"``),
    never accepted and then dropped for want of an upstream slot. Serve it on
    the processor it connects through; on another one, set the attribute to
    ``False`` (the reservation would be made where nothing takes it).

    Args:
      net: the processor that connects upstream (usually the one serving).
      host, port: the upstream server.
      options: :class:`ConnectOptions` for the upstream side: connect timeout,
        inactivity/active timeouts, socket options, TLS.
      chunk: the most bytes held in memory per direction, 1..16 MiB (with
        zero-copy none are: the bytes stay in the kernel).
      zero_copy: move the bytes inside the kernel with Linux ``splice(2)``
        where both sides are plain TCP (see :func:`splice`); ``False``
        copies them through the process always.

    Raises:
      TypeError: an argument of the wrong type (``net`` not a
        :class:`NetProcessor`, ``host`` not a str...), named with its value.
      ValueError: a value :meth:`NetProcessor.connect` would refuse, named
        with its value: checked here, so that a bad upstream fails at
        start-up rather than in every session (``host`` as ``connect()``
        checks it: no control characters, valid IDNA; ``port`` 1..65535).

    Error handling:
      An upstream that cannot be reached (``ConnectError``: refused,
      unresolvable, connect timeout, throttled) is logged at INFO and
      counted; the client connection is then closed. Resets end the session
      quietly (counted), passing the abort on to the other side. Timeouts
      (the session idle on both sides for a side's inactivity timeout, or an
      active timeout) and a shutdown's grace deadline cut the session: both
      sides are aborted.
    """

    def __init__(
        self,
        net: NetProcessor,
        host: str,
        port: int,
        options: ConnectOptions | None = None,
        *,
        chunk: int = DEFAULT_CHUNK,
        zero_copy: bool = True,
    ) -> None:
        o = "TcpProxy"
        if not isinstance(net, NetProcessor):
            raise TypeError(f"{o}.net={net!r}: expected a trionet.NetProcessor")
        if not isinstance(host, str):
            raise TypeError(f"{o}.host={host!r}: expected a str (a host name or an IP address)")
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"{o}.host={host!r}: not a valid host name or address: {problem}")
        check_int(o, "port", port, 1, 65535)
        if options is not None and not isinstance(options, ConnectOptions):
            raise TypeError(f"{o}.options={options!r}: expected ConnectOptions or None")
        check_int(o, "chunk", chunk, 1, MAX_CHUNK)
        check_bool(o, "zero_copy", zero_copy)
        self.net: NetProcessor = net
        self.host: str = host
        self.port: int = int(port)
        self.options = options
        self.chunk = chunk
        self.zero_copy: bool = zero_copy
        self.reserve_outbound_slot = True
        self._counts = dict.fromkeys(ProxyStatistics.__slots__, 0)

    def __repr__(self) -> str:
        return f"<trionet.TcpProxy to {self.host}:{self.port}>"

    def statistics(self) -> ProxyStatistics:
        """A frozen snapshot of the proxy's session counts."""
        return ProxyStatistics(**self._counts)

    async def __call__(self, client: Connection) -> None:
        counts = self._counts
        counts["sessions"] += 1
        upstream = await self._connect(client)
        if upstream is None:
            return
        counts["sessions_open"] += 1
        cancelled = False
        try:
            # A clean end closes the upstream gracefully here (and the client
            # after the handler); after a reset or a cut, splice() has already
            # aborted both and these closes do nothing.
            async with upstream:
                with upstream.enforce_timeouts():
                    result = await splice(client, upstream, self.chunk, zero_copy=self.zero_copy)
                    counts["resets"] += result.ending == "reset"
        except trio.Cancelled:
            cancelled = True
            raise
        finally:
            counts["sessions_open"] -= 1
            if client.timed_out is not None or upstream.timed_out is not None:
                counts["timeouts"] += 1
            elif cancelled:
                counts["cut"] += 1

    async def _connect(self, client: Connection) -> Connection | None:
        try:
            return await self.net.connect(self.host, self.port, self.options, for_connection=client)
        except ConnectError as exc:
            self._counts["upstream_failures"] += 1
            self._counts["upstream_timeouts"] += isinstance(exc, TimeoutError)
            logger.info("connection #%d from %r: %s", client.id, client.remote_address, exc)
            return None
