"""The InactivityCop, rebuilt: exact per-connection deadlines at O(1) per I/O call.

ATS scans every connection once a second and compares ``now`` with
``next_inactivity_timeout_at``: timeouts are late by up to a second, and the
scan costs CPU in proportion to the number of connections even when all are
idle. The obvious trio translation -- one cancel scope per connection with its
``deadline`` moved forward on every read and write -- is exact but pushes an
entry into trio's deadline heap on every I/O call.

trionet splits the two jobs:

* Each I/O call only stores a timestamp (``Connection.last_activity``).
* One cop per processor keeps a heap of *armed* deadlines and sleeps until the
  earliest. An armed deadline is never later than the real one (activity only
  moves the real one forward), so when it comes up the cop recomputes the real
  deadline from the timestamp: if it has passed, the timeout fires; if not, the
  entry is pushed again at the real deadline (Netty's IdleStateHandler
  re-schedules for the remaining time the same way). A timeout therefore fires
  exactly at ``last_activity + timeout``, a busy connection costs one heap push
  per timeout period rather than per I/O call, and an idle server does no work
  at all between deadlines.
* Before an inactivity timeout fires, the cop asks the kernel whether it
  still holds unsent bytes of the connection and the peer has acked more
  since the last look: a slow but steady reader keeps a connection alive
  while one ``send`` has put megabytes in the kernel and the writer sleeps.
  The look is one syscall at expiry only, so I/O calls still cost just a
  timestamp store; with unsent bytes, a timeout fires between T and 2T after
  the last progress (see ``_connection``'s "kernel progress of a send").
* Firing cancels the connection's cancel scope(s) -- the scope its handler task
  runs in, and any ``conn.enforce_timeouts()`` block -- and closes it.

The cop runs as a trio *system task* (started lazily, once per ``trio.run``),
so outbound connections made outside any server get the same enforcement; it
never raises (a failure there would crash the run), and it holds only weak
interest in connections: entries of closed connections are dropped when they
come up, and the heap is compacted when stale entries outnumber live ones.

The arming state is the cop's own: which heap entry of a connection is live
is a dict here, not fields on the connection, so a connection without
timeouts carries nothing for the cop. What the cop needs from a connection
is the :class:`Timed` protocol below.

Keep-alive eviction lives here too: the idle set is an insertion-ordered dict,
so "oldest idle first" is the dict's first key.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

import trio

if TYPE_CHECKING:
    from ._stats import Counters

__all__ = ["TimedOut", "Timed", "TimeoutCop"]

logger = logging.getLogger("trionet.timeouts")

TimedOut: TypeAlias = Literal["inactivity", "active", "evicted"]
# Exported and described as trionet.TimedOut.


class Timed(Protocol):
    """What the cop needs from a connection (``trionet.Connection`` is one).

    The two methods are private to trionet: the cop is their only caller."""

    @property
    def closed(self) -> bool: ...

    def _deadline(self) -> tuple[float, TimedOut]:
        """The earliest pending deadline (``math.inf``: none) and its kind."""
        ...

    def _kernel_progressed(self, now: float) -> bool:
        """Asked when the inactivity deadline is due: has the kernel delivered
        more of the connection's unsent bytes since the last look? If so that
        is activity at ``now`` (``_deadline`` then moves)."""
        ...

    def _fire_timeout(self, why: TimedOut) -> None:
        """The deadline passed (or the connection was evicted): end it."""
        ...


# (deadline, sequence number, connection): the entry is live while the cop's
# _armed[connection] is its sequence number.
_Entry = tuple[float, int, Timed]


class TimeoutCop:
    """Deadline bookkeeping for every connection of one processor."""

    def __init__(self, counters: Counters, max_idle_connections: int | None = None) -> None:
        self._counters = counters
        self._max_idle = max_idle_connections
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._stale = 0  # heap entries whose connection has re-armed or closed since
        self._armed: dict[Timed, int] = {}  # connection -> sequence number of its live entry
        self._token: trio.lowlevel.TrioToken | None = None
        self._sleep: trio.CancelScope | None = None
        self._idle: dict[Timed, None] = {}
        # For tests and bench/: how often the cop woke and pushed a deadline.
        self.wakeups: int = 0
        self.pushes: int = 0

    # ------------------------------------------------------------ arming
    def arm(self, conn: Timed, deadline: float) -> None:
        """Arm a connection that was never armed (a new one) at ``deadline``,
        its earliest deadline: the per-connection part of the accept path, so
        no disarm and no second deadline computation."""
        self._push(deadline, conn)

    def rearm(self, conn: Timed) -> None:
        """Re-read ``conn``'s timeouts after one was set or cancelled."""
        self._disarm(conn)
        deadline, _ = conn._deadline()
        if deadline != math.inf and not conn.closed:
            self._push(deadline, conn)

    def _disarm(self, conn: Timed) -> None:
        # Entries are deleted lazily: forgetting the live one makes it stale.
        if self._armed.pop(conn, None) is not None:
            self._stale += 1

    def _push(self, deadline: float, conn: Timed) -> None:
        self._ensure_running()
        seq = next(self._seq)
        heapq.heappush(self._heap, (deadline, seq, conn))
        self._armed[conn] = seq
        self.pushes += 1
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
        if self._stale > 32 and self._stale * 2 > len(self._heap):
            # Amortised O(1): at least len/2 re-arms happened since the last compaction.
            armed = self._armed
            self._heap = [e for e in self._heap if armed.get(e[2]) == e[1]]
            heapq.heapify(self._heap)
            self._stale = 0

    def _ensure_running(self) -> None:
        token = trio.lowlevel.current_trio_token()
        if token is self._token:
            return
        # First use in this trio.run (a processor may outlive one run in tests):
        # entries from an earlier run belong to connections of that run.
        self._token = token
        self._heap.clear()
        self._armed.clear()
        self._stale = 0
        self._sleep = None
        trio.lowlevel.spawn_system_task(self._run, name="trionet.TimeoutCop")

    # ------------------------------------------------------------- the task
    async def _run(self) -> None:
        token = self._token
        while self._token is token:
            deadline = self._heap[0][0] if self._heap else math.inf
            with trio.CancelScope(deadline=deadline) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            self.wakeups += 1
            self._expire(trio.current_time())

    def _expire(self, now: float) -> None:
        heap, armed = self._heap, self._armed
        while heap and heap[0][0] <= now:
            _, seq, conn = heapq.heappop(heap)
            if armed.get(conn) != seq:
                self._stale -= 1
                continue
            deadline, why = conn._deadline()
            if deadline <= now and why == "inactivity" and conn._kernel_progressed(now):
                # Idle in user space, but the kernel is still delivering our
                # bytes to a reading peer: that is progress (see _connection's
                # "kernel progress of a send"); one syscall, at expiry only.
                deadline, why = conn._deadline()
            if deadline > now:
                # Activity since this entry was armed: re-arm at the real deadline.
                seq = next(self._seq)
                heapq.heappush(heap, (deadline, seq, conn))
                armed[conn] = seq
                self.pushes += 1
                continue
            del armed[conn]
            try:
                conn._fire_timeout(why)
            except Exception:  # a shim hook must never take the cop down
                logger.exception("timeout handling failed for %r", conn)

    # -------------------------------------------------------- keep-alive idle
    def set_idle(self, conn: Timed, idle: bool) -> None:
        if idle:
            self._idle[conn] = None
            self._counters.idle_connections += 1
            limit = self._max_idle
            while limit is not None and len(self._idle) > limit:
                oldest = next(iter(self._idle))
                self.forget(oldest)
                oldest._fire_timeout("evicted")
        else:
            self.forget(conn)

    def forget(self, conn: Timed) -> None:
        """Drop ``conn`` from the idle set (when marked busy)."""
        if self._idle.pop(conn, 0) is None:
            self._counters.idle_connections -= 1

    def closed(self, conn: Timed) -> None:
        """``conn`` closed: drop its deadline and its idle mark."""
        self._disarm(conn)
        self.forget(conn)
