"""A TCP proxy: bytes pumped both ways between two streams, with backpressure
and half-close (the job ATS's Net module exists for).

:func:`splice` is the pump, usable between any two half-closeable streams;
:class:`TcpProxy` is a ``serve()`` handler that connects upstream for each
inbound connection and splices the two. ``examples/tcp_proxy.py`` and
``trionet proxy`` are both built on it.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import ssl
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Final, Literal, final

import trio

from .._base._addr import host_problem, unix_target
from .._base._checks import check_bool, check_int, check_seconds, is_int
from .._base._errors import ConnectError, ResolveError, ThrottledError, TLSError
from .._base._options import ConnectOptions, unix_path_problem
from .._base._ratelog import RateLimitedLog
from .._base._sockopt import linger_abort
from .._core._access_log import address_text
from .._core._connection import Connection
from .._core._stats import Reading, Statistic, readings_of
from .._processor import NetProcessor
from ._upstreams import (
    BALANCES,
    DEFAULT_FAIL_BACKOFF,
    DEFAULT_MAX_FAILS,
    Target,
    UpstreamPool,
    UpstreamStatistics,
    upstream_readings,
)
from ._zero_copy import kernel_pumps

__all__ = ["PROXY_STATISTICS", "ProxyStatistics", "SpliceResult", "TcpProxy", "splice"]

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
# Upstream connect failures are logged at WARNING at most once per interval
# per proxy, the next line counting the suppressed ones.
UPSTREAM_LOG_INTERVAL: Final = 10.0

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


def failure_kind(exc: ConnectError) -> str:
    """What went wrong with an upstream connect, in a word or two for the
    log's ``error`` field: ``timed out``, ``unresolvable``, ``TLS
    verification`` (the upstream's certificate), ``TLS`` (any other handshake
    failure), ``throttled``, ``refused``, or ``failed`` (the message says more)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ResolveError):
        return "unresolvable"
    if isinstance(exc, TLSError):
        verify = isinstance(exc.__cause__, ssl.SSLCertVerificationError)
        return "TLS verification" if verify else "TLS"
    if isinstance(exc, ThrottledError):
        return "throttled"
    if exc.errno == errno.ECONNREFUSED:
        return "refused"
    return "failed"


@final
@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    """What a :class:`TcpProxy` has done (bytes are in the processor's
    ``read_bytes`` / ``write_bytes``, which count both sides).

    Attributes:
      sessions: client connections handled.
      sessions_open: sessions currently splicing (a gauge).
      upstream_failures: sessions closed because no upstream could be
        reached (every target tried failed: refused, unresolvable, timed out,
        TLS failed; or the connect was throttled), including
        ``upstream_timeouts``.
      upstream_timeouts: of those, sessions whose last attempt hit the
        connect timeout.
      failovers: failed connect attempts after which the session tried the
        next target (each one logged at WARNING).
      resets: sessions ended by a reset (or close) on either side; the other
        side was aborted.
      timeouts: sessions ended by an inactivity or active timeout on either
        side; both sides were aborted.
      cut: sessions cut by cancellation, e.g. a server shutdown's grace
        deadline; both sides were aborted.
      upstreams: one :class:`UpstreamStatistics` per target (sessions,
        failures, open sessions, down or up), in the order given.
    """

    sessions: int = 0
    sessions_open: int = 0
    upstream_failures: int = 0
    upstream_timeouts: int = 0
    failovers: int = 0
    resets: int = 0
    timeouts: int = 0
    cut: int = 0
    upstreams: tuple[UpstreamStatistics, ...] = ()


_COUNTERS: Final = tuple(name for name in ProxyStatistics.__slots__ if name != "upstreams")


# The defaults of a proxy given no ConnectOptions (connect_timeout 30 s).
_DEFAULT_OPTIONS: Final = ConnectOptions()


@final
class _Session:
    """One client's session, as far as the upstream side goes: which target
    it was finally connected to (``None`` if none) and how many it tried
    (the session log reads both)."""

    __slots__ = ("attempts", "client", "upstream")

    def __init__(self, client: Connection) -> None:
        self.client = client
        self.upstream: str | None = None
        self.attempts = 0


# How the stats page shows them (TcpProxy.readings): ATS has no records for a
# TCP proxy, so they follow its scheme under proxy.process.tcp_proxy.
PROXY_STATISTICS: Final[dict[str, Statistic]] = {
    "sessions": Statistic("proxy.process.tcp_proxy.sessions", "Client sessions handled."),
    "sessions_open": Statistic(
        "proxy.process.tcp_proxy.sessions_open", "Sessions currently splicing.", gauge=True
    ),
    "upstream_failures": Statistic(
        "proxy.process.tcp_proxy.upstream_failures",
        "Sessions whose upstream connect failed (timeouts included).",
    ),
    "upstream_timeouts": Statistic(
        "proxy.process.tcp_proxy.upstream_timeouts", "Upstream connects that timed out."
    ),
    "resets": Statistic(
        "proxy.process.tcp_proxy.resets", "Sessions ended by a reset on either side."
    ),
    "timeouts": Statistic(
        "proxy.process.tcp_proxy.timeouts", "Sessions ended by an inactivity or active timeout."
    ),
    "cut": Statistic("proxy.process.tcp_proxy.cut", "Sessions cut by cancellation (shutdown)."),
    "failovers": Statistic(
        "proxy.process.tcp_proxy.failovers",
        "Failed upstream connect attempts after which the session tried the next target.",
    ),
}


@final
class TcpProxy:
    """A ``serve()`` handler that forwards each client connection upstream.

    ``await nursery.start(net.serve, TcpProxy(net, "10.0.0.5", 80), 8080)``

    For every client connection it connects to an upstream through
    ``net.connect`` (so the upstream connection counts toward
    ``max_connections`` and has its own timeouts) and :func:`splice` joins the
    two until both directions have ended.

    Several upstreams: ``TcpProxy(net, [("10.0.0.5", 80), ("10.0.0.6", 80)])``
    spreads the sessions over them (``balance``) and fails over: when a
    connect fails, the session tries the next target, all within the one
    ``connect_timeout`` (each attempt gets an equal share of what is left, so
    a target that never answers cannot use up the whole of it). A target
    failing ``max_fails`` times in a row is marked down and skipped for
    ``fail_backoff`` seconds, then probed by one session (first in its
    order); each failed probe doubles the back-off (up to 300 s). When every
    target is down, sessions still try them all, least recently failed first:
    a proxy does not refuse service on marks that may be stale. Every failed
    attempt is logged at WARNING on ``trionet.proxy`` with ``extra``
    ``upstream``, ``error`` and ``attempt``; per-target counts are in
    :attr:`ProxyStatistics.upstreams`.

    Slots: it has ``reserve_outbound_slot = True``, so the processor serving
    it admits a client only when there is a slot for its upstream connection
    too, and keeps that slot for it: at ``max_connections`` clients wait in
    the backlog (``throttle="pause"``) or are refused at accept (``"close"``),
    never accepted and then dropped for want of an upstream slot. Serve it on
    the processor it connects through; on another one, set the attribute to
    ``False`` (the reservation would be made where nothing takes it).

    Args:
      net: the processor that connects upstream (usually the one serving).
      host, port: the upstream server (``"unix:/path"`` with port 0 for a
        Unix socket); or ``host`` a sequence of ``(host, port)`` targets and
        ``port`` left out (``None``).
      options: :class:`ConnectOptions` for the upstream side: connect timeout,
        inactivity/active timeouts, socket options, TLS, PROXY header.
      chunk: the most bytes held in memory per direction, 1..16 MiB (with
        zero-copy none are: the bytes stay in the kernel).
      balance: ``"round-robin"`` (default): sessions go to the targets in
        turn; ``"least-conn"``: to the one with the fewest open sessions.
      max_fails: connect failures in a row that mark a target down, >= 1
        (default 3).
      fail_backoff: seconds a target marked down is skipped, > 0 (default 10).
      zero_copy: move the bytes inside the kernel with Linux ``splice(2)``
        where both sides are plain TCP (see :func:`splice`); ``False``
        copies them through the process always.

    Attributes:
      targets: the ``(host, port)`` targets, in the order given.
      host / port: the first target's.

    Raises:
      TypeError: an argument of the wrong type (``net`` not a
        :class:`NetProcessor`, ``host`` not a str...), named with its value.
      ValueError: a value :meth:`NetProcessor.connect` would refuse, named
        with its value: checked here, so that a bad upstream fails at
        start-up rather than in every session (``host`` as ``connect()``
        checks it: no control characters, valid IDNA; ``port`` 1..65535);
        no target, or one given twice; an unknown ``balance``.

    Error handling:
      A target that cannot be reached (``ConnectError``: refused,
      unresolvable, connect timeout, TLS verification) is counted and logged
      at WARNING on ``trionet.proxy``, naming the target and the error
      (fields ``upstream``, ``error``, ``detail``, ``attempt``), at most once
      per 10 s with a count of the suppressed ones, and the next target is
      tried; when none is left (or the connect was throttled: the
      processor's limit, not the target's fault) the session's failure is
      logged at INFO and counted, and the client connection is closed. With
      the processor's ``access_log`` on, each session's record names the
      upstream (``upstream``: the target used, or the last one tried) and the
      targets tried (``attempts``, above 1 after a failover), and ends
      ``upstream_failed`` or ``upstream_timeout`` when no connect succeeded,
      ``reset`` when either side reset, and with the upstream side's timeout
      when that one fired (:meth:`Connection.note_session`). Resets end the
      session quietly (counted), passing the abort on to the other side.
      Timeouts (the session idle on both sides for a side's inactivity
      timeout, or an active timeout) and a shutdown's grace deadline cut the
      session: both sides are aborted.
    """

    def __init__(
        self,
        net: NetProcessor,
        host: str | Sequence[tuple[str, int]],
        port: int | None = None,
        options: ConnectOptions | None = None,
        *,
        chunk: int = DEFAULT_CHUNK,
        balance: Literal["round-robin", "least-conn"] = "round-robin",
        max_fails: int = DEFAULT_MAX_FAILS,
        fail_backoff: float = DEFAULT_FAIL_BACKOFF,
        zero_copy: bool = True,
    ) -> None:
        o = "TcpProxy"
        if not isinstance(net, NetProcessor):
            raise TypeError(f"{o}.net={net!r}: expected a trionet.NetProcessor")
        targets = _check_targets(o, host, port)
        if options is not None and not isinstance(options, ConnectOptions):
            raise TypeError(f"{o}.options={options!r}: expected ConnectOptions or None")
        check_int(o, "chunk", chunk, 1, MAX_CHUNK)
        if balance not in BALANCES:
            raise ValueError(f"{o}.balance={balance!r}: expected one of {', '.join(BALANCES)}")
        check_int(o, "max_fails", max_fails, 1)
        check_seconds(
            o, "fail_backoff", fail_backoff, allow_zero=False, finite=True, optional=False
        )
        check_bool(o, "zero_copy", zero_copy)
        self.net: NetProcessor = net
        self.targets: tuple[tuple[str, int], ...] = targets
        self.host: str = targets[0][0]
        self.port: int = targets[0][1]
        self.options = options
        self.chunk = chunk
        self.zero_copy: bool = zero_copy
        self.reserve_outbound_slot = True
        self._pool = UpstreamPool(targets, balance, max_fails, float(fail_backoff))
        self._counts = dict.fromkeys(_COUNTERS, 0)
        # One rate limit per target: a dead target's flood of failures is one
        # line per interval, and it never hides the first failure of another.
        self._failure_logs: dict[str, RateLimitedLog] = {
            t.label: RateLimitedLog(UPSTREAM_LOG_INTERVAL, logger) for t in self._pool.targets
        }

    @property
    def balance(self) -> Literal["round-robin", "least-conn"]:
        """How sessions are spread over the targets."""
        return self._pool.balance

    @property
    def max_fails(self) -> int:
        """Connect failures in a row that mark a target down."""
        return self._pool.max_fails

    @property
    def fail_backoff(self) -> float:
        """Seconds a target marked down is skipped (before it doubles)."""
        return self._pool.fail_backoff

    def __repr__(self) -> str:
        to = ", ".join(t.label for t in self._pool.targets)
        many = f" ({self._pool.balance})" if len(self.targets) > 1 else ""
        return f"<trionet.TcpProxy to {to}{many}>"

    def statistics(self) -> ProxyStatistics:
        """A frozen snapshot of the proxy's session counts and of each target."""
        return ProxyStatistics(**self._counts, upstreams=self._pool.statistics())

    def readings(self) -> list[Reading]:
        """The statistics as the stats page shows them:
        ``serve_stats(net.statistics, 9100, extra=[proxy.readings])``. The
        proxy's totals, then each target's figures labelled
        ``upstream="host:port"`` (``trionet_tcp_proxy_upstream_*`` in
        ``/metrics``, ``proxy.process.tcp_proxy.upstream.<host:port>.*`` in
        ``/stats``)."""
        stats = self.statistics()
        return readings_of(stats, PROXY_STATISTICS) + upstream_readings(stats.upstreams)

    async def __call__(self, client: Connection) -> None:
        counts = self._counts
        counts["sessions"] += 1
        session = _Session(client)
        found = await self._connect(session)
        if found is None:
            return
        upstream, target = found
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
                    if result.ending == "reset" and self._log_sessions:
                        client.note_session("reset")  # maybe the upstream's reset
        except trio.Cancelled:
            cancelled = True
            raise
        finally:
            counts["sessions_open"] -= 1
            self._pool.closed(target)
            if client.timed_out is not None or upstream.timed_out is not None:
                counts["timeouts"] += 1
                if upstream.timed_out is not None and self._log_sessions:
                    client.note_session(upstream.timed_out)  # the upstream side's timeout
            elif cancelled:
                counts["cut"] += 1

    @property
    def _log_sessions(self) -> bool:
        # The session log's notes are made only when there is a log to read
        # them (the processor serving this proxy is the one it connects
        # through, see reserve_outbound_slot).
        return self.net.access_log

    # Failover: the targets are tried one after the other (no racing: a
    # session needs one upstream, and a second connect in flight would take
    # a second slot), within the session's one connect timeout. Each attempt
    # gets an equal share of the time left -- with three targets and 9 s,
    # a silent first target costs 3 s, not all 9 -- and the last one gets
    # all that is left. The slot serve() reserved with the client goes to
    # the first attempt; a failed attempt gives it back before raising, and
    # the next connect takes a slot again before its first checkpoint, so
    # no other task can take it in between.
    async def _connect(self, session: _Session) -> tuple[Connection, Target] | None:
        client = session.client
        start = trio.current_time()
        timeout = (self.options or _DEFAULT_OPTIONS).connect_timeout
        deadline = float("inf") if timeout is None else start + timeout
        plan = self._pool.plan(start)
        error: ConnectError | None = None
        for attempt, target in enumerate(plan, 1):
            options = self._attempt_options(deadline, len(plan) - attempt + 1, attempt == 1)
            if options is None:
                break  # no time left
            session.attempts = attempt
            if self._log_sessions:
                client.note_session(upstream=target.label, attempts=attempt)
            try:
                conn = await self.net.connect(
                    target.host, target.port, options, for_connection=client
                )
            except ThrottledError as exc:
                error = exc  # the processor's limit: no other target would do better
                break
            except ConnectError as exc:
                error = exc
                self._failed(session, target, exc, more=attempt < len(plan))
                continue
            session.upstream = target.label
            if self._pool.connected(target):
                logger.warning("upstream %s is up again", target.label)
            return conn, target
        timed_out = isinstance(error, TimeoutError)
        self._counts["upstream_failures"] += 1
        self._counts["upstream_timeouts"] += timed_out
        if self._log_sessions:
            client.note_session("upstream_timeout" if timed_out else "upstream_failed")
        logger.info(
            "connection #%d from %r: no upstream connection after %d attempt(s): %s",
            client.id,
            client.remote_address,
            session.attempts,
            error,
        )
        return None

    def _attempt_options(self, deadline: float, left: int, first: bool) -> ConnectOptions | None:
        """The options of one attempt, its connect timeout a fair share of
        the time left; None if there is none left."""
        base = self.options or _DEFAULT_OPTIONS
        if deadline == float("inf") or (first and left == 1):
            # No timeout, or the whole of it for one attempt: the options as
            # given (the common case, one target, builds no options object).
            return base
        remaining = deadline - trio.current_time()
        if remaining <= 0:
            return None
        return dataclasses.replace(base, connect_timeout=remaining / left)

    def _failed(self, session: _Session, target: Target, exc: ConnectError, more: bool) -> None:
        """Count and log one failed attempt (and a target newly marked down)."""
        pool = self._pool
        marked_down = pool.failed(target, trio.current_time())
        self._counts["failovers"] += more
        then = "trying the next one" if more else "no target left"
        # An operator must see a dead upstream at once (WARNING, naming it and
        # why), but a flood of clients hitting it must not become a flood of
        # identical lines: one per UPSTREAM_LOG_INTERVAL and target, with a
        # count of the suppressed ones. Every session still gets its own session-log
        # record (its upstream and attempts), and a target marked down or up
        # again is always logged.
        client = session.client
        why = failure_kind(exc)
        self._failure_logs[target.label](
            logging.WARNING,
            "upstream %s: %s (%s; connection #%d from %s, attempt %d; %s)",
            target.label,
            why,
            exc,
            client.id,
            address_text(client.remote_address),
            session.attempts,
            then,
            extra={
                "upstream": target.label,
                "error": why,
                "detail": str(exc),
                "attempt": session.attempts,
            },
        )
        if marked_down:
            logger.warning(
                "upstream %s marked down after %d failures in a row; retried in %g s",
                target.label,
                target.consecutive_failures,
                target.backoff,
            )


def _check_targets(owner: str, host: object, port: object) -> tuple[tuple[str, int], ...]:
    """``host, port`` or a sequence of ``(host, port)``, checked as
    ``connect()`` would check them."""
    if isinstance(host, str):
        unix = unix_target(host) is not None  # "unix:/path": a Unix socket, port 0
        check_int(owner, "port", port, 0 if unix else 1, 0 if unix else 65535)
        assert isinstance(port, int)
        return (_check_target(owner, "host", host, port),)
    if not isinstance(host, Sequence) or isinstance(host, bytes | bytearray):
        raise TypeError(
            f"{owner}.host={host!r}: expected a str, or a sequence of (host, port) targets"
        )
    if port is not None:
        raise TypeError(
            f"{owner}.host={host!r}: (host, port) targets take no separate port={port!r}"
        )
    if not host:
        raise ValueError(f"{owner}.host={host!r}: no upstream target")
    targets: list[tuple[str, int]] = []
    for i, item in enumerate(host):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError(f"{owner}.host[{i}]={item!r}: expected a (host, port) pair")
        unix = isinstance(item[0], str) and unix_target(item[0]) is not None
        check_int(owner, f"host[{i}].port", item[1], 0 if unix else 1, 0 if unix else 65535)
        target = _check_target(owner, f"host[{i}]", item[0], item[1])
        if target in targets:
            raise ValueError(f"{owner}.host[{i}]={item!r}: the same target given twice")
        targets.append(target)
    return tuple(targets)


def _check_target(owner: str, name: str, host: object, port: int) -> tuple[str, int]:
    if not isinstance(host, str):
        raise TypeError(f"{owner}.{name}={host!r}: expected a str (a host name or an IP address)")
    unix = unix_target(host) is not None
    problem = unix_path_problem(host[5:]) if unix else host_problem(host)
    if problem is not None:
        raise ValueError(f"{owner}.{name}={host!r}: not a valid host name or address: {problem}")
    return host, int(port)
