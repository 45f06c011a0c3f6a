"""The supervisor: starts, watches, restarts and stops the worker processes
(:class:`WorkerSupervisor`, :func:`run_workers`). The process model, the
sharing modes and the lifecycle are described in :mod:`trionet._apps._workers`.
"""

from __future__ import annotations

import contextlib
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
from ._job import ERROR, MAX_MESSAGE, READY, Job, WorkerMain, boot_command, encode_job, locate_main
from ._shared import FleetMemory, fleet_capacity
from ._signals import forward_signals
from ._sockets import Sharing, SocketPlan, plan_listeners, port_of, usable_cpus

__all__ = [
    "EXIT_MARGIN",
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
    """Starts, watches, restarts and stops the worker processes.

    Most programs call :func:`run_workers`, which runs one of these under
    ``trio.run`` with SIGTERM/SIGINT wired to :meth:`shutdown`. Use it directly
    to supervise from a trio program of your own:
    ``sup = await nursery.start(WorkerSupervisor(main, 8080, workers=4).run)``.

    Args: as :func:`run_workers`.

    Attributes:
      readiness: what the stats page's ``/readyz`` answers (a
        :class:`Readiness`: not ready until every worker serves, and from
        :meth:`shutdown` on; ``readiness.not_ready(reason)`` says more).
      stats_server: the stats page's :class:`Server` once :meth:`run` has
        started (``None`` without ``stats``).
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
        if sharing not in _SHARING:
            raise ValueError(f"run_workers: sharing={sharing!r}: must be one of {_SHARING}")
        self.grace: float = float(grace)
        self.sharing: Sharing = sharing
        self.restart_delay: float = float(restart_delay)
        self.max_restart_delay: float = max(float(max_restart_delay), self.restart_delay)
        self.restarts: int = 0
        self.listen: tuple[AcceptOptions, ...] = ()
        self._procs: dict[int, trio.Process] = {}
        self._ready: set[int] = set()
        self._ready_changed = trio.lowlevel.ParkingLot()
        self._stopping = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._failed = False
        self._startup_error: WorkerStartupError | None = None
        self._errors: dict[int, str] = {}
        self._plan = SocketPlan()
        self._ports: list[int] = []
        # The fleet as one server (_fleet, _shared): the statistics and limits
        # the workers share (one memory slot per process: see the slot API in
        # _shared), the page that sums them, what /readyz answers.
        self.stats: AcceptOptions | None = _stats_options(stats)
        self.stats_server: Server | None = None
        self.readiness: Readiness = fleet_readiness(self)
        self._fleet: FleetMemory | None = None

    @property
    def pids(self) -> dict[int, int]:
        """worker id -> pid of the process running it now."""
        return {wid: proc.pid for wid, proc in sorted(self._procs.items())}

    @property
    def ready_pids(self) -> dict[int, int]:
        """worker id -> pid, for workers that reported they are serving."""
        return {wid: pid for wid, pid in self.pids.items() if wid in self._ready}

    @property
    def ports(self) -> list[int]:
        """The ports the workers serve (resolved when port 0 was asked)."""
        return list(self._ports)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_ready(self, count: int | None = None) -> dict[int, int]:
        """Wait until ``count`` (default: all) workers report serving; their pids."""
        want = self.workers if count is None else count
        while len(self.ready_pids) < want:
            await self._ready_changed.park()
        return self.ready_pids

    def shutdown(self) -> None:
        """Graceful stop: SIGTERM every worker (each stops accepting and gives
        its connections ``grace`` seconds), SIGKILL whatever still runs
        ``grace + EXIT_MARGIN`` seconds later. Idempotent."""
        if self._stopping.is_set():
            return
        logger.info("stopping %d worker(s), grace %.1f s", len(self._procs), self.grace)
        self._stopping.set()
        for proc in self._procs.values():
            _signal(proc, signal.SIGTERM)
        # No worker will be started again: drop our copies of the sockets, so
        # that once the workers close theirs new clients are refused rather
        # than queued on a socket nobody accepts from.
        self._plan.close()
        if self._nursery is not None:
            self._nursery.start_soon(self._kill_after, self.grace + EXIT_MARGIN)

    def kill(self) -> None:
        """Stop at once: SIGKILL every worker."""
        self._stopping.set()
        for proc in self._procs.values():
            _signal(proc, signal.SIGKILL)

    async def run(
        self, *, task_status: trio.TaskStatus[WorkerSupervisor] = trio.TASK_STATUS_IGNORED
    ) -> int:
        """Open the listening sockets, start the workers, supervise until shut down.

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
        self._plan = await plan_listeners(self.specs, self.sharing)
        self.listen = tuple(self._plan.listen)
        self._ports = list(dict.fromkeys(port_of(opts, self._plan) for opts in self.listen))
        logger.info(
            "starting %d worker(s) on port(s) %s (%s)",
            self.workers,
            self.ports,
            "inherited socket" if self._plan.pass_fds else "SO_REUSEPORT",
        )
        try:
            self._fleet = FleetMemory(fleet_capacity(self.workers))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._start_stats_page(nursery, self._fleet)
                async with trio.open_nursery() as slots:
                    for wid in range(self.workers):
                        slots.start_soon(self._slot, wid)
                    task_status.started(self)
                nursery.cancel_scope.cancel()  # the SIGKILL timer, the page: last
        finally:
            self._plan.close()
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

    async def _kill_after(self, delay: float) -> None:
        await trio.sleep(delay)
        for wid, proc in self._procs.items():
            logger.warning("worker %d (pid %d) still running after grace: SIGKILL", wid, proc.pid)
            _signal(proc, signal.SIGKILL)

    async def _slot(self, wid: int) -> None:
        backoff = RestartBackoff(self.restart_delay, self.max_restart_delay)
        restarts = 0
        failed_starts = 0  # start-up failures in a row
        while not self._stopping.is_set():
            started = trio.current_time()
            end = await self._run_one(wid, restarts)
            if self._stopping.is_set():
                self._failed |= end.status != 0
                break
            lived = trio.current_time() - started
            # Never said it was serving, and soon gone: it failed at start-up.
            # A worker that served, or ran long, starts the count again.
            failed_starts = 0 if end.ready or lived >= STABLE_AFTER else failed_starts + 1
            why = end.error or f"{_describe_status(end.status)} before it was serving"
            if failed_starts >= STARTUP_ATTEMPTS:
                self._give_up(WorkerStartupError(wid, failed_starts, why))
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
                await self._stopping.wait()

    def _give_up(self, error: WorkerStartupError) -> None:
        if self._startup_error is None:
            self._startup_error = error
            logger.info("%s; stopping every worker", error)
        self.shutdown()

    async def _run_one(self, wid: int, restarts: int) -> _Exit:
        self._errors.pop(wid, None)
        assert self._fleet is not None
        slot = self._fleet.claim(wid)
        try:
            return await self._run_in_slot(wid, restarts, slot)
        finally:
            self._fleet.retire(slot)  # reaped (or never started): its counts fold in

    async def _run_in_slot(self, wid: int, restarts: int, slot: int) -> _Exit:
        try:
            proc, control = await self._spawn(wid, restarts, slot)
        except OSError as exc:  # EAGAIN from fork, ENOMEM...: retry with back-off
            if self._stopping.is_set():
                # the shutdown closed the sockets it was to inherit: not a failure
                return _Exit(0, ready=False, error=None)
            return _Exit(1, ready=False, error=f"cannot spawn a process: {exc}")
        self._procs[wid] = proc
        logger.info("worker %d started (pid %d)", wid, proc.pid)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_control, wid, proc.pid, control)
                status = await proc.wait()
                # What it wrote before exiting (its start-up error) is still in
                # the socket: let the reader get to EOF, briefly.
                nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_TIMEOUT
            ready = wid in self._ready
        finally:
            control.close()
            self._procs.pop(wid, None)
            self._ready.discard(wid)
            if proc.returncode is None:  # cancelled: leave no orphan
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()
        if self._stopping.is_set():
            logger.info("worker %d (pid %d) %s", wid, proc.pid, _describe_status(status))
        return _Exit(status, ready=ready, error=self._errors.pop(wid, None))

    async def _spawn(
        self, wid: int, restarts: int, slot: int
    ) -> tuple[trio.Process, trio.socket.SocketType]:
        assert self._fleet is not None
        parent_end, child_end = socket.socketpair()
        try:
            job = Job(
                *self._main_ref,
                worker_id=wid,
                workers=self.workers,
                restarts=restarts,
                listen=self.listen,
                grace=self.grace,
                control_fd=child_end.fileno(),
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
            encode_job(job, env)
            env.update(self._fleet.worker_env(slot))
            fds = (*self._plan.pass_fds, child_end.fileno(), self._fleet.fd)
            proc = await trio.lowlevel.open_process(boot_command(), env=env, pass_fds=fds)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        if self._stopping.is_set():  # shutdown began while we were spawning
            _signal(proc, signal.SIGTERM)
        return proc, trio.socket.from_stdlib_socket(parent_end)

    async def _read_control(self, wid: int, pid: int, control: trio.socket.SocketType) -> None:
        pending = b""
        while data := await control.recv(4096):
            *messages, pending = (pending + data).split(b"\n")
            if len(pending) > MAX_MESSAGE:  # not our protocol: drop it, stay bounded
                pending = b""
            for message in messages:
                self._on_message(wid, pid, message)

    def _on_message(self, wid: int, pid: int, message: bytes) -> None:
        if message == READY.rstrip(b"\n") and wid not in self._ready:
            self._ready.add(wid)
            logger.info("worker %d (pid %d) serving", wid, pid)
            self._ready_changed.unpark_all()
        elif message.startswith(ERROR):
            self._errors[wid] = message[len(ERROR) :].decode("utf-8", "replace")


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


def _signal(proc: trio.Process, signum: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)


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
) -> int:
    """Serve on many cores: run ``main(ctx)`` in ``workers`` processes until SIGTERM/SIGINT.

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
    )
    return trio.run(_supervise_with_signals, supervisor)


async def _supervise_with_signals(supervisor: WorkerSupervisor) -> int:
    # The documented errors leave run_workers as themselves, not wrapped in the
    # ExceptionGroup of the nursery that forwards signals.
    error: Exception | None = None
    status = 1
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
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
