"""A TCP proxy: bytes pumped both ways between two streams, with backpressure
and half-close (the job ATS's Net module exists for).

:func:`splice` is the pump, usable between any two half-closeable streams;
:class:`TcpProxy` is a ``serve()`` handler that connects upstream for each
inbound connection and splices the two. ``examples/tcp_proxy.py`` and
``trionet proxy`` are both built on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, final

import trio

from ._connection import Connection
from ._errors import ConnectError
from ._options import ConnectOptions, _check_int
from ._resolve import host_problem

if TYPE_CHECKING:
    from ._server import NetProcessor

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


@final
@dataclass(frozen=True, slots=True)
class SpliceResult:
    """How a :func:`splice` ended.

    Attributes:
      a_to_b / b_to_a: bytes copied in each direction.
      ending: ``"eof"`` when both directions ended with an orderly EOF,
        ``"reset"`` when either side broke (reset, or closed under us).
    """

    a_to_b: int
    b_to_a: int
    ending: Ending


@final
class _Pump:
    """One direction of a splice: read from ``src``, write to ``dst``, then
    forward the EOF with ``send_eof`` (half-close)."""

    __slots__ = ("broken", "chunk", "copied", "dst", "src")

    def __init__(
        self, src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream, chunk: int
    ) -> None:
        self.src, self.dst, self.chunk = src, dst, chunk
        self.copied = 0
        self.broken = False

    async def run(self, cancel_both: trio.CancelScope) -> None:
        try:
            while data := await self.src.receive_some(self.chunk):
                await self.dst.send_all(data)
                self.copied += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A reset (or a close under us, e.g. a timeout) on either side ends
            # the whole splice: the other direction has nowhere to go.
            logger.debug("splice direction broke: %r", exc)
            self.broken = True
            cancel_both.cancel()
            return
        try:
            await self.dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The destination cannot half-close (TLS has no half-close: its
            # close_notify ends both directions) or is already gone. The EOF
            # was orderly, so end the splice without calling it a reset; the
            # caller's close then sends the TLS close_notify.
            logger.debug("splice: send_eof not possible (%r); ending both directions", exc)
            cancel_both.cancel()


async def splice(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    chunk: int = DEFAULT_CHUNK,
) -> SpliceResult:
    """Copy bytes ``a → b`` and ``b → a`` until both directions have ended.

    When one side sends EOF, it is forwarded to the other side with
    ``send_eof`` and the opposite direction keeps flowing (TCP half-close), so
    request/response protocols that half-close work through the proxy.

    Args:
      a, b: the two streams (e.g. a client connection and an upstream one).
      chunk: the most bytes read at once, and so held in memory, per direction.

    Returns:
      A :class:`SpliceResult` with the bytes copied each way.

    Resource handling:
      Neither stream is closed: the caller owns both (``async with``). At most
      ``chunk`` bytes per direction are in flight in the process.

    Error handling:
      ``BrokenResourceError`` / ``ClosedResourceError`` on either side end
      both directions and are reported as ``ending="reset"``, not raised.
      Cancellation (e.g. a connection's timeout) propagates as usual.

    Raises:
      ValueError: ``chunk`` is not a positive int.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be an int >= 1")
    forward, backward = _Pump(a, b, chunk), _Pump(b, a, chunk)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward.run, nursery.cancel_scope)
        nursery.start_soon(backward.run, nursery.cancel_scope)
    ending: Ending = "reset" if forward.broken or backward.broken else "eof"
    return SpliceResult(forward.copied, backward.copied, ending)


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
      resets: sessions ended by a reset (or close) on either side.
      timeouts: sessions ended by an inactivity or active timeout on either side.
    """

    sessions: int = 0
    sessions_open: int = 0
    upstream_failures: int = 0
    upstream_timeouts: int = 0
    resets: int = 0
    timeouts: int = 0


@final
class TcpProxy:
    """A ``serve()`` handler that forwards each client connection upstream.

    ``await nursery.start(net.serve, TcpProxy(net, "10.0.0.5", 80), 8080)``

    For every client connection it connects to ``host:port`` through
    ``net.connect`` (so the upstream connection counts toward
    ``max_connections`` and has its own timeouts) and :func:`splice` joins the
    two until both directions have ended.

    Args:
      net: the processor that connects upstream (usually the one serving).
      host, port: the upstream server.
      options: :class:`ConnectOptions` for the upstream side: connect timeout,
        inactivity/active timeouts, socket options, TLS.
      chunk: the most bytes held in memory per direction, 1..16 MiB.

    Raises:
      TypeError / ValueError: a bad argument, naming it and its value: checked
        here, so that a bad upstream fails at start-up rather than in every
        session (``host`` as ``connect()`` checks it: no control characters,
        valid IDNA; ``port`` 1..65535).

    Error handling:
      An upstream that cannot be reached (``ConnectError``: refused,
      unresolvable, connect timeout, throttled) is logged at INFO and
      counted; the client connection is then closed. Resets end the session
      quietly (counted). Timeouts on either side end the whole session.
    """

    def __init__(
        self,
        net: NetProcessor,
        host: str,
        port: int,
        options: ConnectOptions | None = None,
        *,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        from ._server import NetProcessor  # _server does not import this module

        o = "TcpProxy"
        if not isinstance(net, NetProcessor):
            raise TypeError(f"{o}.net={net!r}: expected a trionet.NetProcessor")
        if not isinstance(host, str):
            raise TypeError(f"{o}.host={host!r}: expected a str (a host name or an IP address)")
        problem = host_problem(host)
        if problem is not None:
            raise ValueError(f"{o}.host={host!r}: not a valid host name or address: {problem}")
        _check_int(o, "port", port, 1, 65535)
        if options is not None and not isinstance(options, ConnectOptions):
            raise TypeError(f"{o}.options={options!r}: expected ConnectOptions or None")
        _check_int(o, "chunk", chunk, 1, MAX_CHUNK)
        self.net, self.host, self.port = net, host, int(port)
        self.options = options
        self.chunk = chunk
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
        try:
            async with upstream:
                with upstream.enforce_timeouts():
                    result = await splice(client, upstream, self.chunk)
                    counts["resets"] += result.ending == "reset"
        finally:
            counts["sessions_open"] -= 1
            if client.timed_out is not None or upstream.timed_out is not None:
                counts["timeouts"] += 1

    async def _connect(self, client: Connection) -> Connection | None:
        try:
            return await self.net.connect(self.host, self.port, self.options)
        except ConnectError as exc:
            self._counts["upstream_failures"] += 1
            self._counts["upstream_timeouts"] += isinstance(exc, TimeoutError)
            logger.info("connection #%d from %r: %s", client.id, client.remote_address, exc)
            return None
