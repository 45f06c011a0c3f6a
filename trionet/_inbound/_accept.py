"""The accept path (ATS ``NetAccept``): one loop per listening socket that
accepts in batches, classes accept errors, admits or refuses each client
against the throttle, and starts one task per admitted connection.

One accepted socket, step by step::

    Acceptor.run                 (one per listening socket)
    ├── at the limit ("pause")   park until a connection closes (ConnectionTable)
    ├── its Room full            park until one is taken (ConnectionListener only)
    ├── accept() ... x batch     EAGAIN: wait readable; errors: classed (below)
    └── _admit                   throttle / per-client limit / rate limits, socket options
        └── table.open + start   Connection counted, timeouts armed; ``task`` in ``nursery``:
            ├── serve():         PROXY header, TLS handshake, handler(conn)
            │                    (trionet._inbound._server.HandlerTasks)
            └── open_listeners(): PROXY header, TLS handshake, then handed to accept()
                                 (trionet._inbound._conn_listener.ConnectionListener)

The loop and the admission are written once, here; what follows an admission
is the ``task`` each user of the loop passes, and both run the same
pre-handler steps (:func:`trionet._inbound._prepare.prepare_inbound`).

:class:`AcceptPolicy` is what a processor's servers share: the settings
``NetProcessor`` was built with and the rate-limited warnings.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, TypeAlias, final

import trio

from .._base._addr import SocketAddress
from .._base._errors import AcceptError
from .._base._ratelog import RateLimitedLog
from .._base._sockopt import apply_socket_options
from .._core._access_log import log_refused
from .._core._connection import Connection
from .._core._rate import AcceptRate
from .._core._stats import Counters
from .._core._table import ConnectionTable
from .._core._throttle import ThrottleMode
from ._listen import Listener, unix_address

__all__ = [
    "slots_per_connection",
    "check_slots",
    "DEFAULT_ACCEPT_BATCH",
    "DEFAULT_ACCEPT_ERROR_GRACE",
    "AcceptPolicy",
    "Acceptor",
    "ConnectionTask",
    "Handler",
    "Room",
    "on_accept_error",
]

logger = logging.getLogger("trionet.server")

Handler: TypeAlias = Callable[[Connection], Awaitable[object]]
# Exported and described as trionet.Handler.

ConnectionTask = Callable[[Connection, trio.CancelScope], Awaitable[None]]
"""What runs for each admitted connection, in its own task: given the
connection and the cancel scope its timeouts cancel (registered with it at
``table.open``), it runs the pre-handler steps and whatever follows."""


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

# Linux copies a listening socket's options (TCP_NODELAY, SO_KEEPALIVE, SO_LINGER,
# buffer sizes, IP_TOS, SO_MARK, TCP_NOTSENT_LOWAT) to every socket accept()
# returns, so setting them on the listener applies them to accepted sockets with
# no syscalls per connection; tests/test_options.py checks this with getsockopt.
# Elsewhere they are set on each accepted socket, as ATS does.
_INHERITS_OPTIONS: Final = hasattr(socket, "AF_NETLINK")


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
def slots_per_connection(handler: Handler) -> int:
    """2 for a handler that declares it connects out once per client, else 1."""
    return 2 if getattr(handler, "reserve_outbound_slot", False) is True else 1


def check_slots(table: ConnectionTable, need: int, what: str) -> None:
    """Refuse a limit no session could ever fit in.

    Raises:
      ValueError: ``max_connections`` is below ``need`` (naming ``what`` needs them).
    """
    limit = table.throttle.max_connections
    if limit is not None and limit < need:
        raise ValueError(
            f"max_connections={limit}: a session of {what} needs "
            f"{need} connections (client and upstream)"
        )


class Room(Protocol):
    """A bound on admitted connections nobody has taken yet (a
    ``ConnectionListener``'s ready queue): the loop accepts only while there
    is room, so a listener nobody calls ``accept()`` on leaves clients in the
    kernel backlog, as a plain socket does."""

    def full(self) -> bool: ...

    async def wait_for_room(self) -> None: ...

    def admitted(self) -> None:
        """A connection's task was started (it has not run yet): counted as
        taking room until it runs, so the next check in this loop sees it."""


@final
class AcceptPolicy:
    """How every server of one processor accepts (see ``NetProcessor``'s
    arguments of the same names), and the warnings they share: "too many
    connections" at most once per 10 minutes per processor, as ATS."""

    __slots__ = (
        "accept_batch",
        "accept_error_grace",
        "accept_error_pause",
        "access_log",
        "propagate_handler_errors",
        "rate",
        "resource_log",
        "throttle_log",
        "throttle_mode",
    )

    def __init__(
        self,
        throttle_mode: ThrottleMode,
        accept_batch: int,
        accept_error_pause: float,
        accept_error_grace: float,
        propagate_handler_errors: bool,
        access_log: bool = False,
        rate: AcceptRate | None = None,
    ) -> None:
        self.throttle_mode: ThrottleMode = throttle_mode
        self.rate: AcceptRate | None = rate  # the connection-rate limits, if any
        self.accept_batch: int = accept_batch
        self.accept_error_pause: float = accept_error_pause
        self.accept_error_grace: float = accept_error_grace
        self.propagate_handler_errors: bool = propagate_handler_errors
        # One record per closed connection on trionet.access (_core._access_log).
        self.access_log: bool = access_log
        self.throttle_log: RateLimitedLog = RateLimitedLog(THROTTLE_LOG_INTERVAL, logger)
        self.resource_log: RateLimitedLog = RateLimitedLog(RESOURCE_LOG_INTERVAL, logger)


async def on_accept_error(
    exc: OSError, port: int, counters: Counters, policy: AcceptPolicy
) -> None:
    """React to an ``accept()`` failure on ``port`` by its class (above):
    retry at once, or count, warn (rate-limited) and pause.

    Raises:
      AcceptError: a fatal errno, naming the port and the errno.
    """
    code = exc.errno
    if code in _ACCEPT_IGNORE:
        await trio.lowlevel.checkpoint()
    elif code in _ACCEPT_TRANSIENT:
        counters.accept_errors_transient += 1
        await trio.lowlevel.checkpoint()
    elif code in _ACCEPT_RESOURCE:
        counters.accept_errors_resource += 1
        pause = policy.accept_error_pause
        policy.resource_log(
            logging.WARNING,
            "accept on port %d failed: %s; pausing %.0f ms and retrying",
            port,
            exc,
            pause * 1000,
        )
        await trio.sleep(pause)
    else:
        name = errno.errorcode.get(code or 0, str(code))
        raise AcceptError(
            code, f"accept on port {port} failed with {name}: {exc.strerror}"
        ) from exc


@final
class Acceptor:
    """The accept loop of one listening socket: accepts, admits, and starts
    ``task(conn, scope)`` in ``nursery`` for each admitted connection.

    Args:
      need: throttle slots per connection (:func:`slots_per_connection`).
      room: when given, accept only while it is not full.
    """

    __slots__ = (
        "_listener",
        "_need",
        "_nursery",
        "_policy",
        "_room",
        "_table",
        "_task",
        "_task_name",
    )

    def __init__(
        self,
        table: ConnectionTable,
        policy: AcceptPolicy,
        listener: Listener,
        need: int,
        nursery: trio.Nursery,
        task: ConnectionTask,
        room: Room | None = None,
    ) -> None:
        self._table = table
        self._policy = policy
        self._listener = listener
        self._need = need  # 2: a slot held for its upstream
        self._nursery = nursery
        self._task = task
        # Every connection task of this loop gets this one name. Left to trio,
        # each task would get its own copy of "module.qualname" built at spawn
        # time: about 100 bytes per idle connection, and the heap fragments
        # around them (the idle benchmark measured 140 bytes of RSS per
        # connection more without it).
        self._task_name = f"{task.__module__}.{task.__qualname__}"
        self._room = room

    async def run(self) -> None:
        """Accept until cancelled.

        Raises:
          AcceptError: a fatal accept error (naming the port and the errno).
        """
        sock = self._listener.socket
        exempt = self._listener.options.backdoor
        pause = self._policy.throttle_mode == "pause"
        table = self._table
        throttle = table.throttle
        batch = self._policy.accept_batch
        need = self._need
        room = self._room
        rate = None if exempt else self._policy.rate
        in_row = 0
        while True:
            if pause and not exempt and throttle.at_limit(need):
                # Event-driven: parked until a connection closes (ConnectionTable.release).
                await table.wait_for_slot()
                continue
            if pause and rate is not None and (wait := rate.pause_for(trio.current_time())):
                # The processor's rate limit: clients wait in the backlog until
                # the bucket has a token (trionet._core._rate).
                await trio.sleep(wait)
                continue
            if room is not None and room.full():
                await room.wait_for_room()
                continue
            try:
                client, addr = sock.accept()
            except BlockingIOError:
                in_row = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                in_row = 0
                await on_accept_error(exc, self._listener.port, table.counters, self._policy)
                continue
            self._admit(client, addr)
            in_row += 1
            if in_row >= batch:
                # ATS additional_accepts: a flood must not starve established
                # connections, so yield after a batch even if more are pending.
                in_row = 0
                await trio.lowlevel.checkpoint()

    def _admit(self, client: socket.socket, addr: SocketAddress) -> None:
        """Decide about one accepted socket; start its task or close it."""
        opts = self._listener.options
        table = self._table
        throttle = table.throttle
        counters = table.counters
        if isinstance(addr, tuple):  # a TCP peer: (host, port[, flow, scope])
            host: str | None = addr[0]
        else:  # a Unix socket's peer has no address the per-client limits could key on
            host, addr = None, unix_address(addr)
        if not opts.backdoor:
            if throttle.at_limit(self._need):  # only reachable in "close" mode
                client.close()
                counters.connections_throttled_in += 1
                self._policy.throttle_log(logging.WARNING, "too many connections, throttling")
                if self._policy.access_log:
                    log_refused(addr, self._listener.port)
                return
            if opts.proxy_protocol:
                # The socket's peer is the load balancer: the per-client limit
                # applies to the client the PROXY header names (trionet._inbound._prepare).
                host = None
            elif host is not None and throttle.client_at_limit(host):
                client.close()
                counters.per_client_connections_throttled_in += 1
                logger.debug("per-client limit reached for %s, closing", host)
                if self._policy.access_log:
                    log_refused(addr, self._listener.port)
                return
        else:
            host = None  # backdoor connections are not counted per client
        if not opts.backdoor and self._rate_refused(client, host):
            if self._policy.access_log:
                log_refused(addr, self._listener.port, "rate_limited")
            return
        counters.total_accepts += 1
        if not _INHERITS_OPTIONS:
            try:
                apply_socket_options(client, opts.socket)
            except OSError as exc:  # the peer may already be gone
                client.close()
                logger.debug("dropping connection from %r: %s", addr, exc)
                return
        scope = trio.CancelScope()
        # The stdlib socket as it is: the connection's wire works on it directly
        # (no trio socket object per connection; Wire makes it non-blocking).
        conn = table.open(
            client,
            inbound=True,
            client=host,
            # Kept (about 90 bytes per connection): a lazy getpeername() would
            # return nothing once the peer has reset, and logs need the address.
            peer_address=addr,
            inactivity_timeout=opts.inactivity_timeout,
            active_timeout=opts.active_timeout,
            scope=scope,
            reserve=self._need > 1,
        )
        self._nursery.start_soon(self._task, conn, scope, name=self._task_name)
        if self._room is not None:
            self._room.admitted()

    def _rate_refused(self, client: socket.socket, host: str | None) -> bool:
        """The connection-rate limits: close ``client`` and count it if its
        token is missing (in "pause" mode only the per-client bucket can be
        empty here: the loop waited for the processor's)."""
        rate = self._policy.rate
        if rate is None or (refusal := rate.admit(host, trio.current_time())) is None:
            return False
        client.close()
        self._table.counters.connections_rate_limited_in += 1
        logger.debug("%s limit reached for %s, closing", refusal, host or "a client")
        return True
