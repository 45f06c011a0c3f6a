"""The supervisor: starts, watches, restarts and stops the worker processes
(:class:`WorkerSupervisor`, :func:`run_workers`). The process model, the
sharing modes and the lifecycle are described in :mod:`trionet._apps._workers`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
from functools import partial
from typing import Final, final

import trio

from ..._base._checks import check_int, check_seconds, is_int
from ..._base._errors import TrionetError
from ..._base._options import AcceptOptions
from ..._core._stats_page import STATS_INACTIVITY_TIMEOUT, Readiness
from ..._inbound._server import Server
from ..._processor import serve_readings
from ._fleet import fleet_readiness
from ._generation import Generation, WorkerProcess, send_signal
from ._job import (
    DUMP_SIGNAL,
    ERROR,
    HEARTBEAT,
    MAX_MESSAGE,
    READY,
    Job,
    WorkerMain,
    boot_command,
    encode_job,
    locate_main,
)
from ._notify import NOTIFY_ENV, SystemdNotifier, notify_loop
from ._shared import FleetMemory, fleet_capacity
from ._signals import SUPERVISOR_SIGNALS, forward_signals
from ._sockets import Sharing, SocketPlan, plan_listeners, port_of, usable_cpus

__all__ = [
    "EXIT_MARGIN",
    "HEARTBEAT_MAX",
    "STABLE_AFTER",
    "STARTUP_ATTEMPTS",
    "RestartBackoff",
    "WorkerStartupError",
    "WorkerSupervisor",
    "run_workers",
]

logger = logging.getLogger("trionet.workers")

_SHARING: Final = ("auto", "reuseport", "inherit")

# After the grace period the workers' own servers cancel what is left; this is
# how much longer the supervisor waits for the interpreters to exit before SIGKILL.
EXIT_MARGIN: Final = 2.0
# A worker that ran this long before dying is considered to have been healthy:
# its replacement starts after the initial delay again.
STABLE_AFTER: Final = 10.0
# A worker that exits before reporting ready, within STABLE_AFTER seconds, failed
# at start-up. Causes that go away by themselves (a port in TIME_WAIT elsewhere, a
# short fork failure) rarely outlast two retries with back-off; a port somebody
# else holds, a bad option or a missing module never pass, and restarting them for
# ever only floods the log. Three attempts in a row, then the supervisor gives up.
STARTUP_ATTEMPTS: Final = 3
# After a worker exited, how long the supervisor reads what it wrote before dying
# (normally there at once; a grandchild holding the socket must not stall us).
_DRAIN_TIMEOUT: Final = 1.0
# Workers heartbeat at least this often (more often for a short worker_timeout).
HEARTBEAT_MAX: Final = 5.0
# A hung worker's stack dump: the longest we wait for it, and the pause in its
# bytes after which it is taken as complete.
_DUMP_WAIT: Final = 2.0
_DUMP_QUIET: Final = 0.2


@final
class WorkerStartupError(TrionetError, RuntimeError):
    """A worker failed at start-up ``STARTUP_ATTEMPTS`` times in a row; the
    supervisor stopped every worker.

    Attributes:
      worker_id: the worker that could not start.
      attempts: how many times in a row it failed.
      error: its last error, one line (``"[Errno 98] cannot listen on
        127.0.0.1:9101: Address already in use"``), or how it ended when it
        could not say (``"was killed by SIGKILL"``).
    """

    def __init__(self, worker_id: int, attempts: int, error: str) -> None:
        super().__init__(f"worker {worker_id} could not start ({attempts} attempts): {error}")
        self.worker_id = worker_id
        self.attempts = attempts
        self.error = error


# ------------------------------------------------------------------ supervisor
@final
class RestartBackoff:
    """Exponential restart back-off for one worker slot; I/O-free.

    The first restart waits ``initial`` seconds, each further one twice as long
    up to ``maximum``; a worker that lived ``STABLE_AFTER`` seconds or more was
    healthy, so its replacement waits ``initial`` again.
    """

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = max(maximum, initial)
        self._next = initial

    def next_delay(self, lived: float) -> float:
        """The delay before restarting a worker that died after ``lived`` seconds."""
        if lived >= STABLE_AFTER:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


@final
class WorkerSupervisor:
    """Starts, watches, restarts, reloads and stops the worker processes.

    Most programs call :func:`run_workers`, which runs one of these under
    ``trio.run`` with SIGTERM/SIGINT wired to :meth:`shutdown` and SIGHUP to
    :meth:`reload`. Use it directly to supervise from a trio program of your
    own: ``sup = await nursery.start(WorkerSupervisor(main, 8080, workers=4).run)``.

    Args: as :func:`run_workers`.

    Attributes:
      readiness: what the stats page's ``/readyz`` answers (a
        :class:`Readiness`: not ready until every worker serves, and from
        :meth:`shutdown` on; ``readiness.not_ready(reason)`` says more).
      stats_server: the stats page's :class:`Server` once :meth:`run` has
        started (``None`` without ``stats``).
      restarts: workers restarted after they died (crash, kill, hang).
      hung_workers: workers killed because their trio loop stopped
        heartbeating for ``worker_timeout`` seconds.
      reloads: reloads completed (a new generation took over).
      failed_reloads: reloads whose new generation could not start (the old
        one kept serving).
    """

    def __init__(
        self,
        main: WorkerMain,
        *listen: int | AcceptOptions,
        workers: int | None = None,
        grace: float = 10.0,
        sharing: Sharing = "auto",
        restart_delay: float = 0.1,
        max_restart_delay: float = 10.0,
        stats: int | AcceptOptions | None = None,
        worker_timeout: float | None = 30.0,
    ) -> None:
        self._main_ref = locate_main(main)
        self.specs: list[AcceptOptions] = [AcceptOptions.coerce(spec) for spec in listen]
        if not self.specs:
            raise ValueError("run_workers() needs at least one port or AcceptOptions")
        self.workers: int = workers if workers is not None else usable_cpus()
        check_int("run_workers", "workers", self.workers, 1)
        check_seconds("run_workers", "grace", grace)
        check_seconds("run_workers", "restart_delay", restart_delay, allow_zero=False)
        check_seconds("run_workers", "max_restart_delay", max_restart_delay, allow_zero=False)
        if worker_timeout is not None:
            check_seconds("run_workers", "worker_timeout", worker_timeout, allow_zero=False)
        if sharing not in _SHARING:
            raise ValueError(f"run_workers: sharing={sharing!r}: must be one of {_SHARING}")
        self.grace: float = float(grace)
        self.sharing: Sharing = sharing
        self.restart_delay: float = float(restart_delay)
        self.max_restart_delay: float = max(float(max_restart_delay), self.restart_delay)
        self.worker_timeout: float | None = (
            None if worker_timeout is None else float(worker_timeout)
        )
        self.restarts: int = 0
        self.hung_workers: int = 0
        self.reloads: int = 0
        self.failed_reloads: int = 0
        self.listen: tuple[AcceptOptions, ...] = ()
        # The generation serving now, the one a reload is starting, and every
        # one whose processes still run (retired ones drain in the background).
        self._current = Generation(0, self.workers)
        self._pending: Generation | None = None
        self._live: list[Generation] = [self._current]
        self._reload_again = False
        self._reloads_done = trio.lowlevel.ParkingLot()
        self._stopping = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._slots: trio.Nursery | None = None
        self._failed = False
        self._startup_error: WorkerStartupError | None = None
        self._plan = SocketPlan()
        self._ports: list[int] = []
        # The fleet as one server (_fleet, _shared): the statistics and limits
        # the workers share (one memory slot per process: see the slot API in
        # _shared), the page that sums them, what /readyz answers.
        self.stats: AcceptOptions | None = _stats_options(stats)
        self.stats_server: Server | None = None
        self.readiness: Readiness = fleet_readiness(self)
        self._fleet: FleetMemory | None = None
        self._notifier = SystemdNotifier(None)
        self._slot_freed = trio.lowlevel.ParkingLot()

    @property
    def pids(self) -> dict[int, int]:
        """worker id -> pid of the process running it now (serving generation)."""
        return {wid: w.proc.pid for wid, w in sorted(self._current.procs.items())}

    @property
    def ready_pids(self) -> dict[int, int]:
        """worker id -> pid, for workers that reported they are serving."""
        procs = self._current.procs
        return {wid: procs[wid].proc.pid for wid in self._current.ready_ids}

    @property
    def generation(self) -> int:
        """Number of the serving generation (0 at start-up, one more per completed reload)."""
        return self._current.number

    @property
    def open_connections(self) -> int:
        """Open connections over every running worker, old generations
        included, as of their last heartbeats (every few seconds)."""
        return sum(w.open_connections for gen in self._live for w in gen.procs.values())

    @property
    def ports(self) -> list[int]:
        """The ports the workers serve (resolved when port 0 was asked)."""
        return list(self._ports)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def reloading(self) -> bool:
        """Whether a reload is under way (its new generation not yet serving)."""
        return self._pending is not None

    async def wait_ready(self, count: int | None = None) -> dict[int, int]:
        """Wait until ``count`` (default: all) workers of the serving
        generation report serving; their pids."""
        while not await self._current.wait_ready(count):
            if self._stopping.is_set():
                break
        return self.ready_pids

    async def wait_reloaded(self, count: int = 1) -> None:
        """Wait until ``count`` reloads have ended (completed or failed) since start-up."""
        while self.reloads + self.failed_reloads < count:
            await self._reloads_done.park()

    def reload(self) -> None:
        """Start a reload in the background (what SIGHUP does).

        A new generation of workers starts (fresh interpreters: new code and
        configuration), beside the serving one and on the same listening
        sockets; once every new worker serves, the old ones stop accepting
        and drain within ``grace`` (then are killed). If the new generation
        cannot start (``STARTUP_ATTEMPTS`` failures of one worker in a row)
        it is stopped and the old one serves on; the reason is logged. A
        reload asked while one runs is done after it. Does nothing once
        stopping. Ports, sharing and the worker count stay as they are.
        """
        if self._stopping.is_set() or self._nursery is None:
            return
        if self._pending is not None:
            logger.info("reload requested while reloading: another follows this one")
            self._reload_again = True
            return
        self._pending = Generation(self._current.number + 1, self.workers)
        self._nursery.start_soon(self._reload, self._pending)

    def shutdown(self) -> None:
        """Graceful stop: SIGTERM every worker (each stops accepting and gives
        its connections ``grace`` seconds), SIGKILL whatever still runs
        ``grace + EXIT_MARGIN`` seconds later. Idempotent."""
        if self._stopping.is_set():
            return
        count = sum(len(gen.procs) for gen in self._live)
        logger.info("stopping %d worker(s), grace %.1f s", count, self.grace)
        self._notifier.stopping(f"stopping, grace {self.grace:g} s")
        self._stopping.set()
        for gen in self._live:
            gen.retire()
        # No worker will be started again: drop our copies of the sockets, so
        # that once the workers close theirs new clients are refused rather
        # than queued on a socket nobody accepts from.
        self._plan.close()
        if self._nursery is not None:
            self._nursery.start_soon(self._kill_after, list(self._live), self.grace + EXIT_MARGIN)

    def kill(self) -> None:
        """Stop at once: SIGKILL every worker."""
        self._stopping.set()
        for gen in self._live:
            gen.retired.set()
            for worker in gen.procs.values():
                send_signal(worker.proc, signal.SIGKILL)

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerSupervisor] = trio.TASK_STATUS_IGNORED
    ) -> int:
        """Open the listening sockets, start the workers, supervise until shut down.

        With ``$NOTIFY_SOCKET`` set (a systemd ``Type=notify`` unit), systemd is
        told ``READY=1`` once every worker serves, ``RELOADING=1``/``READY=1``
        around each reload, ``STOPPING=1`` at shutdown, a ``STATUS=`` line with
        the open connections, and ``WATCHDOG=1`` when the unit has a watchdog.

        Returns:
          0 if every worker exited with status 0 after the shutdown, else 1.

        Resource handling:
          On cancellation every worker still running is killed and reaped;
          the supervisor's own sockets are closed when this returns.

        Raises:
          OSError: a listen spec or the stats port could not be bound (before
            ``started``).
          ValueError: a listen spec a worker cannot receive (``ssl_context``).
          WorkerStartupError: a worker failed at start-up ``STARTUP_ATTEMPTS``
            times in a row (after ``started``); every worker was stopped first.
        """
        self._plan = await plan_listeners(self.specs, self.sharing, self.workers)
        self.listen = self._plan.listen_for(0)
        self._ports = list(dict.fromkeys(port_of(opts, self._plan) for opts in self.listen))
        self._notifier = SystemdNotifier.from_environ()
        logger.info(
            "starting %d worker(s) on port(s) %s (%s)",
            self.workers,
            self.ports,
            "SO_REUSEPORT" if self._plan.own else "inherited socket",
        )
        try:
            self._fleet = FleetMemory(fleet_capacity(self.workers))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._start_stats_page(nursery, self._fleet)
                async with trio.open_nursery() as slots:
                    self._slots = slots
                    self._start_generation(self._current)
                    nursery.start_soon(self._announce_ready)
                    task_status.started(self)
                nursery.cancel_scope.cancel()  # the SIGKILL timer, notifications, the page: last
        finally:
            self._plan.close()
            self._notifier.close()
            if self._fleet is not None:
                self._fleet.close()
        logger.info("all workers stopped")
        if self._startup_error is not None:
            raise self._startup_error
        return 1 if self._failed else 0

    async def _start_stats_page(self, nursery: trio.Nursery, fleet: FleetMemory) -> None:
        # The fleet's one page: the sum over the workers' shared slots. It runs
        # until every worker has exited, so a load balancer sees /readyz turn
        # 503 at the shutdown and the page goes away last.
        if self.stats is not None:
            self.stats_server = await nursery.start(
                partial(serve_readings, fleet.readings, self.stats, readiness=self.readiness)
            )

    def _status_line(self) -> str:
        return (
            f"{len(self._current.ready_ids)} of {self.workers} workers serving "
            f"(generation {self._current.number}), {self.open_connections} open connections"
        )

    async def _announce_ready(self) -> None:
        if await self._current.wait_ready():
            self._notifier.ready(self._status_line())
        await notify_loop(self._notifier, self._status_line)

    def _start_generation(self, gen: Generation) -> None:
        assert self._slots is not None
        for wid in range(gen.workers):
            gen.slot_started()
            self._slots.start_soon(self._slot, gen, wid)

    async def _reload(self, new: Generation) -> None:
        if self._stopping.is_set():  # a shutdown came before this task ran
            self._pending = None
            return
        old = self._current
        logger.info(
            "reload: starting generation %d (%d workers) beside generation %d",
            new.number,
            new.workers,
            old.number,
        )
        self._notifier.reloading(f"reloading: starting generation {new.number}")
        self._live.append(new)
        self._start_generation(new)
        ready = await new.wait_ready()
        self._pending = None
        if not ready or self._stopping.is_set():
            self._reload_failed(new)
        else:
            self._current = new
            self.reloads += 1
            logger.info(
                "reload: generation %d serving; generation %d stops accepting and drains "
                "(grace %.1f s)",
                new.number,
                old.number,
                self.grace,
            )
            old.retire()
            self._notifier.ready(self._status_line())
            assert self._nursery is not None
            self._nursery.start_soon(self._drain, old)
        self._reloads_done.unpark_all()
        if self._reload_again and not self._stopping.is_set():
            self._reload_again = False
            self.reload()

    def _reload_failed(self, new: Generation) -> None:
        new.retire()
        self.failed_reloads += 1
        if self._stopping.is_set():
            logger.info("reload of generation %d abandoned: stopping", new.number)
            return
        logger.error(
            "reload failed: generation %d could not start (%s); generation %d keeps serving",
            new.number,
            new.failure or "retired",
            self._current.number,
        )
        self._notifier.ready(self._status_line())

    async def _drain(self, old: Generation) -> None:
        with trio.move_on_after(self.grace + EXIT_MARGIN):
            await old.wait_ended()
        if old.procs:
            for wid, worker in old.procs.items():
                logger.warning(
                    "generation %d: worker %d (pid %d) still running after grace: SIGKILL",
                    old.number,
                    wid,
                    worker.proc.pid,
                )
                send_signal(worker.proc, signal.SIGKILL)
            await old.wait_ended()
        logger.info("reload: generation %d drained, all its workers exited", old.number)

    async def _kill_after(self, generations: list[Generation], delay: float) -> None:
        await trio.sleep(delay)
        for gen in generations:
            for wid, worker in gen.procs.items():
                logger.warning(
                    "worker %d (pid %d) still running after grace: SIGKILL", wid, worker.proc.pid
                )
                send_signal(worker.proc, signal.SIGKILL)

    async def _slot(self, gen: Generation, wid: int) -> None:
        try:
            await self._run_slot(gen, wid)
        finally:
            gen.slot_ended()
            if gen.ended and gen is not self._current and gen in self._live:
                self._live.remove(gen)  # a drained or failed generation

    async def _run_slot(self, gen: Generation, wid: int) -> None:
        backoff = RestartBackoff(self.restart_delay, self.max_restart_delay)
        restarts = 0
        failed_starts = 0  # start-up failures in a row
        while not self._stopping.is_set() and not gen.retired.is_set():
            started = trio.current_time()
            end = await self._run_one(gen, wid, restarts)
            if self._stopping.is_set():
                self._failed |= end.status != 0
                break
            if gen.retired.is_set():  # replaced by a reload, or a failed reload's
                break
            lived = trio.current_time() - started
            # Never said it was serving, and soon gone: it failed at start-up.
            # A worker that served, or ran long, starts the count again.
            failed_starts = 0 if end.ready or lived >= STABLE_AFTER else failed_starts + 1
            why = end.error or f"{_describe_status(end.status)} before it was serving"
            if failed_starts >= STARTUP_ATTEMPTS:
                self._give_up(gen, WorkerStartupError(wid, failed_starts, why))
                break
            delay = backoff.next_delay(lived)
            restarts += 1
            self.restarts += 1
            if failed_starts:
                # INFO: the retry may well succeed, and if it does not the error
                # is raised once, rather than logged once per attempt.
                logger.info(
                    "worker %d could not start (attempt %d of %d): %s; retrying in %.2f s",
                    wid,
                    failed_starts,
                    STARTUP_ATTEMPTS,
                    why,
                    delay,
                )
            else:
                logger.warning(
                    "worker %d %s after %.1f s; restarting in %.2f s (restart #%d)",
                    wid,
                    _describe_status(end.status),
                    lived,
                    delay,
                    restarts,
                )
            with trio.move_on_after(delay):
                await gen.retired.wait()

    def _give_up(self, gen: Generation, error: WorkerStartupError) -> None:
        if gen is not self._current:
            # A reload's generation: it fails, the serving one carries on.
            gen.fail(str(error))
            return
        if self._startup_error is None:
            self._startup_error = error
            logger.info("%s; stopping every worker", error)
        self.shutdown()

    async def _run_one(self, gen: Generation, wid: int, restarts: int) -> _Exit:
        slot = await self._claim_slot(gen, wid)
        if slot is None:  # stopping, or the generation retired, while it waited
            return _Exit(0, ready=False, error=None)
        assert self._fleet is not None
        try:
            return await self._run_in_slot(gen, wid, restarts, slot)
        finally:
            self._fleet.retire(slot)  # reaped (or never started): its counts fold in
            self._slot_freed.unpark_all()

    # The shared memory has room for a bounded number of worker processes
    # (fleet_capacity: the serving generation, one being started by a reload,
    # one still draining, and restarts in flight). Reloads in quick succession
    # while old generations still drain long connections can ask for more:
    # then the new worker waits for a draining one to exit (at the latest at
    # its grace deadline, when it is killed) instead of failing the reload or
    # running outside the fleet's limits and statistics.
    async def _claim_slot(self, gen: Generation, wid: int) -> int | None:
        assert self._fleet is not None
        waited = False
        while not (self._stopping.is_set() or gen.retired.is_set()):
            try:
                return self._fleet.claim(wid)
            except RuntimeError:
                if not waited:
                    logger.info(
                        "generation %d: worker %d waits for a draining worker to exit "
                        "(every shared statistics slot is in use)",
                        gen.number,
                        wid,
                    )
                    waited = True
                with trio.move_on_after(1.0):  # also notices a shutdown or a retirement
                    await self._slot_freed.park()
        return None

    async def _run_in_slot(self, gen: Generation, wid: int, restarts: int, slot: int) -> _Exit:
        try:
            proc, control = await self._spawn(gen, wid, restarts, slot)
        except OSError as exc:  # EAGAIN from fork, ENOMEM...: retry with back-off
            if self._stopping.is_set():
                # the shutdown closed the sockets it was to inherit: not a failure
                return _Exit(0, ready=False, error=None)
            return _Exit(1, ready=False, error=f"cannot spawn a process: {exc}")
        worker = WorkerProcess(wid, proc, last_heartbeat=trio.current_time())
        gen.procs[wid] = worker
        logger.info("worker %d started (%s)", wid, _pid_of(proc.pid, gen))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_control, gen, worker, control)
                if self.worker_timeout is not None:
                    nursery.start_soon(self._watch_heartbeat, worker, self.worker_timeout)
                status = await proc.wait()
                # What it wrote before exiting (its start-up error) is still in
                # the socket: let the reader get to EOF, briefly.
                nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_TIMEOUT
        finally:
            control.close()
            gen.procs.pop(wid, None)
            gen.changed()
            if proc.returncode is None:  # cancelled: leave no orphan
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if self._stopping.is_set() or gen.retired.is_set():
            logger.info("worker %d (%s) %s", wid, _pid_of(proc.pid, gen), _describe_status(status))
        return _Exit(status, ready=worker.ready, error=worker.error)

    async def _spawn(
        self, gen: Generation, wid: int, restarts: int, slot: int
    ) -> tuple[trio.Process, trio.socket.SocketType]:
        assert self._fleet is not None
        parent_end, child_end = socket.socketpair()
        try:
            job = Job(
                *self._main_ref,
                worker_id=wid,
                workers=self.workers,
                restarts=restarts,
                listen=self._plan.listen_for(wid),
                grace=self.grace,
                control_fd=child_end.fileno(),
                generation=gen.number,
                heartbeat=heartbeat_interval(self.worker_timeout),
            )
            env = {k: v for k, v in os.environ.items() if not _private_env(k)}
            encode_job(job, env)
            env.update(self._fleet.worker_env(slot))
            fds = (*self._plan.fds_for(wid), child_end.fileno(), self._fleet.fd)
            proc = await trio.lowlevel.open_process(boot_command(), env=env, pass_fds=fds)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        if self._stopping.is_set() or gen.retired.is_set():  # stopped while spawning
            send_signal(proc, signal.SIGTERM)
        return proc, trio.socket.from_stdlib_socket(parent_end)

    async def _watch_heartbeat(self, worker: WorkerProcess, limit: float) -> None:
        # gunicorn's --timeout: a worker whose trio loop is blocked (a handler
        # calling time.sleep, a CPU-bound loop) still accepts nothing and
        # answers nobody, but it is alive, so nothing else would notice.
        # Each heartbeat moves the deadline on; sleep until the current one.
        while True:
            deadline = worker.last_heartbeat + limit
            if trio.current_time() >= deadline:
                break
            await trio.sleep_until(deadline)
        self.hung_workers += 1
        pid = worker.proc.pid
        logger.error(
            "worker %d (pid %d) hung: no heartbeat for %.1f s; dumping its stack, then SIGKILL",
            worker.worker_id,
            pid,
            trio.current_time() - worker.last_heartbeat,
        )
        worker.dump = []
        send_signal(worker.proc, DUMP_SIGNAL)
        # faulthandler writes the dump at once, from a C signal handler; wait
        # until it stopped coming (or a bound) before reading it out.
        with trio.move_on_after(_DUMP_WAIT):
            while True:
                if worker.dump and trio.current_time() - worker.dump_last >= _DUMP_QUIET:
                    break
                await trio.sleep(_DUMP_QUIET / 4)
        text = b"\n".join(worker.dump).decode("utf-8", "replace").rstrip()
        logger.error(
            "worker %d (pid %d) stack when it hung:\n%s",
            worker.worker_id,
            pid,
            text or "(no dump received)",
        )
        send_signal(worker.proc, signal.SIGKILL)

    async def _read_control(
        self, gen: Generation, worker: WorkerProcess, control: trio.socket.SocketType
    ) -> None:
        pending = b""
        while data := await control.recv(4096):
            *messages, pending = (pending + data).split(b"\n")
            if len(pending) > MAX_MESSAGE:  # not our protocol: drop it, stay bounded
                pending = b""
            for message in messages:
                self._on_message(gen, worker, message)

    def _on_message(self, gen: Generation, worker: WorkerProcess, message: bytes) -> None:
        if worker.dump is not None:  # everything after the dump signal is the dump
            worker.dump.append(message)
            worker.dump_last = trio.current_time()
        elif message.startswith(HEARTBEAT) and message[1:].isdigit():
            worker.last_heartbeat = trio.current_time()
            worker.open_connections = int(message[1:])
        elif message == READY.rstrip(b"\n") and not worker.ready:
            worker.ready = True
            worker.last_heartbeat = trio.current_time()
            logger.info("worker %d (%s) serving", worker.worker_id, _pid_of(worker.proc.pid, gen))
            gen.changed()
        elif message.startswith(ERROR):
            worker.error = message[len(ERROR) :].decode("utf-8", "replace")


def _stats_options(stats: int | AcceptOptions | None) -> AcceptOptions | None:
    if stats is None or isinstance(stats, AcceptOptions):
        return stats
    if not is_int(stats):
        raise TypeError(f"run_workers.stats={stats!r}: expected a port, AcceptOptions or None")
    return AcceptOptions(port=stats, host="127.0.0.1", inactivity_timeout=STATS_INACTIVITY_TIMEOUT)


@dataclasses.dataclass(frozen=True)
class _Exit:
    """How one worker process ended."""

    status: int  # as Process.returncode: negative for a signal
    ready: bool  # it had reported serving
    error: str | None  # its one-line start-up error, if it sent one


def heartbeat_interval(worker_timeout: float | None) -> float:
    """Seconds between a worker's heartbeats: a few per ``worker_timeout``
    (so one late heartbeat is no alarm), at most ``HEARTBEAT_MAX``."""
    if worker_timeout is None:
        return HEARTBEAT_MAX
    return min(HEARTBEAT_MAX, worker_timeout / 4)


def _pid_of(pid: int, gen: Generation) -> str:
    # The generation is named once there is more than one (after a reload).
    return f"pid {pid}" if gen.number == 0 else f"pid {pid}, generation {gen.number}"


def _private_env(name: str) -> bool:
    # Socket activation and systemd's notify socket are the supervisor's.
    return name.startswith("LISTEN_") or name in NOTIFY_ENV


def _describe_status(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


# --------------------------------------------------------------- entry point
def run_workers(
    main: WorkerMain,
    *listen: int | AcceptOptions,
    workers: int | None = None,
    grace: float = 10.0,
    sharing: Sharing = "auto",
    restart_delay: float = 0.1,
    max_restart_delay: float = 10.0,
    stats: int | AcceptOptions | None = None,
    worker_timeout: float | None = 30.0,
) -> int:
    """Serve on many cores: run ``main(ctx)`` in ``workers`` processes until SIGTERM/SIGINT.

    SIGHUP reloads: a new generation of workers (fresh interpreters, so new
    code and configuration) starts on the same sockets, and once it serves
    the old one stops accepting and drains within ``grace`` (see
    :meth:`WorkerSupervisor.reload`). Under systemd (``$NOTIFY_SOCKET``), it
    notifies readiness, reloads and the shutdown.

    Each worker is a fresh interpreter that runs ``trio.run(main, ctx)``;
    ``main`` builds its own :class:`NetProcessor` and usually ends with
    ``await ctx.serve(net, handler)``, which serves ``ctx.listen`` and shuts
    down gracefully on request. Limits (``max_connections``...) apply to the
    fleet, and ``stats=PORT`` serves one stats page summing every worker.

    Example (a script; under systemd, pass ``*trionet.inherited_listeners()``
    instead of the port and the workers share the activated socket)::

        async def echo(conn):
            while data := await conn.receive_some():
                await conn.send_all(data)

        async def worker(ctx: trionet.WorkerContext) -> None:
            net = trionet.NetProcessor(max_connections=10_000)  # for the fleet
            await ctx.serve(net, echo)

        if __name__ == "__main__":
            sys.exit(trionet.run_workers(worker, 8080, workers=4, grace=30))

    Args:
      main: an async function ``main(ctx: WorkerContext)`` defined at module
        level (the workers import it by name; a script's own functions work).
      *listen: ports or :class:`AcceptOptions` every worker serves
        (``ssl_context`` excepted: build it in the worker).
      workers: number of worker processes (default: the CPUs this process
        may use, ``len(os.sched_getaffinity(0))``).
      grace: seconds running connections get after SIGTERM/SIGINT; workers
        still running ``EXIT_MARGIN`` seconds later are killed. A second
        SIGINT (Ctrl-C twice) kills them at once; a repeated SIGTERM changes
        nothing (process-group signals often arrive twice).
      sharing: ``"reuseport"`` (each worker binds with SO_REUSEPORT),
        ``"inherit"`` (one socket opened here, inherited by every worker) or
        ``"auto"`` (reuseport where the platform has it).
      restart_delay: seconds before a dead worker is restarted, doubling
        while it keeps dying within ``STABLE_AFTER`` seconds...
      max_restart_delay: ...up to this many seconds.
      stats: a port (on ``127.0.0.1``) or :class:`AcceptOptions` where the
        supervisor serves the fleet's stats page: ``/stats`` and ``/metrics``
        summed over the workers (per worker too, ``worker="i"``), ``/healthz``,
        and ``/readyz`` (503 until every worker serves and once the shutdown
        has begun); it closes after the last worker. ``None``: no page.
      worker_timeout: seconds a worker's trio loop may go without a
        heartbeat (a handler blocking it with ``time.sleep``...) before its
        Python stacks are logged (faulthandler) and it is killed and
        replaced; ``None`` turns the check off. Workers heartbeat every
        ``min(worker_timeout / 4, HEARTBEAT_MAX)`` seconds.

    Returns:
      An exit status: 0 if every worker exited cleanly after the shutdown.

    Raises:
      OSError: a port could not be bound (before any worker starts).
      TypeError: an argument of the wrong type (``main`` not a module-level
        coroutine function, a listen spec neither a port nor an
        :class:`AcceptOptions`...); the message names it.
      ValueError: an argument out of range (no listen spec, ``workers``
        below 1, a delay of 0 or less, an unknown ``sharing``...); the
        message names it and its value.
      WorkerStartupError: a worker failed at start-up ``STARTUP_ATTEMPTS``
        times in a row (its error in one line); every worker was stopped.
    """
    supervisor = WorkerSupervisor(
        main,
        *listen,
        workers=workers,
        grace=grace,
        sharing=sharing,
        restart_delay=restart_delay,
        max_restart_delay=max_restart_delay,
        stats=stats,
        worker_timeout=worker_timeout,
    )
    return trio.run(_supervise_with_signals, supervisor)


async def _supervise_with_signals(supervisor: WorkerSupervisor) -> int:
    # The documented errors leave run_workers as themselves, not wrapped in the
    # ExceptionGroup of the nursery that forwards signals.
    error: Exception | None = None
    status = 1
    with trio.open_signal_receiver(*SUPERVISOR_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward_signals, supervisor, signals)
            try:
                status = await supervisor.run()
            except (OSError, ValueError, WorkerStartupError) as exc:
                error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return status
