"""The stats page: a processor's statistics over HTTP (ATS's "net" stats page).

Two documents:

- ``GET /stats`` -- JSON, one key per statistic under ATS's record names
  (``{"proxy.process.net.connections_currently_open": 3, ...}``), as ATS's
  ``stats_over_http`` plugin serves them.
- ``GET /metrics`` -- the Prometheus text exposition format (or OpenMetrics,
  if the scraper asks for it in ``Accept``), produced by ``prometheus-client``
  through :class:`StatsCollector`.

Anything else is a 404 (405 for a method other than GET/HEAD), a malformed
request a 400. HTTP is parsed by h11; this module only maps requests to
responses.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Final, final
from urllib.parse import urlsplit

import h11
import trio
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from ._connection import Connection
from ._stats import GAUGES, RECORD_NAMES, NetStatistics

__all__ = ["STATS_INACTIVITY_TIMEOUT", "StatisticsSource", "StatsCollector", "serve_page"]

logger = logging.getLogger("trionet.stats_page")

StatisticsSource = Callable[[], NetStatistics]

# One line of HELP per statistic (Prometheus shows it; ATS documents the same
# records in records.yaml).
DESCRIPTIONS: Final[dict[str, str]] = {
    "connections_currently_open": "Connections (inbound and outbound) not yet closed.",
    "accepts_currently_open": "Listening sockets with a running accept task.",
    "idle_connections": "Connections marked idle (keep-alive), eligible for eviction.",
    "total_accepts": "Connections accepted and handed to a handler.",
    "connections_throttled_in": "Inbound connections closed at max_connections.",
    "per_client_connections_throttled_in": "Inbound connections closed at the per-client limit.",
    "accept_errors_transient": "accept() failures retried at once (EAGAIN, ECONNRESET...).",
    "accept_errors_resource": "accept() failures from exhausted resources (EMFILE, ENOBUFS...).",
    "read_bytes": "Payload bytes received.",
    "write_bytes": "Payload bytes sent.",
    "calls_to_read": "Calls to receive on connections.",
    "calls_to_read_nodata": "Receive calls that returned no data (end of stream).",
    "calls_to_write": "Calls to send on connections.",
    "handler_errors": "Handlers that raised (a peer's reset is not counted).",
    "inactivity_timeouts": "Connections closed by their inactivity timeout.",
    "active_timeouts": "Connections closed by their active timeout.",
    "default_inactivity_timeout_applied": "Connections given the default inactivity timeout.",
    "keep_alive_evictions": "Idle connections closed to stay under max_idle_connections.",
    "connects_total": "Outbound connections attempted.",
    "connect_failures": "Outbound connections that failed.",
    "connect_timeouts": "Outbound connections that hit their connect timeout.",
    "connections_throttled_out": "Outbound connections refused at max_connections.",
    "tls_handshake_timeouts": "TLS handshakes that hit their timeout.",
    "tls_handshake_errors": "TLS handshakes that failed.",
    "proxy_protocol_errors": "Connections closed for a bad or missing PROXY protocol header.",
}

# A scraper that connects and goes quiet must not hold a slot for ever (the
# page's processor allows 64 connections: trionet._processor).
STATS_INACTIVITY_TIMEOUT: Final = 10.0
MAX_REQUEST_HEAD: Final = 16 * 1024
SERVER_HEADER: Final = b"trionet-stats"
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 256 * 1024


def metric_name(field: str) -> str:
    """The Prometheus name of a statistic: its ATS record name with dots as
    underscores (``proxy_process_net_read_bytes``), as ATS's own Prometheus
    output spells it. Counters get ``_total`` appended by the exposition."""
    return RECORD_NAMES[field].replace(".", "_")


@final
class StatsCollector:
    """A ``prometheus-client`` collector over a :class:`NetStatistics` source.

    Register it in any ``CollectorRegistry`` (``REGISTRY.register(
    StatsCollector(net.statistics))``) to export a processor's statistics
    next to an application's own metrics. Gauges
    (``connections_currently_open``...) are typed ``gauge``, everything else
    ``counter``.

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
        return self._families(self._source())

    def describe(self) -> Iterator[Metric]:
        """The metric families without values (lets a registry detect clashes
        without taking a snapshot)."""
        return self._families(NetStatistics())

    @staticmethod
    def _families(stats: NetStatistics) -> Iterator[Metric]:
        for field, value in _fields(stats):
            name, doc = metric_name(field), DESCRIPTIONS[field]
            if field in GAUGES:
                yield GaugeMetricFamily(name, doc, value=value)
            else:
                yield CounterMetricFamily(name, doc, value=value)


def _fields(stats: NetStatistics) -> Iterator[tuple[str, int]]:
    for field in RECORD_NAMES:
        yield field, getattr(stats, field)


# ------------------------------------------------------------------ the page
@final
class _Page:
    """Maps one request (method, path, Accept) to a response; no I/O."""

    def __init__(self, source: StatisticsSource) -> None:
        self._source = source
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(StatsCollector(source))

    def respond(self, request: h11.Request) -> tuple[int, bytes, bytes]:
        """Returns ``(status, content type, body)``."""
        path = urlsplit(request.target.decode("ascii", "replace")).path
        if path not in ("/stats", "/metrics"):
            return 404, b"text/plain; charset=utf-8", b"not found; try /stats or /metrics\n"
        if request.method not in (b"GET", b"HEAD"):
            return 405, b"text/plain; charset=utf-8", b"method not allowed; use GET\n"
        if path == "/stats":
            body = json.dumps(self._source().as_records(), indent=1).encode() + b"\n"
            return 200, b"application/json", body
        accept = _header(request, b"accept")
        encoder, content_type = choose_encoder(accept)
        return 200, content_type.encode("ascii"), encoder(self._registry)


def _header(request: h11.Request, name: bytes) -> str:
    values = [v.decode("latin-1") for k, v in request.headers if k == name]
    return ", ".join(values)


async def _next_event(conn: Connection, http: h11.Connection) -> h11.Event | None:
    """The next h11 event, reading from ``conn`` as needed; ``None`` when h11
    is PAUSED (the client pipelined a request before our response was done)."""
    while True:
        event = http.next_event()
        if isinstance(event, h11.Event):
            return event
        if event is h11.PAUSED:
            return None
        http.receive_data(await conn.receive_some(MAX_REQUEST_HEAD))


async def _send_response(
    conn: Connection,
    http: h11.Connection,
    status: int,
    content_type: bytes,
    body: bytes,
    head_only: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"server", SERVER_HEADER),
    ]
    if status == 405:
        headers.append((b"allow", b"GET, HEAD"))
    data = http.send(h11.Response(status_code=status, headers=headers))
    if not head_only:
        data = (data or b"") + (http.send(h11.Data(data=body)) or b"")
    data = (data or b"") + (http.send(h11.EndOfMessage()) or b"")
    await conn.send_all(data)


async def _serve_page(page: _Page, conn: Connection) -> None:
    """One connection: requests in a keep-alive loop until either side closes."""
    http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    while True:
        try:
            event = await _next_event(conn, http)
        except h11.RemoteProtocolError as exc:
            await _bad_request(conn, http, exc)
            return
        if isinstance(event, h11.Request):
            status, ctype, body = page.respond(event)
            await _drain_body(conn, http)
            await _send_response(conn, http, status, ctype, body, event.method == b"HEAD")
        elif isinstance(event, h11.ConnectionClosed) or event is None:
            return
        if http.our_state is h11.MUST_CLOSE or http.their_state is not h11.DONE:
            return
        http.start_next_cycle()


async def _drain_body(conn: Connection, http: h11.Connection) -> None:
    """Read (and ignore) a request body, so the next request can be parsed."""
    while http.their_state is h11.SEND_BODY:
        event = await _next_event(conn, http)
        if isinstance(event, h11.ConnectionClosed):
            return


async def _bad_request(
    conn: Connection, http: h11.Connection, exc: h11.RemoteProtocolError
) -> None:
    # h11 allows one response after a protocol error if we had not started
    # ours (IDLE: the request line itself was bad).
    logger.debug("stats page: bad request on connection #%d: %s", conn.id, exc)
    if http.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    status = exc.error_status_hint
    body = f"bad request: {exc}\n".encode()
    await _send_response(conn, http, status, b"text/plain; charset=utf-8", body)
    await _lingering_close(conn)


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


def serve_page(source: StatisticsSource) -> Callable[[Connection], Awaitable[None]]:
    """A ``serve()`` handler that answers ``/stats`` and ``/metrics`` from
    ``source()`` (see :func:`trionet.serve_stats`, which serves it).

    Raises:
      TypeError: ``source`` is not callable.
    """
    page = _Page(source)

    async def handler(conn: Connection) -> None:
        await _serve_page(page, conn)

    return handler
