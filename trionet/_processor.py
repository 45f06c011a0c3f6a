"""``NetProcessor``: the facade a user holds (ATS ``netProcessor``).

A thin object over one :class:`~trionet._core._table.ConnectionTable` (limits,
statistics, timeouts of every connection), the serving layer
(:func:`trionet._inbound._server.serve`) and the connect path
(:func:`trionet._outbound._connect.connect`): it validates its arguments,
builds the table and the accept policy, and delegates. ``serve_stats`` lives
here too: the stats page is a small server of its own processor.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from typing import final

import trio

from ._base._checks import check_bool, check_int, check_opt_int, check_seconds, to_networks
from ._base._options import AcceptOptions, ConnectOptions
from ._core._connection import Connection
from ._core._rate import AcceptRate, default_burst
from ._core._stats import NetStatistics, Reading, ReadingsSource, net_readings
from ._core._stats_page import (
    STATS_INACTIVITY_TIMEOUT,
    STATS_MAX_CONNECTIONS,
    STATS_MAX_WAITING,
    Readiness,
    StatisticsSource,
    serve_page,
)
from ._core._table import ConnectionTable
from ._core._throttle import THROTTLE_MODES, ThrottleMode
from ._core._wire import DEFAULT_SCHEDULE_INTERVAL
from ._inbound._accept import (
    DEFAULT_ACCEPT_BATCH,
    DEFAULT_ACCEPT_ERROR_GRACE,
    AcceptPolicy,
    Handler,
)
from ._inbound._conn_listener import ConnectionListener, open_connection_listeners
from ._inbound._server import Server, serve
from ._outbound._connect import connect

__all__ = ["NetProcessor", "accept_policy_of", "serve_readings", "serve_stats", "table_of"]


@final
class NetProcessor:
    """Global limits, timeouts and statistics for a set of servers and outbound
    connections (ATS's ``netProcessor``).

    Args:
      max_connections: open connections allowed, inbound and outbound together
        (ATS ``proxy.config.net.connections_throttle``); ``None`` for no limit.
        A handler with ``reserve_outbound_slot = True`` (:class:`TcpProxy`)
        has a client admitted only with a second slot reserved for its
        outbound connection.
      throttle: what an accept task does at the limit. ``"pause"`` (default):
        stop calling ``accept()`` until a connection closes, leaving new clients
        in the kernel backlog. ``"close"`` (ATS): accept and close at once,
        counting ``connections_throttled_in``.
      per_client_max_connections: inbound connections allowed from one client
        address (ATS ``per_client.max_connections_in``); excess ones are closed.
        On a PROXY protocol port the address is the one the header names.
      per_client_exempt: networks (``"10.0.0.0/8"``...) exempt from the
        per-client limit; ``None`` or empty for none.
      accept_batch: connections accepted in a row before the accept task yields.
      accept_error_pause: seconds (> 0, finite) to pause after
        EMFILE/ENFILE/ENOBUFS/ENOMEM; 0 would retry in a busy loop.
      accept_error_grace: after a fatal accept error (the listening socket
        itself failed), seconds open connections get to finish before they are
        cancelled and ``serve()`` raises :class:`AcceptError`; the same 5 s
        default as :meth:`Server.shutdown`.
      default_inactivity_timeout: applied to connections with no inactivity
        timeout of their own (ATS ``default_inactivity_timeout``), > 0 and
        finite. Default ``None``: like trio's ``serve_tcp``, trionet does not
        end idle connections unless asked; the iocore shim applies ATS's
        86400 s. ATS reads 0 as "none"; here 0 is refused (it would end
        every connection at once): write ``None``.
      max_idle_connections: keep-alive eviction -- when more connections than
        this are marked ``conn.idle``, the oldest idle ones are closed.
      propagate_handler_errors: let a handler's exception crash ``serve()``
        (trio ``serve_listeners`` behaviour) instead of logging and counting it.
      access_log: write one INFO record per closed connection of
        :meth:`serve` (and per client refused at accept) on logger
        ``trionet.access`` (HAProxy ``option tcplog``): fields ``client``
        (the PROXY header's source when there is one), ``listen_port``,
        ``connection``, ``duration``, ``bytes_in``, ``bytes_out``, ``end``
        and what the handler added with :meth:`Connection.note_session`
        (a :class:`TcpProxy` adds ``upstream``), in the record's ``extra``.
        ``end`` is one of ``eof``, ``reset``, ``inactivity``, ``active``,
        ``evicted``, ``throttled``, ``rate_limited``, ``handler_error``, ``shutdown``,
        ``cancelled``, ``handshake_failed`` (PROXY header or TLS handshake),
        ``upstream_failed``, ``upstream_timeout``. Off by default (the
        ``trionet`` command turns it on); off, it costs nothing.
      max_accept_rate: new inbound connections per second over every server
        of the processor (HAProxy ``rate-limit sessions``), a token bucket of
        ``accept_burst`` tokens: > 0 and finite; ``None`` for no limit. With
        ``throttle="pause"`` the accept tasks stop until a token is due and
        clients wait in the kernel backlog; with ``"close"`` the excess is
        accepted, closed and counted in ``connections_rate_limited_in``.
        Backdoor ports are exempt.
      accept_burst: connections admitted at once from a full bucket, >= 1;
        default one second's worth (``ceil(max_accept_rate)``).
      per_client_max_accept_rate: new connections per second from one client
        address (a bucket per client, ``per_client_accept_burst`` tokens),
        > 0 and finite. The excess is always accepted and closed (the client
        is known only once accepted), counted in
        ``connections_rate_limited_in``. ``per_client_exempt`` networks and
        backdoor ports are exempt; so are clients with no address of their
        own (Unix sockets, PROXY protocol ports). At most 16384 clients are
        tracked: buckets that have refilled are forgotten first.
      per_client_accept_burst: a client's bucket size, >= 1; default one
        second's worth of ``per_client_max_accept_rate``.
      schedule_interval: the connections' schedule-point policy (>= 1). Every
        ``receive_some``/``send_all`` is a cancel point; one that had to wait
        was a schedule point too, and one that did not is followed by a
        schedule point when it is the ``schedule_interval``-th such call in a
        row (counted across this processor's connections), so a task moving
        data that is always ready lets other tasks run at least every that
        many calls. ``1``: every call is a full checkpoint (trio's contract
        for its own streams); the default, 16, saves most of a scheduler
        round trip per call (docs: "Checkpoints" in the design notes).

    Raises:
      ValueError: a bad argument, naming it and its value (an int field given
        a bool or a float, a bool field given ``"no"``, a timeout of ``inf``...).
    """

    def __init__(
        self,
        max_connections: int | None = None,
        throttle: ThrottleMode = "pause",
        per_client_max_connections: int | None = None,
        per_client_exempt: (
            Iterable[str | ipaddress.IPv4Network | ipaddress.IPv6Network] | None
        ) = (),
        accept_batch: int = DEFAULT_ACCEPT_BATCH,
        accept_error_pause: float = 0.05,
        accept_error_grace: float = DEFAULT_ACCEPT_ERROR_GRACE,
        default_inactivity_timeout: float | None = None,
        max_idle_connections: int | None = None,
        propagate_handler_errors: bool = False,
        access_log: bool = False,
        max_accept_rate: float | None = None,
        accept_burst: int | None = None,
        per_client_max_accept_rate: float | None = None,
        per_client_accept_burst: int | None = None,
        schedule_interval: int = DEFAULT_SCHEDULE_INTERVAL,
    ) -> None:
        o = "NetProcessor"
        check_opt_int(o, "max_connections", max_connections, 1)
        if not isinstance(throttle, str) or throttle not in THROTTLE_MODES:
            raise ValueError(f"{o}.throttle={throttle!r}: must be one of {THROTTLE_MODES}")
        check_opt_int(o, "per_client_max_connections", per_client_max_connections, 1)
        exempt = to_networks(
            o, "per_client_exempt", () if per_client_exempt is None else per_client_exempt
        )
        check_int(o, "accept_batch", accept_batch, 1)
        pause, idle, grace = accept_error_pause, default_inactivity_timeout, accept_error_grace
        check_seconds(o, "accept_error_pause", pause, allow_zero=False, finite=True, optional=False)
        check_seconds(o, "accept_error_grace", grace, finite=True, optional=False)
        check_seconds(o, "default_inactivity_timeout", idle, allow_zero=False, finite=True)
        check_opt_int(o, "max_idle_connections", max_idle_connections, 0)
        check_bool(o, "propagate_handler_errors", propagate_handler_errors)
        check_bool(o, "access_log", access_log)
        check_int(o, "schedule_interval", schedule_interval, 1)
        self._table = ConnectionTable(
            max_connections=max_connections,
            per_client_max=per_client_max_connections,
            exempt=exempt,
            max_idle_connections=max_idle_connections,
            default_inactivity_timeout=default_inactivity_timeout,
            schedule_interval=schedule_interval,
        )
        self._accept = AcceptPolicy(
            throttle,
            accept_batch,
            float(accept_error_pause),
            float(accept_error_grace),
            propagate_handler_errors,
            access_log,
            _accept_rate(
                max_accept_rate,
                accept_burst,
                per_client_max_accept_rate,
                per_client_accept_burst,
                exempt,
            ),
        )

    @property
    def max_connections(self) -> int | None:
        return self._table.throttle.max_connections

    # The constructor's settings, read-only: the table and the accept policy own them.
    @property
    def throttle_mode(self) -> ThrottleMode:
        return self._accept.throttle_mode

    @property
    def accept_batch(self) -> int:
        return self._accept.accept_batch

    @property
    def accept_error_pause(self) -> float:
        return self._accept.accept_error_pause

    @property
    def accept_error_grace(self) -> float:
        return self._accept.accept_error_grace

    @property
    def propagate_handler_errors(self) -> bool:
        return self._accept.propagate_handler_errors

    @property
    def access_log(self) -> bool:
        """Whether each closed connection gets a session-log record on
        ``trionet.access`` (the constructor's ``access_log``)."""
        return self._accept.access_log

    @property
    def default_inactivity_timeout(self) -> float | None:
        return self._table.default_inactivity_timeout

    @property
    def max_accept_rate(self) -> float | None:
        """New connections per second over the processor, or None."""
        rate = self._accept.rate
        return None if rate is None or rate.overall is None else rate.overall.rate

    @property
    def per_client_max_accept_rate(self) -> float | None:
        """New connections per second from one client address, or None."""
        rate = self._accept.rate
        return None if rate is None else rate.client_rate

    @property
    def schedule_interval(self) -> int:
        return self._table.schedule_interval

    def statistics(self) -> NetStatistics:
        """A frozen snapshot of this processor's statistics."""
        return self._table.statistics()

    # ------------------------------------------------------------------ serve
    async def serve(
        self,
        handler: Handler,
        *listen: int | AcceptOptions,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``handler`` on every port or :class:`AcceptOptions` in ``listen``.

        Binds every listen spec, then runs one accept task per listening socket
        and one task per connection running ``await handler(conn)``; reports the
        :class:`Server` through ``task_status.started`` (so
        ``server = await nursery.start(net.serve, handler, 0)`` gives the bound
        ports; :meth:`start_server` does the same, typed). Returns after
        :meth:`Server.shutdown` once every connection is closed.

        Resource handling:
          Each connection is closed when its handler returns, raises, is
          cancelled or times out; listening sockets are closed when the server
          stops. Cancelling ``serve()`` closes everything at once.

        Error handling:
          A handler's exception is logged (``trionet.server``, with traceback)
          and counted in ``handler_errors``; the server keeps serving (unless
          ``propagate_handler_errors``). Accept errors are classed as ATS does:
          an error of one incoming connection (ECONNRESET, EPROTO, the network
          errors Linux passes on, EPERM from a firewall) is counted in
          ``accept_errors_transient`` and the next one accepted; running out of
          descriptors or memory pauses accepting (``accept_errors_resource``).
          Any other error is fatal: the server stops accepting on every port,
          lets open connections finish for up to ``accept_error_grace``
          seconds, then ``serve()`` raises :class:`AcceptError`.

        Raises:
          OSError: a listen spec could not be bound (before ``started``).
          UnsupportedOptionError: an option the platform cannot provide.
          AcceptError: a fatal accept error (once the connections have ended).
          ValueError: ``max_connections`` is below the 2 connections a session
            of a ``reserve_outbound_slot`` handler needs.
        """
        await serve(self, handler, *listen, task_status=task_status)

    async def open_listeners(
        self, *listen: int | AcceptOptions, reserve_outbound_slot: bool = False
    ) -> list[ConnectionListener]:
        """Listen on every port or :class:`AcceptOptions` in ``listen`` and
        return a :class:`trio.abc.Listener` of :class:`Connection` for each
        listening socket, for ``trio.serve_listeners``, trio-websocket's ``WebSocketServer`` and any
        other server that takes trio listeners::

            listeners = await net.open_listeners(8080)
            await trio.serve_listeners(handler, listeners)

        Each :class:`ConnectionListener`'s ``accept()`` returns a connection
        that has been through everything :meth:`serve` does before a handler
        runs -- this processor's throttle and per-client limit, the PROXY
        header, the TLS handshake, socket options, statistics, its timeouts
        armed -- with the steps of different clients run concurrently (see
        :class:`ConnectionListener`, which also says how its timeouts end a
        connection outside ``serve()``).

        Args:
          listen: as :meth:`serve`'s.
          reserve_outbound_slot: the handler connects out once per client
            (a proxy): admit a client only with a second slot free and reserve
            it for ``connect(..., for_connection=conn)``, as :meth:`serve`
            does for a handler with ``reserve_outbound_slot = True``.

        Returns:
          One listener per listening socket (a host name or ``None`` may bind
          several), in listen order.

        Resource handling:
          The caller owns the listeners (``trio.serve_listeners`` closes them
          when it ends); if binding fails, nothing stays open.

        Raises:
          OSError: a listen spec could not be bound.
          UnsupportedOptionError: an option the platform cannot provide.
          ValueError: no listen spec; ``max_connections`` below 2 with
            ``reserve_outbound_slot``.
          TypeError: a listen spec that is neither a port nor ``AcceptOptions``.
        """
        return await open_connection_listeners(
            self._table, self._accept, listen, reserve_outbound_slot
        )

    async def start_server(
        self, nursery: trio.Nursery, handler: Handler, *listen: int | AcceptOptions
    ) -> Server:
        """Run :meth:`serve` in ``nursery``; return its :class:`Server` once every
        listen spec is bound.

        ``server = await net.start_server(nursery, handler, 8080)`` is
        ``await nursery.start(net.serve, handler, 8080)`` with the result typed
        (``nursery.start`` returns ``Any`` to a type checker). The server runs
        in ``nursery`` until it is shut down or the nursery is cancelled.

        Raises:
          OSError: a listen spec could not be bound (a port taken...).
          UnsupportedOptionError: an option the platform cannot provide.
          ValueError: no listen spec, or ``max_connections`` below what a
            session of ``handler`` needs (see :meth:`serve`).
          TypeError: ``handler`` is not callable, or a listen spec is neither
            a port nor an :class:`AcceptOptions`.
        """
        server: Server = await nursery.start(self.serve, handler, *listen)
        return server

    async def serve_stats(
        self,
        port: int | AcceptOptions = 0,
        *,
        host: str | None = "127.0.0.1",
        readiness: Readiness | None = None,
        extra: Sequence[ReadingsSource] = (),
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve this processor's statistics over HTTP (``/stats`` JSON with
        ATS record names, ``/metrics`` for Prometheus, ``/healthz`` and
        ``/readyz``), on loopback unless ``host`` says otherwise:
        ``await nursery.start(net.serve_stats, 9100)`` reports the
        :class:`Server`. See :func:`trionet.serve_stats`."""
        await serve_stats(
            self.statistics,
            port,
            host=host,
            readiness=readiness,
            extra=extra,
            task_status=task_status,
        )

    # ---------------------------------------------------------------- connect
    async def connect(
        self,
        host: str,
        port: int = 0,
        options: ConnectOptions | None = None,
        *,
        for_connection: Connection | None = None,
    ) -> Connection:
        """Open a TCP connection to ``host:port`` (Netty ``Bootstrap.connect``),
        or a Unix socket connection to ``"unix:/path"``.

        Returns once the TCP handshake is complete (Netty's ``channelActive``);
        nothing is read until the caller reads. An IP literal is used as is;
        a name goes through ``options.resolver`` (default ``getaddrinfo``), and
        every address it returns is raced with RFC 8305 happy eyeballs.
        ``options.connect_timeout`` covers resolution and every attempt together.

        Args:
          host: a host name or an IPv4/IPv6 literal (``"[::1]"`` accepted);
            or ``"unix:/path"`` (``"unix:@name"``: a Linux abstract name) for
            a Unix domain socket, which has no resolver, happy eyeballs,
            local address or family (asking for them is a ``ValueError``);
            TLS over it needs ``options.server_hostname``.
          port: 1..65535 (0, or left out, for a Unix socket).
          options: a :class:`ConnectOptions`; ``None`` for the defaults.
          for_connection: the inbound connection this one is made for. If
            ``serve()`` reserved an outbound slot with it (its handler has
            ``reserve_outbound_slot = True``), the connect takes that slot
            instead of checking ``max_connections``; otherwise (or a second
            time) it is checked as usual. With
            ``options.send_proxy_protocol``, its addresses are the ones the
            PROXY header carries.

        Returns:
          A :class:`Connection` (``inbound=False``), counted in
          ``connections_currently_open`` and toward ``max_connections`` until
          closed, with the options' inactivity/active timeouts (or the
          processor's ``default_inactivity_timeout``).

        Resource handling:
          Every socket opened on the way is closed on failure, timeout or
          cancellation, at any stage; the caller owns the returned connection.

        Raises:
          ThrottledError: ``max_connections`` reached (``connections_throttled_out``).
          ResolveError: the name could not be resolved.
          ConnectTimeoutError: ``connect_timeout`` passed
            (``connection timed out after 5000 ms: example.com:80``).
          ConnectError: every attempt failed (``errno`` kept, ``__cause__`` the
            ``OSError``); the message ends with ``: host:port``.
          UnsupportedOptionError: a socket option the platform cannot provide.
          TypeError: ``host`` is not a non-empty str, ``port`` not an int,
            ``options`` not a :class:`ConnectOptions`, or ``for_connection``
            not a :class:`Connection`.
          ValueError: ``port`` is outside 1..65535 (not 0 for a Unix socket),
            a Unix socket path is malformed, or ``host`` (an IP
            literal) or ``options.family`` is not of the family
            ``options.local_address`` asks for.
        """
        return await connect(self._table, host, port, options, for_connection=for_connection)


async def serve_stats(
    source: StatisticsSource,
    port: int | AcceptOptions = 0,
    *,
    host: str | None = "127.0.0.1",
    readiness: Readiness | None = None,
    extra: Sequence[ReadingsSource] = (),
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``source()``'s statistics over HTTP at ``/stats`` and ``/metrics``,
    and health checks at ``/healthz`` and ``/readyz``.

    ``server = await nursery.start(serve_stats, net.statistics, 9100)``; or
    :meth:`NetProcessor.serve_stats`, which passes its own ``statistics``.

    ``/metrics`` names are ``trionet_`` and the record name after
    ``proxy.process.`` (``trionet_net_read_bytes_total``), the ATS record in
    each HELP line, with a ``trionet_build_info{version="..."}`` gauge.
    ``/healthz`` answers 200 while the page runs; ``/readyz`` 200 while
    ``readiness`` says ready, else 503 and the reason. Shut the served
    server down in this order, as the ``trionet`` command does: call
    ``readiness.not_ready("shutting down")``, then ``server.shutdown(grace)``;
    shut the page down last, once the server has closed.

    The page runs on a small processor of its own (``server.processor``), so
    scraping neither changes the numbers it reports nor competes for the
    served processor's ``max_connections`` -- a processor at its limit can
    still be inspected. It is built to stay reachable on a hostile network:

    - a request must be complete 5 s after the connection opened (in total,
      however slowly it trickles in), else 408; a kept-alive connection may
      wait 10 s for its next request, which then has 5 s; a response must be
      taken within 10 s;
    - connections that owe a request (not yet complete, or between requests)
      are evictable: when more than 64 are, the oldest is closed, so a new
      client always gets in at once, whatever a flood of slow or silent
      connections holds; at most 256 connections in all, more are closed at
      once (never left waiting in the backlog);
    - a malformed request gets a 400 (431 for an oversized head, 413 for a
      body over 16 KiB) and a one-line INFO log on ``trionet.stats_page``,
      at most one every 10 s; an ``Accept`` header prometheus-client cannot
      use gets the Prometheus text format.

    These apply whatever ``port``'s :class:`AcceptOptions` say.

    Args:
      source: returns a fresh :class:`NetStatistics` (``net.statistics``).
      port: the port (0: any free port, see ``Server.ports``), or a full
        :class:`AcceptOptions`, which is used as given (``host`` ignored).
      host: address to bind; loopback unless told otherwise (``None`` binds
        every address).
      readiness: what ``/readyz`` answers (default: always ready).
      extra: more statistics for both documents, each a callable returning
        :class:`Reading` objects (``TcpProxy.readings``).

    Returns:
      Runs until cancelled or until the reported :class:`Server` is shut down.

    Raises:
      TypeError: ``source`` or an ``extra`` source is not callable.
      OSError: the port could not be bound.
    """
    if not callable(source):
        raise TypeError(f"source={source!r} is not callable (pass net.statistics)")
    for more in extra:
        if not callable(more):
            raise TypeError(f"serve_stats.extra: {more!r} is not callable (pass proxy.readings)")
    sources = tuple(extra)

    def readings() -> list[Reading]:
        found = net_readings(source())
        for more in sources:
            found.extend(more())
        return found

    await serve_readings(readings, port, host=host, readiness=readiness, task_status=task_status)


async def serve_readings(
    readings: ReadingsSource,
    port: int | AcceptOptions = 0,
    *,
    host: str | None = "127.0.0.1",
    readiness: Readiness | None = None,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """:func:`serve_stats` from any source of readings (a fleet's supervisor
    sums its workers' statistics into them); arguments as there."""
    handler = serve_page(readings, readiness)
    if isinstance(port, AcceptOptions):
        opts = port
    else:
        opts = AcceptOptions(port=port, host=host, inactivity_timeout=STATS_INACTIVITY_TIMEOUT)
    net = NetProcessor(
        max_connections=STATS_MAX_CONNECTIONS,
        throttle="close",
        max_idle_connections=STATS_MAX_WAITING,
    )
    await net.serve(handler, opts, task_status=task_status)


def _accept_rate(
    rate: object,
    burst: object,
    client_rate: object,
    client_burst: object,
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> AcceptRate | None:
    """The processor's connection-rate limits from its arguments, checked.

    Raises:
      ValueError: a rate that is not a positive finite number, a burst that
        is not an int >= 1, or a burst without its rate (naming each).
    """
    o = "NetProcessor"
    pairs = (
        ("max_accept_rate", rate, "accept_burst", burst),
        ("per_client_max_accept_rate", client_rate, "per_client_accept_burst", client_burst),
    )
    for rate_name, rate_value, burst_name, burst_value in pairs:
        _check_rate(o, rate_name, rate_value)
        check_opt_int(o, burst_name, burst_value, 1)
        if rate_value is None and burst_value is not None:
            raise ValueError(f"{o}.{burst_name}={burst_value!r}: needs {rate_name}")
    if rate is None and client_rate is None:
        return None
    assert isinstance(rate, float | int | None) and isinstance(client_rate, float | int | None)
    assert isinstance(burst, int | None) and isinstance(client_burst, int | None)
    return AcceptRate(
        rate=None if rate is None else float(rate),
        burst=burst or default_burst(rate or 1),
        per_client_rate=None if client_rate is None else float(client_rate),
        per_client_burst=client_burst or default_burst(client_rate or 1),
        exempt=exempt,
    )


def _check_rate(owner: str, name: str, value: object) -> None:
    """``None`` or a positive, finite number of connections per second."""
    if value is None:
        return
    try:
        number = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:  # an int too large for a float
        number = math.inf
    if isinstance(value, bool) or not 0 < number < math.inf:
        raise ValueError(
            f"{owner}.{name}={value!r}: must be a positive, finite number of "
            "connections per second, or None"
        )


# --------------------------------------------------------- the layers below
# NetProcessor's public surface is the user's; the layers above it (the iocore
# shim counts its own events in the processor's statistics) and the tests
# (which check the accounting itself: slots held, the cop's work) reach the
# table and the accept policy through these two functions, not its attributes.
def table_of(net: NetProcessor) -> ConnectionTable:
    """The :class:`~trionet._core._table.ConnectionTable` behind ``net``."""
    return net._table


def accept_policy_of(net: NetProcessor) -> AcceptPolicy:
    """The :class:`~trionet._inbound._accept.AcceptPolicy` of ``net``'s servers."""
    return net._accept
