"""The stats page: a processor's statistics over HTTP (ATS's "net" stats page).

Four documents:

- ``GET /stats`` -- JSON, one key per statistic under ATS's record names
  (``{"proxy.process.net.connections_currently_open": 3, ...}``), as ATS's
  ``stats_over_http`` plugin serves them; a labelled reading's key has its
  label values in the name (``Reading.record``).
- ``GET /metrics`` -- the Prometheus text exposition format (or OpenMetrics,
  if the scraper asks for it in ``Accept``), produced by ``prometheus-client``
  through a collector over :class:`~trionet._core._stats.Reading` objects:
  ``trionet_`` names, the ATS record in each HELP line, per-worker series
  labelled ``worker="i"`` for a fleet, labelled readings (a proxy's
  ``upstream="host:port"``) as series of one family, and ``trionet_build_info``.
- ``GET /healthz`` -- 200 whenever the page answers at all (its event loop
  runs); ``GET /readyz`` -- 200 while :class:`Readiness` says ready, 503 with
  the reason once a shutdown or a reload has begun.

Anything else is a 404 (405 for a method other than GET/HEAD), a malformed
request a 400. HTTP is parsed by h11; this module maps requests to responses
and keeps the page reachable when clients are slow, silent or hostile
(deadlines, eviction of connections that owe a request: see ``serve_stats``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Final, Protocol, TypeAlias, final
from urllib.parse import urlsplit

import h11
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import (
    CONTENT_TYPE_PLAIN_0_0_4,
    choose_encoder,
    generate_latest,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from .._base._ratelog import RateLimitedLog
from .._base._version import __version__
from ._connection import Connection
from ._stats import (
    METRIC_PREFIX,
    NET_STATISTICS,
    NetStatistics,
    Reading,
    ReadingsSource,
    net_readings,
)

__all__ = [
    "STATS_INACTIVITY_TIMEOUT",
    "STATS_MAX_CONNECTIONS",
    "STATS_MAX_WAITING",
    "Readiness",
    "StatisticsSource",
    "StatsCollector",
    "serve_page",
]

logger = logging.getLogger("trionet.stats_page")

StatisticsSource: TypeAlias = Callable[[], NetStatistics]
# Exported and described as trionet.StatisticsSource.

# The page's own connections. A scraper holds one or two; a hostile client can
# open hundreds and send nothing, or trickle a header line a second. So slots
# are handed out the way ATS hands out keep-alive slots: a connection that has
# not yet delivered a complete request (or waits between requests) is marked
# idle, and when more than STATS_MAX_WAITING are idle the *oldest* is evicted.
# A new client therefore always gets a slot at once -- it is the newest -- and
# a flood of slow or silent connections only evicts itself. Connections being
# answered are not evictable; STATS_MAX_CONNECTIONS caps all of them, and the
# accept loop closes the excess at once ("close" throttle) rather than leaving
# clients in the kernel backlog, where a good one would wait behind a flood.
STATS_MAX_WAITING: Final = 64
STATS_MAX_CONNECTIONS: Final = 256
# Deadlines of the page's own, applied whatever AcceptOptions say: a request
# (head and body) must be complete REQUEST_TIMEOUT seconds after the connection
# opened -- in total, not per byte, so trickling does not extend it; between
# requests a client may wait KEEP_ALIVE_TIMEOUT for its next one, which then
# has REQUEST_TIMEOUT from its first byte. A response must be taken within
# RESPONSE_TIMEOUT. STATS_INACTIVITY_TIMEOUT is the listener's own inactivity
# timeout (the CLI's too), a backstop under these.
REQUEST_TIMEOUT: Final = 5.0
KEEP_ALIVE_TIMEOUT: Final = 10.0
RESPONSE_TIMEOUT: Final = 10.0
STATS_INACTIVITY_TIMEOUT: Final = 10.0
MAX_REQUEST_HEAD: Final = 16 * 1024
MAX_REQUEST_BODY: Final = 16 * 1024  # GET needs none; read only to keep framing
SERVER_HEADER: Final = b"trionet-stats"
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 256 * 1024
# A malformed request is the client's error, not ours: one line at INFO, at
# most every 10 s per page (a scanner must not be able to flood the log).
BAD_REQUEST_LOG_INTERVAL: Final = 10.0
TEXT: Final = b"text/plain; charset=utf-8"
PATHS: Final = ("/stats", "/metrics", "/healthz", "/readyz")


def metric_name(field: str) -> str:
    """The Prometheus name of a :class:`NetStatistics` field: ``trionet_`` and
    its ATS record name after ``proxy.process.``, dots as underscores
    (``trionet_net_read_bytes``). Counters get ``_total`` in the exposition."""
    return NET_STATISTICS[field].metric


# ----------------------------------------------------------------- readiness
class Accepting(Protocol):
    """What :meth:`Readiness.watch` needs of a server (a ``Server``, a
    ``WorkerSupervisor``): whether it has begun to stop."""

    @property
    def stopping(self) -> bool: ...


@final
class Readiness:
    """What ``/readyz`` answers: 200 while ready, 503 with a reason once not.

    Not ready while a reason was given with :meth:`not_ready` (a shutdown or
    a reload has begun) and not withdrawn with :meth:`ready_again`, while a
    watched server is stopping (its listeners closed), or while a check
    returns a reason. A load balancer polling ``/readyz`` thus sees the drain
    begin before the listeners close (see the shutdown order in
    :doc:`/howto/deploying`); ``/healthz`` stays 200 until the page itself
    closes, last.
    """

    def __init__(self) -> None:
        self._reason: str | None = None
        self._watched: list[Accepting] = []
        self._checks: list[Callable[[], str | None]] = []

    def __repr__(self) -> str:
        problem = self.problem()
        return f"<trionet.Readiness {'ready' if problem is None else repr(problem)}>"

    def watch(self, *servers: Accepting) -> None:
        """Be not ready once any of ``servers`` is stopping: a
        :class:`~trionet.Server` (after ``shutdown``), a
        :class:`~trionet.WorkerSupervisor`, anything with a ``stopping`` property."""
        self._watched.extend(servers)

    def add_check(self, check: Callable[[], str | None]) -> None:
        """Ask ``check()`` on every ``/readyz``: ``None`` when ready, else the
        reason (``"1 of 2 workers serving"``).

        Raises:
          TypeError: ``check`` is not callable.
        """
        if not callable(check):
            raise TypeError(f"Readiness.add_check: {check!r} is not callable")
        self._checks.append(check)

    def not_ready(self, reason: str) -> None:
        """Answer 503 with ``reason`` from now on (the first reason given is
        kept), until :meth:`ready_again`."""
        if self._reason is None:
            self._reason = str(reason)

    def ready_again(self) -> None:
        """Withdraw :meth:`not_ready` (a reload's new generation serves)."""
        self._reason = None

    @property
    def ready(self) -> bool:
        """True when ``/readyz`` answers 200."""
        return self.problem() is None

    def problem(self) -> str | None:
        """Why not ready, or ``None`` when ready."""
        if self._reason is not None:
            return self._reason
        if any(server.stopping for server in self._watched):
            return "shutting down"
        for check in self._checks:
            if (reason := check()) is not None:
                return reason
        return None


@final
class StatsCollector:
    """A ``prometheus-client`` collector over a :class:`NetStatistics` source.

    Register it in any ``CollectorRegistry`` (``REGISTRY.register(
    StatsCollector(net.statistics))``) to export a processor's statistics
    next to an application's own metrics. Names are in the ``trionet_``
    namespace (``trionet_net_read_bytes_total``; the ATS record name is in
    each HELP line). Gauges (``connections_currently_open``...) are typed
    ``gauge``, everything else ``counter``.

    Args:
      source: called on every scrape for a fresh snapshot, e.g. ``net.statistics``.

    Raises:
      TypeError: ``source`` is not callable.
    """

    def __init__(self, source: StatisticsSource) -> None:
        if not callable(source):
            raise TypeError(f"source={source!r} is not callable (pass net.statistics)")
        self._source = source

    def collect(self) -> Iterator[Metric]:
        """One metric family per statistic, from a fresh snapshot."""
        return map(_family, net_readings(self._source()))

    def describe(self) -> Iterator[Metric]:
        """The metric families without values (lets a registry detect clashes
        without taking a snapshot)."""
        return map(_family, net_readings(NetStatistics()))


def _family(reading: Reading, *more: Reading) -> Metric:
    """One metric family from the readings of one statistic: for each, its
    series (unlabelled, or with the reading's labels), then one sample per
    live worker (a fleet's) with ``worker="i"`` added."""
    stat = reading.statistic
    doc = f"{stat.help} (ATS record {stat.record})"
    family: Metric
    if stat.gauge:
        family, sample = GaugeMetricFamily(stat.metric, doc), stat.metric
    else:
        # prometheus-client drops a trailing "_total" from a counter's name
        # (trionet_net_connects_total) and puts it on the samples.
        family = CounterMetricFamily(stat.metric, doc)
        sample = family.name + "_total"
    for each in (reading, *more):
        labels = dict(each.labels)
        family.samples.append(Sample(sample, labels, each.value))
        for worker, value in each.workers:
            family.samples.append(Sample(sample, {**labels, "worker": str(worker)}, value))
    return family


def _families(readings: Iterable[Reading]) -> Iterator[Metric]:
    """One family per metric name, in the order each name first appears:
    the readings of one statistic (a proxy's targets) are series of one
    family -- a name twice in an exposition is an error to scrapers."""
    grouped: dict[str, list[Reading]] = {}
    for reading in readings:
        grouped.setdefault(reading.statistic.metric, []).append(reading)
    for group in grouped.values():
        yield _family(*group)


@final
class _PageCollector:
    """The page's collector: every reading of its source, and ``trionet_build_info``."""

    def __init__(self, source: Callable[[], Iterable[Reading]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            METRIC_PREFIX + "build_info", "trionet's version (always 1).", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield from _families(self._source())


# ------------------------------------------------------------------ the page
@final
class _Page:
    """Maps one request (method, path, Accept) to a response; no I/O."""

    def __init__(self, source: ReadingsSource, readiness: Readiness) -> None:
        self._source = source
        self._readiness = readiness
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_PageCollector(source))

    def respond(self, method: bytes, path: str, accept: str) -> tuple[int, bytes, bytes]:
        """Returns ``(status, content type, body)``."""
        if path not in PATHS:
            return 404, TEXT, b"not found; try /stats, /metrics, /healthz or /readyz\n"
        if method not in (b"GET", b"HEAD"):
            return 405, TEXT, b"method not allowed; use GET\n"
        if path == "/healthz":
            # Answering at all is the proof: the page's event loop runs.
            return 200, TEXT, b"ok\n"
        if path == "/readyz":
            problem = self._readiness.problem()
            if problem is None:
                return 200, TEXT, b"ready\n"
            return 503, TEXT, f"not ready: {problem}\n".encode()
        if path == "/stats":
            records = {r.record: r.value for r in self._source()}
            return 200, b"application/json", json.dumps(records, indent=1).encode() + b"\n"
        content_type, body = self._exposition(accept)
        return 200, content_type, body

    def _exposition(self, accept: str) -> tuple[bytes, bytes]:
        """The metrics in the format ``accept`` asks for, or in the Prometheus
        text format when prometheus-client cannot use it.

        Error handling:
          ``choose_encoder`` and the encoders parse the client's header
          (``version=zzz`` raises TypeError, ``version=x.y`` ValueError) and
          echo its parameters into the content type; a failure there, or a
          content type that is not ASCII, falls back to text. A failure of the
          collector itself raises again in the fallback: that one is ours.
        """
        try:
            encoder, content_type = choose_encoder(accept)
            return content_type.encode("ascii"), encoder(self._registry)
        except (TypeError, ValueError, LookupError) as exc:
            logger.debug("stats page: unusable Accept %r (%s); sending text", accept, exc)
        return CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"), generate_latest(self._registry)


def _header(request: h11.Request, name: bytes) -> str:
    values = [v.decode("latin-1") for k, v in request.headers if k == name]
    return ", ".join(values)


def _target_path(target: bytes) -> str:
    """The path of a request target, origin form (``/stats?x``) or absolute
    form (``http://host/stats``).

    Raises:
      h11.RemoteProtocolError: (400) a target ``urlsplit`` rejects, such as
        ``http://[/stats``.
    """
    try:
        return urlsplit(target.decode("ascii", "replace")).path
    except ValueError as exc:
        raise h11.RemoteProtocolError(f"bad request target {target!r} ({exc})", 400) from None


@final
class _Session:
    """One connection to the page: requests read under the page's deadlines
    and answered in turn, until either side closes or a deadline passes.

    The connection is marked ``idle`` -- evictable, oldest first, by the page's
    processor (``max_idle_connections``) -- whenever it owes us a request:
    from its opening until a complete request (head and body) is in, between
    requests, and while it lingers after a refusal. It is busy only while it
    is being answered.

    Error handling:
      A request h11 cannot parse, a bad target, an oversized head (431) or
      body (413), or a request still incomplete at its deadline (408) gets
      that status (400 for anything h11 would answer with a 5xx), a
      rate-limited one-line log, and a lingering close -- never a traceback.
      A client that closes or resets ends the session quietly (the server
      logs that at debug level).
    """

    def __init__(self, page: _Page, conn: Connection, log: RateLimitedLog) -> None:
        self._page = page
        self._conn = conn
        self._log = log
        self._http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
        self._scope = trio.CancelScope()
        self._got_bytes = False  # some of the current request has arrived
        self._between_requests = False  # its deadline starts at its first byte
        self._method = b""  # of the current request, once its head is in

    async def run(self) -> None:
        http = self._http
        deadline = self._conn.opened_at + REQUEST_TIMEOUT
        while (received := await self._read_request(deadline)) is not None:
            if not await self._answer(*received):
                return
            if http.our_state is h11.MUST_CLOSE or http.their_state is not h11.DONE:
                return
            http.start_next_cycle()
            # A pipelined request may already be buffered: its clock runs.
            self._got_bytes = bool(http.trailing_data[0])
            self._method = b""
            self._between_requests = not self._got_bytes
            wait = REQUEST_TIMEOUT if self._got_bytes else KEEP_ALIVE_TIMEOUT
            deadline = trio.current_time() + wait

    async def _read_request(self, deadline: float) -> tuple[h11.Request, str] | None:
        """The next complete request and its path; ``None`` when the session
        is over (the client closed, or the request was refused or late)."""
        self._conn.idle = True
        refusal: h11.RemoteProtocolError | None = None
        with trio.move_on_at(deadline) as self._scope:
            try:
                received = await self._receive_request()
            except h11.RemoteProtocolError as exc:
                refusal = exc
            else:
                self._conn.idle = received is None
                return received
        if refusal is None:  # the deadline passed
            if not self._got_bytes:
                return None  # nothing asked: a quiet close, as at keep-alive's end
            refusal = h11.RemoteProtocolError(f"request not complete in {REQUEST_TIMEOUT:g} s", 408)
        await self._refuse(refusal)
        return None

    async def _receive_request(self) -> tuple[h11.Request, str] | None:
        event = await self._next_event()
        if not isinstance(event, h11.Request):
            return None  # the client closed between requests
        self._method = event.method
        path = _target_path(event.target)
        if self._http.they_are_waiting_for_100_continue:
            await self._conn.send_all(
                self._http.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        await self._receive_body()
        return event, path

    async def _receive_body(self) -> None:
        """Read (and drop) a request body, so that its framing is checked and
        the next request can be parsed."""
        size = 0
        while self._http.their_state is h11.SEND_BODY:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_REQUEST_BODY:
                    raise h11.RemoteProtocolError(
                        f"request body over {MAX_REQUEST_BODY} bytes", 413
                    )

    async def _next_event(self) -> h11.Event | None:
        """The next h11 event, reading as needed; ``None`` when h11 is PAUSED."""
        while True:
            event = self._http.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            data = await self._conn.receive_some(MAX_REQUEST_HEAD)
            if data and not self._got_bytes:
                self._got_bytes = True
                if self._between_requests:
                    self._scope.deadline = trio.current_time() + REQUEST_TIMEOUT
            self._http.receive_data(data)

    async def _answer(self, request: h11.Request, path: str) -> bool:
        """Send the response; False if the client did not take it in time."""
        accept = _header(request, b"accept")
        status, ctype, body = self._page.respond(request.method, path, accept)
        head_only = request.method == b"HEAD"
        with trio.move_on_after(RESPONSE_TIMEOUT):
            await _send_response(self._conn, self._http, status, ctype, body, head_only)
            return True
        return False

    async def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        """Log ``exc`` (one rate-limited line), answer with its status and
        ``Connection: close``, then linger; the connection stays evictable."""
        hint = exc.error_status_hint
        status = hint if 400 <= hint < 500 else 400
        conn = self._conn
        self._log(
            logging.INFO,
            "stats page: %d for connection #%d from %r: %s",
            status,
            conn.id,
            conn.remote_address,
            exc,
        )
        # h11 allows one response after a protocol error if we had not
        # started ours. The client may still be sending: linger so that it
        # gets to read the answer (all of it bounded by LINGER_SECONDS).
        if self._http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"bad request: {exc}\n".encode()
        head_only = self._method == b"HEAD"  # h11 sends no body in reply to HEAD
        with trio.move_on_after(LINGER_SECONDS):
            await _send_response(conn, self._http, status, TEXT, body, head_only, close=True)
            await _lingering_close(conn)


async def _send_response(
    conn: Connection,
    http: h11.Connection,
    status: int,
    content_type: bytes,
    body: bytes,
    head_only: bool = False,
    close: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"server", SERVER_HEADER),
    ]
    if status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    if close:
        headers.append((b"connection", b"close"))
    data = http.send(h11.Response(status_code=status, headers=headers))
    if not head_only:
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
    data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
    await conn.send_all(data)


async def _lingering_close(conn: Connection) -> None:
    """Half-close, then discard what the client is still sending for a moment.

    Closing a socket with unread input makes the kernel send a reset, and a
    client still writing its (oversized, malformed) request would then lose
    our error response before reading it -- Apache's "lingering close"."""
    await conn.send_eof()
    discarded = 0
    with trio.move_on_after(LINGER_SECONDS):
        while discarded < LINGER_BYTES and (chunk := await conn.receive_some()):
            discarded += len(chunk)


def serve_page(
    source: ReadingsSource, readiness: Readiness | None = None
) -> Callable[[Connection], Awaitable[None]]:
    """A ``serve()`` handler that answers ``/stats`` and ``/metrics`` from
    ``source()``, ``/healthz``, and ``/readyz`` from ``readiness`` (default:
    always ready); see :func:`trionet.serve_stats`, which serves it.

    Raises:
      TypeError: ``source`` is not callable.
    """
    if not callable(source):
        raise TypeError(f"source={source!r} is not callable")
    page = _Page(source, Readiness() if readiness is None else readiness)
    log = RateLimitedLog(BAD_REQUEST_LOG_INTERVAL, logger)

    async def handler(conn: Connection) -> None:
        await _Session(page, conn, log).run()

    return handler
