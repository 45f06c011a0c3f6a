"""``ConnectionTable``: the open connections of one processor, as accounting.

One object owns what every connection of a processor shares: the id
sequence, the statistics counters, the throttle (how many are open, per
client), the timeout cop, and the parking lot where accept loops wait for a
slot. It opens a connection (counts it, applies the default inactivity
timeout) and releases it (uncounts it, wakes a parked accept loop) -- the only
two places ``connections_currently_open`` moves, so the gauge returns to 0
after every kind of ending. It is the :class:`~trionet._core._connection.Owner`
of every connection it opens.

``NetProcessor`` is a thin facade over one table; the accept loop
(``trionet._inbound``) and ``connect`` (``trionet._outbound``) work on the
table, not on the facade.

The throttle is replaceable, once, before anything is open
(:meth:`ConnectionTable.use_throttle`): a worker of a fleet counts through a
``Throttle`` subclass whose counts the other workers see
(``trionet._apps._workers._shared``), so that the limits apply to the fleet.
Every admission goes through the throttle's ``at_limit`` /
``client_at_limit`` / ``acquire`` / ``count_client`` / ``release``, so that
is the whole interface; a table that keeps its own ``Throttle`` pays nothing.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterable
from typing import final

import trio

from .._base._addr import Network, SocketAddress
from ._connection import Connection
from ._stats import Counters, NetStatistics
from ._throttle import Throttle
from ._timeouts import TimeoutCop
from ._wire import DEFAULT_SCHEDULE_INTERVAL, Wire

__all__ = ["ConnectionTable", "Reservation"]


@final
class ConnectionTable:
    """The connections of one processor: ids, counters, throttle, cop.

    Args:
      max_connections / per_client_max / exempt: the :class:`Throttle`'s limits.
      max_idle_connections: keep-alive eviction limit (the cop's).
      default_inactivity_timeout: given to connections opened without one.
      schedule_interval: a wire call that did not wait is followed by a
        schedule point when it is this many such calls in a row (1: every call);
        see ``trionet._core._wire``, "Checkpoints".

    Attributes:
      counters: the live statistics (every connection counts here).
      throttle: open connections, globally and per client.
      exempt: the networks exempt from the per-client limit (as given).
      cop: the timeout cop.
      schedule_interval: as the argument.
      unyielded_calls: wire calls of this table's connections since the last
        one that waited or yielded (the schedule-point policy's count).
    """

    __slots__ = (
        "_ids",
        "_slot_freed",
        "cop",
        "counters",
        "default_inactivity_timeout",
        "exempt",
        "schedule_interval",
        "throttle",
        "unyielded_calls",
    )

    def __init__(
        self,
        *,
        max_connections: int | None = None,
        per_client_max: int | None = None,
        exempt: Iterable[Network] = (),
        max_idle_connections: int | None = None,
        default_inactivity_timeout: float | None = None,
        schedule_interval: int = DEFAULT_SCHEDULE_INTERVAL,
    ) -> None:
        self.counters: Counters = Counters()
        self.exempt: tuple[Network, ...] = tuple(exempt)
        self.throttle: Throttle = Throttle(max_connections, per_client_max, self.exempt)
        self.cop: TimeoutCop = TimeoutCop(self.counters, max_idle_connections)
        self.default_inactivity_timeout: float | None = default_inactivity_timeout
        self.schedule_interval: int = schedule_interval
        self.unyielded_calls: int = 0
        self._ids = itertools.count(1)
        self._slot_freed = trio.lowlevel.ParkingLot()

    def statistics(self) -> NetStatistics:
        """A frozen snapshot of the counters."""
        return self.counters.snapshot()

    def use_throttle(self, throttle: Throttle) -> None:
        """Count through ``throttle`` from now on (a fleet's shared accounting,
        with this table's limits).

        Accept loops and connects read ``self.throttle`` when they start, so
        this is only allowed while nothing is open or accepting.

        Raises:
          RuntimeError: a connection or reservation is open, or a server of
            this table is accepting.
        """
        counters = self.counters
        if self.throttle.open or counters.accepts_currently_open:
            raise RuntimeError(
                f"cannot change the throttle with {self.throttle.open} connection(s) open "
                f"and {counters.accepts_currently_open} listener(s) accepting"
            )
        self.throttle = throttle

    # ---------------------------------------------------------- open/release
    def open(
        self,
        sock: socket.socket | trio.socket.SocketType,
        *,
        inbound: bool,
        client: str | None,
        peer_address: SocketAddress,
        inactivity_timeout: float | None = None,
        active_timeout: float | None = None,
        scope: trio.CancelScope | None = None,
        reserve: bool = False,
    ) -> Connection:
        """Wrap a connected socket and count it as open. The caller has already
        checked the throttle (for two slots with ``reserve``: the second is
        held for the connection's outbound connect, see
        :meth:`Connection._take_reservation`); ``client`` is the per-client key
        (None: not counted per client); ``scope`` the handler task's cancel scope."""
        counters = self.counters
        if inactivity_timeout is None and self.default_inactivity_timeout is not None:
            inactivity_timeout = self.default_inactivity_timeout
            counters.default_inactivity_timeout_applied += 1
        self.throttle.acquire(client)
        reservation = Reservation(self) if reserve else None
        counters.connections_currently_open += 1
        # By position: see Connection.__init__.
        return Connection(
            sock,
            next(self._ids),
            self,
            inbound,
            peer_address,
            client,
            inactivity_timeout,
            active_timeout,
            scope,
            reservation,
        )

    def release(self, conn: Wire, client: str | None) -> None:
        """Called exactly once per connection, from ``Connection.close``."""
        self.throttle.release(client)
        self.counters.connections_currently_open -= 1
        # Every Wire this table opens is a Connection (typing.cast would be a
        # call per connection; the ignore costs nothing).
        self.cop.closed(conn)  # type: ignore[arg-type]
        self.slot_freed()

    def admit_client(self, host: str) -> bool:
        """Count one more connection against ``host`` unless it is at the
        per-client limit (counted in ``per_client_connections_throttled_in``)."""
        throttle = self.throttle
        if throttle.client_at_limit(host):
            self.counters.per_client_connections_throttled_in += 1
            return False
        throttle.count_client(host)
        return True

    # ------------------------------------------------------------------ slots
    async def wait_for_slot(self) -> None:
        """Park until a connection closes (or a reservation is given back)."""
        await self._slot_freed.park()

    def slot_freed(self) -> None:
        """Wake every task parked in :meth:`wait_for_slot`."""
        if self._slot_freed:
            self._slot_freed.unpark_all()

    def parked(self) -> int:
        """How many tasks wait for a slot (accept loops paused at the limit)."""
        return self._slot_freed.statistics().tasks_waiting

    def reserve(self) -> Reservation:
        """Hold a slot while a connection is being made (see :class:`Reservation`)."""
        return Reservation(self)


@final
class Reservation:
    """A throttle slot held by a ``connect()`` in progress, so that concurrent
    connects (and the accept loops) cannot overshoot ``max_connections`` while
    it resolves and races; handed over to the connection it makes."""

    __slots__ = ("_table", "held")

    def __init__(self, table: ConnectionTable) -> None:
        self._table = table
        table.throttle.acquire(None)
        self.held: bool = True

    def hand_over(self) -> None:
        """Give the slot up for the Connection about to be created, whose own
        acquire follows with no checkpoint between (so no task can take it)."""
        if self.held:
            self.held = False
            self._table.throttle.release(None)

    def release(self) -> None:
        """Give the slot back (the connect failed): wake paused accept loops."""
        if self.held:
            self.hand_over()
            self._table.slot_freed()
