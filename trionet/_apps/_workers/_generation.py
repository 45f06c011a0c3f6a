"""Generations of workers: the set of worker processes started together -- at
start-up, or by a reload -- and the record the supervisor keeps of each running
worker process (:class:`WorkerProcess`: readiness, heartbeat, start-up error).

A reload starts generation *n+1* beside generation *n*; both serve the same
listening sockets (the supervisor's, see ``_sockets``) until *n+1* is ready in
full, then *n* is *retired*: its workers are asked to stop (SIGTERM: they stop
accepting and drain within the grace) and none of them is restarted again. If
*n+1* cannot start, it is retired instead and *n* serves on. Bookkeeping only:
the supervisor starts and signals the processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
from typing import final

import trio

__all__ = ["Generation", "WorkerProcess", "send_signal"]


def send_signal(proc: trio.Process, signum: int) -> None:
    """Signal ``proc`` unless it already exited (no error if it just did)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)


@final
@dataclasses.dataclass(eq=False)
class WorkerProcess:
    """One running worker process, as the supervisor sees it.

    ``last_heartbeat`` is the trio time of its last sign of life (the spawn, then
    each heartbeat); ``open_connections`` what its last heartbeat reported;
    ``dump`` collects its stack dump while a hung worker is being killed.
    """

    worker_id: int
    proc: trio.Process
    last_heartbeat: float
    ready: bool = False
    error: str | None = None
    open_connections: int = 0
    dump: list[bytes] | None = None
    dump_last: float = 0.0


@final
class Generation:
    """The workers started together: ``number`` 0 at start-up, +1 per reload.

    Attributes:
      number: 0 for the first generation, then one more per reload.
      workers: how many worker slots it has.
      procs: worker id -> the process serving that slot now.
      retired: set once its workers were asked to stop for good (a reload
        replaced it, it failed to start, or the supervisor is stopping).
      failure: why it could not start (one line), if it could not.
    """

    def __init__(self, number: int, workers: int) -> None:
        self.number = number
        self.workers = workers
        self.procs: dict[int, WorkerProcess] = {}
        self.retired = trio.Event()
        self.failure: str | None = None
        self._changed = trio.lowlevel.ParkingLot()
        self._slots_running = 0
        self._ended = trio.Event()

    def __repr__(self) -> str:
        return f"<Generation {self.number}: {len(self.ready_ids)}/{self.workers} ready>"

    @property
    def ready_ids(self) -> list[int]:
        """The ids of its workers that reported serving."""
        return sorted(wid for wid, w in self.procs.items() if w.ready)

    def changed(self) -> None:
        """Wake whoever waits on this generation (a worker became ready, exited...)."""
        self._changed.unpark_all()

    async def wait_ready(self, count: int | None = None) -> bool:
        """Wait until ``count`` (default: all) workers serve; False if it was
        retired or failed first."""
        want = self.workers if count is None else count
        while len(self.ready_ids) < want:
            if self.retired.is_set():
                return False
            await self._changed.park()
        return True

    def fail(self, why: str) -> None:
        """It could not start: remember why and retire it (SIGTERM its workers)."""
        if self.failure is None:
            self.failure = why
        self.retire()

    def retire(self) -> None:
        """Ask every worker to stop (SIGTERM) and none to restart. Idempotent
        for the state; the signal goes to each process once more."""
        self.retired.set()
        for worker in self.procs.values():
            send_signal(worker.proc, signal.SIGTERM)
        self.changed()

    # The slot tasks count themselves in and out, so that the supervisor can
    # wait for a retired generation to have drained (every process exited).
    def slot_started(self) -> None:
        self._slots_running += 1

    def slot_ended(self) -> None:
        self._slots_running -= 1
        if self._slots_running == 0:
            self._ended.set()
        self.changed()

    @property
    def ended(self) -> bool:
        """Whether every slot task of this generation ended."""
        return self._ended.is_set()

    async def wait_ended(self) -> None:
        """Wait until every slot task of this generation ended (no process left)."""
        await self._ended.wait()
