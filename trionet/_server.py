"""``NetProcessor`` and ``Server``: accept loops, connection tasks, throttle,
accept-error classes, graceful shutdown (ATS ``UnixNetProcessor`` + ``NetAccept``).

Task layout of one ``serve()`` call::

    serve()
    └── handler nursery            (cancel scope = shutdown grace deadline)
        ├── accept nursery         (cancel scope = stop accepting)
        │   └── one accept task per listening socket
        └── one task per connection: `with conn scope: await handler(conn)`

The accept nursery sits *inside* the handler nursery's body, so stopping the
accept tasks (shutdown, or a fatal accept error) leaves the connection tasks
running until they finish or the grace deadline cancels them (``shutdown``'s
``grace``; ``accept_error_grace`` after a fatal accept error, which ``serve()``
raises as :class:`AcceptError` once they are done); cancelling ``serve()``
itself cancels everything at once.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, final

import trio

from . import _connect
from ._connection import Connection, _Owner
from ._errors import AcceptError
from ._inbound import prepare_inbound
from ._listen import Listener, open_listeners
from ._options import (
    AcceptOptions,
    ConnectOptions,
    _check_bool,
    _check_int,
    _check_opt_int,
    _check_seconds,
    _to_networks,
)
from ._sockopt import apply_socket_options
from ._stats import Counters, NetStatistics
from ._throttle import THROTTLE_MODES, Throttle, ThrottleMode
from ._timeouts import TimeoutCop

__all__ = ["Handler", "NetProcessor", "Server"]

logger = logging.getLogger("trionet.server")

Handler = Callable[[Connection], Awaitable[object]]


def _errnos(*names: str) -> frozenset[int]:
    """The errno values of ``names`` this platform defines."""
    return frozenset(getattr(errno, name) for name in names if hasattr(errno, name))


# ATS accept_error_seriousness(): how the accept loop reacts to each errno.
#   ignore    -- the client gave up before we accepted (ECONNABORTED)
#   transient -- that one connection failed: count it and accept the next at once
#   resource  -- out of descriptors/memory: warn (rate-limited), pause, keep serving
#   (anything else is fatal: the server stops accepting, lets open connections
#   finish within NetProcessor.accept_error_grace, then serve() raises
#   AcceptError naming port and errno)
_ACCEPT_IGNORE: Final = frozenset({errno.ECONNABORTED})
# Linux's accept(2) reports an error already pending on the *new* connection
# as accept's own error, and its manual asks callers to retry on these as on
# EAGAIN; it returns EPERM when a firewall rule refused the connection. Each is
# the loss of one connection, not of the listening socket: the list trio's
# SocketListener ignores (ENOSR is in the resource class below).
_ACCEPT_TRANSIENT: Final = _errnos(
    "EAGAIN",
    "ECONNRESET",
    "EPIPE",
    "EPROTO",
    "EPERM",
    "ENETDOWN",
    "ENOPROTOOPT",
    "EHOSTDOWN",
    "ENONET",
    "EHOSTUNREACH",
    "EOPNOTSUPP",
    "ENETUNREACH",
    "ESOCKTNOSUPPORT",
    "EPROTONOSUPPORT",
    "ETIMEDOUT",
)
_ACCEPT_RESOURCE: Final = _errnos("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM", "EINTR", "ENOSR")

# ATS accepts up to `additional_accepts` connections per wake-up; trio's own
# accept loop takes one per scheduler pass. 32 keeps a connect flood from
# starving established connections while halving scheduler round trips per accept.
DEFAULT_ACCEPT_BATCH: Final = 32
THROTTLE_LOG_INTERVAL: Final = 600.0  # ATS: "too many connections" once per 10 min
RESOURCE_LOG_INTERVAL: Final = 10.0
# After a fatal accept error the server is going down with an error, but the
# connections it has are healthy: they get the same time to finish as a
# shutdown() without arguments gives them.
DEFAULT_ACCEPT_ERROR_GRACE: Final = 5.0


# Slot pairing. A proxy session needs two connections, the client's and its
# upstream's, and both count toward max_connections. Checking the limit for the
# client alone let the accept loop fill the last slot with a client whose
# upstream connect then hit the limit: accepted, then dropped -- in "pause" mode
# too, which promises to hold clients in the backlog, and with a limit of 1 no
# client was ever served. So a handler that opens one outbound connection per
# client says so (``reserve_outbound_slot = True``; TcpProxy does), and the
# accept loop admits a client only when both slots are free: "pause" leaves it
# in the backlog, "close" refuses it at accept (connections_throttled_in). The
# second slot is reserved with the inbound connection and handed to the
# handler's ``connect(..., for_connection=conn)``, which then cannot be
# throttled; a reservation nobody takes is given back when the client closes.
# Counting a session as one slot instead would keep max_connections from
# bounding descriptors (ATS's connections_throttle counts both sides too).
def _slots_per_connection(handler: Handler) -> int:
    """2 for a handler that declares it connects out once per client, else 1."""
    return 2 if getattr(handler, "reserve_outbound_slot", False) is True else 1


class _RateLimitedLog:
    """Log at most once per ``interval`` seconds (wall clock), counting what was
    suppressed; to ``log`` (default ``trionet.server``)."""

    def __init__(self, interval: float, log: logging.Logger = logger) -> None:
        self.interval = interval
        self._log = log
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        self._log.log(level, msg, *args)


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

    Raises:
      ValueError: a bad argument, naming it and its value (an int field given
        a bool or a float, a bool field given ``"no"``, a timeout of ``inf``...).
    """

    def __init__(
        self,
        max_connections: int | None = None,
        throttle: ThrottleMode = "pause",
        per_client_max_connections: int | None = None,
        per_client_exempt: Iterable[Any] | None = (),
        accept_batch: int = DEFAULT_ACCEPT_BATCH,
        accept_error_pause: float = 0.05,
        accept_error_grace: float = DEFAULT_ACCEPT_ERROR_GRACE,
        default_inactivity_timeout: float | None = None,
        max_idle_connections: int | None = None,
        propagate_handler_errors: bool = False,
    ) -> None:
        o = "NetProcessor"
        _check_opt_int(o, "max_connections", max_connections, 1)
        if not isinstance(throttle, str) or throttle not in THROTTLE_MODES:
            raise ValueError(f"{o}.throttle={throttle!r}: must be one of {THROTTLE_MODES}")
        _check_opt_int(o, "per_client_max_connections", per_client_max_connections, 1)
        exempt = _to_networks(
            o, "per_client_exempt", () if per_client_exempt is None else per_client_exempt
        )
        _check_int(o, "accept_batch", accept_batch, 1)
        pause, idle, grace = accept_error_pause, default_inactivity_timeout, accept_error_grace
        _check_seconds(
            o, "accept_error_pause", pause, allow_zero=False, finite=True, optional=False
        )
        _check_seconds(o, "accept_error_grace", grace, finite=True, optional=False)
        _check_seconds(o, "default_inactivity_timeout", idle, allow_zero=False, finite=True)
        _check_opt_int(o, "max_idle_connections", max_idle_connections, 0)
        _check_bool(o, "propagate_handler_errors", propagate_handler_errors)
        self.throttle_mode: ThrottleMode = throttle
        self.accept_batch = accept_batch
        self.accept_error_pause = float(accept_error_pause)
        self.accept_error_grace = float(accept_error_grace)
        self.default_inactivity_timeout = default_inactivity_timeout
        self.propagate_handler_errors = propagate_handler_errors
        self._throttle = Throttle(max_connections, per_client_max_connections, exempt)
        self._counters = Counters()
        self._cop = TimeoutCop(self._counters, max_idle_connections)
        self._owner = _Owner(self._counters, self._cop, self._release)
        self._ids = itertools.count(1)
        self._slot_freed = trio.lowlevel.ParkingLot()
        self._throttle_log = _RateLimitedLog(THROTTLE_LOG_INTERVAL)
        self._resource_log = _RateLimitedLog(RESOURCE_LOG_INTERVAL)

    @property
    def max_connections(self) -> int | None:
        return self._throttle.max_connections

    def statistics(self) -> NetStatistics:
        """A frozen snapshot of this processor's statistics."""
        return self._counters.snapshot()

    # ------------------------------------------------------- connection slots
    def _new_connection(
        self,
        sock: trio.socket.SocketType,
        *,
        inbound: bool,
        client: str | None,
        peer_address: Any = None,
        inactivity_timeout: float | None = None,
        active_timeout: float | None = None,
        reserve: bool = False,
    ) -> Connection:
        """Wrap a connected socket and count it as open. The caller has already
        checked the throttle (for two slots with ``reserve``: the second is
        held for the connection's outbound connect); ``client`` is the
        per-client key (None: not counted)."""
        conn = Connection(
            sock,
            conn_id=next(self._ids),
            owner=self._owner,
            inbound=inbound,
            peer_address=peer_address,
        )
        conn._client_key = client
        self._throttle.acquire(client)
        if reserve:
            self._throttle.acquire(None)
            conn._reserved = True
        self._counters.connections_currently_open += 1
        if inactivity_timeout is None and self.default_inactivity_timeout is not None:
            inactivity_timeout = self.default_inactivity_timeout
            self._counters.default_inactivity_timeout_applied += 1
        if inactivity_timeout is not None:
            conn._inactivity_timeout = float(inactivity_timeout)
        if active_timeout is not None:
            conn._active_deadline = conn.opened_at + active_timeout
        if inactivity_timeout is not None or active_timeout is not None:
            self._cop.rearm(conn)
        return conn

    def _release(self, conn: Connection) -> None:
        """Called exactly once per connection, from ``Connection.close``."""
        self._throttle.release(conn._client_key)
        if conn._reserved:  # reserved for an outbound connect that never took it
            conn._reserved = False
            self._throttle.release(None)
        self._counters.connections_currently_open -= 1
        self._cop.closed(conn)
        if self._slot_freed:
            self._slot_freed.unpark_all()

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
        ports). Returns after :meth:`Server.shutdown` once every connection is
        closed.

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
        if not listen:
            raise ValueError("serve() needs at least one port or AcceptOptions to listen on")
        if not callable(handler):
            raise TypeError(f"handler={handler!r} is not callable")
        need = _slots_per_connection(handler)
        if self.max_connections is not None and self.max_connections < need:
            raise ValueError(
                f"max_connections={self.max_connections}: a session of {handler!r} needs "
                f"{need} connections (client and upstream)"
            )
        specs = [AcceptOptions.coerce(spec) for spec in listen]
        listeners: list[Listener] = []
        try:
            for spec in specs:
                listeners.extend(await open_listeners(spec))
        except BaseException:
            for listener in listeners:
                listener.socket.close()
            raise
        server = Server(self, listeners)
        await server._run(handler, task_status)

    async def serve_stats(
        self,
        port: int | AcceptOptions = 0,
        *,
        host: str | None = "127.0.0.1",
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve this processor's statistics over HTTP (``/stats`` JSON with
        ATS record names, ``/metrics`` for Prometheus), on loopback unless
        ``host`` says otherwise: ``await nursery.start(net.serve_stats, 9100)``
        reports the :class:`Server`. See :func:`trionet.serve_stats`."""
        from ._stats_page import serve_stats  # the stats page builds on this module

        await serve_stats(self.statistics, port, host=host, task_status=task_status)

    # ---------------------------------------------------------------- connect
    async def connect(
        self,
        host: str,
        port: int,
        options: ConnectOptions | None = None,
        *,
        for_connection: Connection | None = None,
    ) -> Connection:
        """Open a TCP connection to ``host:port`` (Netty ``Bootstrap.connect``).

        Returns once the TCP handshake is complete (Netty's ``channelActive``);
        nothing is read until the caller reads. An IP literal is used as is;
        a name goes through ``options.resolver`` (default ``getaddrinfo``), and
        every address it returns is raced with RFC 8305 happy eyeballs.
        ``options.connect_timeout`` covers resolution and every attempt together.

        Args:
          host: a host name or an IPv4/IPv6 literal (``"[::1]"`` accepted).
          port: 1..65535.
          options: a :class:`ConnectOptions`; ``None`` for the defaults.
          for_connection: the inbound connection this one is made for. If
            ``serve()`` reserved an outbound slot with it (its handler has
            ``reserve_outbound_slot = True``), the connect takes that slot
            instead of checking ``max_connections``; otherwise (or a second
            time) it is checked as usual.

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
          TypeError / ValueError: bad ``host``, ``port`` or ``options``.
        """
        return await _connect.connect(self, host, port, options, for_connection=for_connection)

    # ------------------------------------------------------ accept (per port)
    async def _accept_loop(self, server: Server, listener: Listener, handler: Handler) -> None:
        sock = listener.socket
        opts = listener.options
        exempt = opts.backdoor
        pause = self.throttle_mode == "pause"
        throttle = self._throttle
        batch = self.accept_batch
        need = _slots_per_connection(handler)
        in_row = 0
        while True:
            if pause and not exempt and throttle.at_limit(need):
                # Event-driven: parked until a connection closes (_release).
                await self._slot_freed.park()
                continue
            try:
                client, addr = sock.accept()
            except BlockingIOError:
                in_row = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                in_row = 0
                await self._accept_error(exc, listener)
                continue
            self._admit(server, client, addr, listener, handler, need)
            in_row += 1
            if in_row >= batch:
                # ATS additional_accepts: a flood must not starve established
                # connections, so yield after a batch even if more are pending.
                in_row = 0
                await trio.lowlevel.checkpoint()

    async def _accept_error(self, exc: OSError, listener: Listener) -> None:
        code = exc.errno
        if code in _ACCEPT_IGNORE:
            await trio.lowlevel.checkpoint()
        elif code in _ACCEPT_TRANSIENT:
            self._counters.accept_errors_transient += 1
            await trio.lowlevel.checkpoint()
        elif code in _ACCEPT_RESOURCE:
            self._counters.accept_errors_resource += 1
            self._resource_log(
                logging.WARNING,
                "accept on port %d failed: %s; pausing %.0f ms and retrying",
                listener.port,
                exc,
                self.accept_error_pause * 1000,
            )
            await trio.sleep(self.accept_error_pause)
        else:
            name = errno.errorcode.get(code or 0, str(code))
            raise AcceptError(
                code, f"accept on port {listener.port} failed with {name}: {exc.strerror}"
            ) from exc

    def _admit(
        self,
        server: Server,
        client: socket.socket,
        addr: Any,
        listener: Listener,
        handler: Handler,
        need: int = 1,
    ) -> None:
        """Decide about one accepted socket; start its task or close it.
        ``need``: slots the connection takes, 2 with an outbound reservation."""
        opts = listener.options
        throttle = self._throttle
        host: str | None = addr[0] if isinstance(addr, tuple) else None
        if not opts.backdoor:
            if throttle.at_limit(need):  # only reachable in "close" mode
                client.close()
                self._counters.connections_throttled_in += 1
                self._throttle_log(logging.WARNING, "too many connections, throttling")
                return
            if opts.proxy_protocol:
                # The socket's peer is the load balancer: the per-client limit
                # applies to the client the PROXY header names (trionet._inbound).
                host = None
            elif host is not None and throttle.client_at_limit(host):
                client.close()
                self._counters.per_client_connections_throttled_in += 1
                logger.debug("per-client limit reached for %s, closing", host)
                return
        else:
            host = None  # backdoor connections are not counted per client
        self._counters.total_accepts += 1
        try:
            if not _INHERITS_OPTIONS:
                apply_socket_options(client, opts.socket)
            tsock = trio.socket.from_stdlib_socket(client)
        except OSError as exc:  # the peer may already be gone
            client.close()
            logger.debug("dropping connection from %r: %s", addr, exc)
            return
        conn = self._new_connection(
            tsock,
            inbound=True,
            client=host,
            # Kept (about 90 bytes per connection): a lazy getpeername() would
            # return nothing once the peer has reset, and logs need the address.
            peer_address=addr,
            inactivity_timeout=opts.inactivity_timeout,
            active_timeout=opts.active_timeout,
            reserve=need > 1,
        )
        server._start_connection(conn, handler, listener)

    async def _run_connection(
        self, conn: Connection, handler: Handler, opts: AcceptOptions
    ) -> None:
        scope = trio.CancelScope()
        conn._scopes = (scope,)
        try:
            with scope:
                # Plain TCP pays one test here; PROXY/TLS steps run before the
                # handler, inside the connection's scope (so its timeouts and a
                # shutdown apply), and a failure closes it without the handler.
                if (opts.proxy_protocol or opts.ssl_context is not None) and not (
                    await prepare_inbound(conn, opts, self._counters, self._throttle)
                ):
                    return
                await handler(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The peer reset or the connection was closed under the handler:
            # the connection's ending, not a bug in the handler.
            logger.debug("connection #%d ended: %r", conn.id, exc)
        except Exception as exc:
            self._counters.handler_errors += 1
            if self.propagate_handler_errors:
                raise
            logger.error(
                "handler %r failed on connection #%d from %r",
                handler,
                conn.id,
                conn.remote_address,
                exc_info=exc,
            )
        finally:
            if conn._ssl is not None and not conn.closed:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            conn.close()


# Linux copies a listening socket's options (TCP_NODELAY, SO_KEEPALIVE, SO_LINGER,
# buffer sizes, IP_TOS, SO_MARK, TCP_NOTSENT_LOWAT) to every socket accept()
# returns, so setting them on the listener applies them to accepted sockets with
# no syscalls per connection; tests/test_options.py checks this with getsockopt.
# Elsewhere they are set on each accepted socket, as ATS does.
_INHERITS_OPTIONS: Final = hasattr(socket, "AF_NETLINK")


@final
class Server:
    """A running ``serve()`` call: its listeners, statistics and shutdown.

    Obtained from ``task_status.started``:
    ``server = await nursery.start(net.serve, handler, 8080)``.
    """

    def __init__(self, processor: NetProcessor, listeners: list[Listener]) -> None:
        self.processor = processor
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self._handler_scope: trio.CancelScope | None = None
        self._accept_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._fatal: AcceptError | None = None
        self._stopping = False
        self._closed = trio.Event()

    def __repr__(self) -> str:
        return f"<trionet.Server ports={self.ports}>"

    @property
    def ports(self) -> list[int]:
        """The bound port numbers, in listen order, without repeats."""
        return list(dict.fromkeys(listener.port for listener in self.listeners))

    @property
    def stopping(self) -> bool:
        """True once :meth:`shutdown` was called (or a fatal accept error stopped it)."""
        return self._stopping

    def statistics(self) -> NetStatistics:
        """The statistics of this server's processor (servers of one processor
        share them; use one processor per server to tell them apart)."""
        return self.processor.statistics()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop the server gracefully: close the listening sockets now, let
        running handlers finish for up to ``grace`` seconds, then cancel the
        rest. Returns at once; ``serve()`` returns (and :meth:`wait_closed`
        wakes) when everything is closed. Calling it again can only shorten the
        grace period."""
        _check_seconds("Server.shutdown", "grace", grace)
        if grace is None:  # _check_seconds lets None (disabled) through
            raise ValueError("Server.shutdown.grace=None: must be a number of seconds")
        self._stopping = True
        self._accept_scope.cancel()
        if self._handler_scope is not None:
            deadline = trio.current_time() + grace
            self._handler_scope.deadline = min(self._handler_scope.deadline, deadline)

    async def wait_closed(self) -> None:
        """Wait until ``serve()`` has closed every listener and connection."""
        await self._closed.wait()

    def _start_connection(self, conn: Connection, handler: Handler, listener: Listener) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self.processor._run_connection, conn, handler, listener.options)

    async def _accept_task(self, listener: Listener, handler: Handler) -> None:
        try:
            await self.processor._accept_loop(self, listener, handler)
        except AcceptError as exc:
            # The listening socket failed, not the connections: stop accepting
            # on every port (serve() is going to fail) but end like a shutdown,
            # letting open connections finish within the grace period.
            grace = self.processor.accept_error_grace
            logger.error(
                "%s; stopping the server: no new connections, open ones get %s s to finish",
                exc,
                grace,
            )
            if self._fatal is None:
                self._fatal = exc
            self.shutdown(grace)
        finally:
            self.processor._counters.accepts_currently_open -= 1
            trio.lowlevel.notify_closing(listener.socket)
            listener.socket.close()

    async def _run(self, handler: Handler, task_status: trio.TaskStatus[Server]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._handler_scope = nursery.cancel_scope
                with self._accept_scope:
                    async with trio.open_nursery() as accepts:
                        for listener in self.listeners:
                            self.processor._counters.accepts_currently_open += 1
                            accepts.start_soon(self._accept_task, listener, handler)
                        task_status.started(self)
                # Not accepting any more; connection tasks finish (or the
                # shutdown grace deadline cancels them) before the nursery exits.
        finally:
            for listener in self.listeners:
                listener.socket.close()
            self._closed.set()
        if self._fatal is not None:
            raise self._fatal
