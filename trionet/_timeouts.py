"""The InactivityCop, rebuilt: exact per-connection deadlines at O(1) per I/O call.

ATS scans every connection once a second and compares ``now`` with
``next_inactivity_timeout_at``: timeouts are late by up to a second, and the
scan costs CPU in proportion to the number of connections even when all are
idle. The obvious trio translation -- one cancel scope per connection with its
``deadline`` moved forward on every read and write -- is exact but pushes an
entry into trio's deadline heap on every I/O call.

trionet splits the two jobs:

* Each I/O call only stores a timestamp (``Connection._last_activity``).
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

Keep-alive eviction lives here too: the idle set is an insertion-ordered dict,
so "oldest idle first" is the dict's first key.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._connection import Connection
    from ._stats import Counters

__all__ = ["TimeoutCop"]

logger = logging.getLogger("trionet.timeouts")

_Entry = tuple[float, int, "Connection", int]


class TimeoutCop:
    """Deadline bookkeeping for every connection of one processor."""

    def __init__(self, counters: Counters, max_idle_connections: int | None = None) -> None:
        self._counters = counters
        self._max_idle = max_idle_connections
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._stale = 0  # heap entries whose connection has re-armed or closed since
        self._token: trio.lowlevel.TrioToken | None = None
        self._sleep: trio.CancelScope | None = None
        self._idle: dict[Connection, None] = {}
        # For tests and bench/: how often the cop woke and pushed a deadline.
        self.wakeups = 0
        self.pushes = 0

    # ------------------------------------------------------------ arming
    def rearm(self, conn: Connection) -> None:
        """Re-read ``conn``'s timeouts after one was set or cancelled."""
        self._disarm(conn)
        deadline, _ = conn._deadline()
        if deadline != math.inf and not conn.closed:
            self._push(deadline, conn)

    def _disarm(self, conn: Connection) -> None:
        # Entries are deleted lazily: bumping the generation makes the old one stale.
        if conn._cop_armed:
            conn._cop_armed = False
            self._stale += 1
        conn._cop_gen += 1

    def _push(self, deadline: float, conn: Connection) -> None:
        self._ensure_running()
        heapq.heappush(self._heap, (deadline, next(self._seq), conn, conn._cop_gen))
        self.pushes += 1
        conn._cop_armed = True
        if self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline
        if self._stale > 32 and self._stale * 2 > len(self._heap):
            # Amortised O(1): at least len/2 re-arms happened since the last compaction.
            self._heap = [e for e in self._heap if e[3] == e[2]._cop_gen]
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
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, conn, gen = heapq.heappop(heap)
            if gen != conn._cop_gen:
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
                heapq.heappush(heap, (deadline, next(self._seq), conn, gen))
                self.pushes += 1
                continue
            conn._cop_armed = False
            conn._cop_gen += 1
            try:
                conn._fire_timeout(why)
            except Exception:  # a shim hook must never take the cop down
                logger.exception("timeout handling failed for %r", conn)

    # -------------------------------------------------------- keep-alive idle
    def set_idle(self, conn: Connection, idle: bool) -> None:
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

    def forget(self, conn: Connection) -> None:
        """Drop ``conn`` from the idle set (when marked busy)."""
        if self._idle.pop(conn, 0) is None:
            self._counters.idle_connections -= 1

    def closed(self, conn: Connection) -> None:
        """``conn`` closed: drop its deadline and its idle mark."""
        self._disarm(conn)
        self.forget(conn)
