"""Many cores: N worker processes sharing the listening ports (ATS's N net threads).

``run_workers(main, *listen, workers=N)`` runs a supervisor in the calling
process and N workers, each a fresh Python interpreter running its own trio
loop and ``main(ctx)`` (which creates its own :class:`NetProcessor`)::

    supervisor (this process: no trio work but waiting on children and signals)
    ├── worker 0   trio.run(main, ctx)  ── NetProcessor ── listening socket(s)
    ├── worker 1   ...
    └── ...

Why processes, and why exec'd ones. Python threads share one interpreter lock,
so N trio loops in threads would not use N cores. ``fork()`` of a process that
runs trio (or any thread) copies locks held by other threads, the wakeup
socket and the epoll descriptor, which is undefined behaviour the trio
maintainers warn about; so each worker is started with ``subprocess`` (fork +
exec at once, nothing of the parent's interpreter survives). We use
``subprocess`` rather than ``multiprocessing``'s spawn context because we need
exactly three things from the child -- the listening descriptors
(``pass_fds``), a small pickled description of its job, and a control
socket -- and subprocess gives them explicitly, without multiprocessing's
resource tracker or pickled process objects; trio waits on the child with a
pidfd.

How the port is shared:

* ``"reuseport"`` (default where the kernel has ``SO_REUSEPORT``): every worker
  binds the same address with ``SO_REUSEPORT`` and the kernel spreads new
  connections over the workers' own accept queues (no thundering herd, no
  shared queue lock). The supervisor binds each address too, with
  ``SO_REUSEPORT`` but *without* ``listen()``: that resolves port 0 to one
  port for every worker, fails early on EADDRINUSE, and keeps the port
  reserved while a worker restarts; a socket that is not listening is not in
  the kernel's reuseport group, so it never receives connections.
* ``"inherit"`` (the fallback, or forced): the supervisor opens one listening
  socket per address and every worker inherits it (``AcceptOptions(fd=...)``);
  the workers compete for ``accept()`` on one queue. A restarting worker loses
  no connection: the queue belongs to the supervisor's socket.

An :class:`AcceptOptions` with ``fd=`` (e.g. from
:func:`trionet.inherited_listeners`: a socket-activated supervisor) is always
shared the second way.

Limits are per worker: each worker's ``NetProcessor(max_connections=...)``
counts its own connections only, so N workers allow N times the limit; the
same goes for ``per_client_max_connections`` (a client's connections spread
over the workers) and for statistics (each worker counts its own).

Lifecycle. A worker that exits while no shutdown was asked for -- crash,
SIGKILL, or ``main`` returning -- is restarted with an exponential back-off
(:class:`RestartBackoff`) and logged on ``trionet.workers``. A worker that
fails at start-up (exits before it reported serving, see
:meth:`WorkerContext.ready`, and within ``STABLE_AFTER`` seconds) reports its
error to the supervisor as one line, without a traceback; after
``STARTUP_ATTEMPTS`` such failures in a row the supervisor stops every worker
and raises :class:`WorkerStartupError` with that line, rather than restart a
worker that cannot start for ever (a port taken, a bad option, a missing
module). SIGTERM/SIGINT to
the supervisor become one SIGTERM per worker: ``ctx.shutdown_requested`` is set
and ``ctx.serve`` shuts its server down gracefully. Workers watch a control
socket to the supervisor and stop by themselves if it dies. Workers ignore
SIGINT: a terminal's Ctrl-C reaches the whole process group, and the
supervisor already turns it into one SIGTERM each. POSIX only.

Caveat of SO_REUSEPORT: connections already queued on a worker's listening
socket (accepted by the kernel, not yet by the worker) are reset when that
worker dies; Linux >= 5.14 migrates them to a sibling when
``net.ipv4.tcp_migrate_req=1``. The ``"inherit"`` mode has no such loss.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import importlib
import importlib.util
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal, final

import trio

from ._errors import TrionetError
from ._listen import _bind_addresses, adopt_listener, bind_socket, open_listeners
from ._options import AcceptOptions, _check_int, _check_seconds
from ._server import Handler, NetProcessor, Server

__all__ = [
    "RestartBackoff",
    "WorkerContext",
    "WorkerStartupError",
    "WorkerSupervisor",
    "run_workers",
]

logger = logging.getLogger("trionet.workers")

WorkerMain = Callable[["WorkerContext"], Awaitable[object]]
Sharing = Literal["auto", "reuseport", "inherit"]
_SHARING: Final = ("auto", "reuseport", "inherit")

_PAYLOAD_ENV: Final = "TRIONET_WORKER"
_PATH_ENV: Final = "TRIONET_WORKER_PATH"
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

# The control socket carries newline-terminated messages from worker to
# supervisor: "R" (serving), "E<one line>" (the error a start-up failed with).
_READY: Final = b"R\n"
_ERROR: Final = b"E"
_MAX_MESSAGE: Final = 2048
# After a worker exited, how long the supervisor reads what it wrote before dying
# (normally there at once; a grandchild holding the socket must not stall us).
_DRAIN_TIMEOUT: Final = 1.0

# The worker's first lines: SIGINT is ignored (a terminal's Ctrl-C reaches every
# process of the group; the supervisor turns it into one SIGTERM per worker),
# and a SIGTERM arriving before trio takes over is remembered, not fatal.
_BOOT: Final = """\
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
_early = []
signal.signal(signal.SIGTERM, lambda *_: _early.append(1))
sys.path[:0] = [p for p in os.environ.pop("TRIONET_WORKER_PATH", "").split(os.pathsep) if p]
from trionet._workers import _worker_entry
_worker_entry(_early)
"""


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


# ----------------------------------------------------------------- worker side
@final
class WorkerContext:
    """What a worker's ``main(ctx)`` gets from the supervisor.

    Attributes:
      worker_id: 0..workers-1; a restarted worker keeps the id of the one it replaces.
      workers: how many workers the supervisor runs.
      restarts: how many times this worker id was restarted before this process.
      listen: the :class:`AcceptOptions` to serve, already adjusted for the
        sharing mode (``reuse_port=True`` on the resolved port, or ``fd=`` of an
        inherited socket).
      grace: seconds connections get to finish after a shutdown request.
      shutdown_requested: a :class:`trio.Event` set when the supervisor asks
        this worker to stop (SIGTERM), or when the supervisor has gone away.
    """

    def __init__(
        self,
        *,
        worker_id: int,
        workers: int,
        restarts: int,
        listen: Sequence[AcceptOptions],
        grace: float,
        control: socket.socket | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.workers = workers
        self.restarts = restarts
        self.listen: tuple[AcceptOptions, ...] = tuple(listen)
        self.grace = grace
        self.shutdown_requested = trio.Event()
        self._control = control
        self._serving = False

    def __repr__(self) -> str:
        return f"<trionet.WorkerContext worker {self.worker_id}/{self.workers} pid {os.getpid()}>"

    def listen_options(self, **changes: Any) -> list[AcceptOptions]:
        """``listen`` with fields replaced, e.g. ``ssl_context=`` built in the
        worker (an SSLContext cannot be sent to another process).

        Raises:
          TypeError: a field AcceptOptions does not have.
          ValueError: an invalid value (AcceptOptions validates it).
        """
        for key in ("fd", "host", "port", "reuse_port", "localhost_only"):
            if key in changes:
                raise ValueError(f"listen_options({key}=...): the supervisor decides where to bind")
        return [dataclasses.replace(opts, **changes) for opts in self.listen]

    def ready(self) -> None:
        """Tell the supervisor this worker is serving (``serve`` does it for you).

        Until then an exception out of ``main`` is a start-up failure: reported
        to the supervisor as one line, counted towards ``STARTUP_ATTEMPTS``.
        """
        self._serving = True
        if self._control is not None:
            # OSError: the supervisor is gone; _watch_supervisor handles that.
            with contextlib.suppress(OSError):
                self._control.send(_READY)

    async def serve(
        self,
        net: NetProcessor,
        handler: Handler,
        *,
        listen: Sequence[AcceptOptions] | None = None,
    ) -> Server:
        """Serve ``handler`` on ``listen`` (default :attr:`listen`) until shut down.

        Reports readiness to the supervisor once bound; on
        :attr:`shutdown_requested` it calls ``server.shutdown(grace)``: the
        listening sockets close at once, running connections get ``grace``
        seconds. Returns the (closed) :class:`Server` when every connection is done.

        Raises:
          OSError / UnsupportedOptionError / AcceptError: as ``NetProcessor.serve``.
        """
        specs = self.listen if listen is None else tuple(listen)
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(net.serve, handler, *specs)
            self.ready()
            nursery.start_soon(self._shutdown_on_request, server)
            await server.wait_closed()
            nursery.cancel_scope.cancel()
        return server

    async def _shutdown_on_request(self, server: Server) -> None:
        await self.shutdown_requested.wait()
        logger.info("worker %d (pid %d): shutting down", self.worker_id, os.getpid())
        server.shutdown(self.grace)


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything a worker process needs, pickled into its environment."""

    main_module: str
    main_qualname: str
    main_path: str | None
    worker_id: int
    workers: int
    restarts: int
    listen: tuple[AcceptOptions, ...]
    grace: float
    control_fd: int


def _worker_entry(early_sigterm: list[int]) -> None:
    """The worker process's body (started by ``_BOOT``).

    Error handling:
      An exception before the worker reported ready (an import error, a port
      it cannot bind...) is sent to the supervisor as one line and the process
      exits with status 1, without a traceback. After that, an exception is a
      crash of a serving worker: Python prints its traceback, as for any bug.
    """
    _line_buffered_output()
    job: _Job = pickle.loads(base64.b64decode(os.environ.pop(_PAYLOAD_ENV)))
    control = socket.socket(fileno=job.control_fd)
    control.setblocking(False)
    ctx = WorkerContext(
        worker_id=job.worker_id,
        workers=job.workers,
        restarts=job.restarts,
        listen=job.listen,
        grace=job.grace,
        control=control,
    )
    try:
        main = _resolve_main(job.main_module, job.main_qualname, job.main_path)
        trio.run(_worker_main, main, ctx, early_sigterm)
    except Exception as exc:
        if ctx._serving:
            raise
        _report_startup_failure(ctx, _error_line(exc))
        raise SystemExit(1) from None
    finally:
        # Python restores SIGTERM's default action while the interpreter shuts
        # down; a late SIGTERM (sent to the whole process group, say) must not
        # turn a clean exit into "killed by SIGTERM".
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        control.close()


def _error_line(exc: BaseException) -> str:
    """``exc`` as one line: an OSError as its message (``[Errno 98] ...``), any
    other exception with its type; the leaves of an exception group joined."""
    parts: list[str] = []
    for leaf in _leaves(exc):
        text = str(leaf)
        if not isinstance(leaf, OSError) or not text:
            text = f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
        parts.append(" ".join(text.split()))  # no newlines in a one-line report
    line = "; ".join(dict.fromkeys(parts))
    return line if len(line) <= _MAX_MESSAGE // 2 else line[: _MAX_MESSAGE // 2 - 3] + "..."


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _report_startup_failure(ctx: WorkerContext, line: str) -> None:
    # The supervisor prints (or raises) it once it gives up; printing here too
    # would repeat it once per attempt. Without a supervisor to tell, say it.
    # Bytes, not characters, are what the supervisor bounds (_MAX_MESSAGE).
    text = line.encode("utf-8", "replace")[: _MAX_MESSAGE - len(_ERROR) - 1]
    message = _ERROR + text + b"\n"
    if ctx._control is not None:
        try:
            ctx._control.setblocking(True)
            ctx._control.sendall(message)
            return
        except OSError:
            pass
    sys.stderr.write(f"trionet worker {ctx.worker_id} (pid {os.getpid()}): {line}\n")
    sys.stderr.flush()


def _line_buffered_output() -> None:
    # Every worker writes to the supervisor's stdout and stderr. Unbuffered
    # (python -u, PYTHONUNBUFFERED=1, common under systemd) print() issues the
    # text and the newline as two writes, so lines of different workers
    # interleave mid-line; line buffering hands each whole line to the kernel
    # in one write, which is atomic on a pipe.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True, write_through=False)


async def _worker_main(main: WorkerMain, ctx: WorkerContext, early: list[int]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_sigterm, ctx, early)
        if ctx._control is not None:
            nursery.start_soon(_watch_supervisor, ctx, ctx._control)
        await main(ctx)
        nursery.cancel_scope.cancel()


async def _watch_sigterm(
    ctx: WorkerContext, early: list[int], task_status: trio.TaskStatus[None]
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        task_status.started()
        if early:
            ctx.shutdown_requested.set()
        async for _ in signals:
            ctx.shutdown_requested.set()


async def _watch_supervisor(ctx: WorkerContext, control: socket.socket) -> None:
    # The supervisor never writes; EOF means it died (even by SIGKILL): stop
    # gracefully rather than serve on as an orphan nobody will restart or stop.
    while True:
        await trio.lowlevel.wait_readable(control)
        try:
            if control.recv(64):
                continue
        except BlockingIOError:
            continue
        except OSError:
            pass
        break
    logger.warning("worker %d: supervisor gone, shutting down", ctx.worker_id)
    ctx.shutdown_requested.set()


def _resolve_main(module_name: str, qualname: str, path: str | None) -> WorkerMain:
    if path is not None:
        # main lives in the script the supervisor ran: load it under another
        # name, as multiprocessing does, so its `if __name__ == "__main__"` block
        # (which calls run_workers) does not run again.
        spec = importlib.util.spec_from_file_location("__mp_main__", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the worker's main script {path!r}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["__mp_main__"] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def _locate_main(main: WorkerMain) -> tuple[str, str, str | None]:
    """How a fresh interpreter finds ``main``: (module, qualname, script path)."""
    module = getattr(main, "__module__", None)
    qualname = getattr(main, "__qualname__", None)
    if not callable(main) or not isinstance(module, str) or not isinstance(qualname, str):
        raise TypeError(f"main={main!r}: expected an async function defined in a module")
    if "<" in qualname:  # <lambda>, <locals>
        raise ValueError(
            f"main={main!r}: a worker process must import it by name; "
            "define it at module level (not a lambda or a nested function)"
        )
    path: str | None = None
    if module == "__main__":
        main_mod = sys.modules["__main__"]
        spec = getattr(main_mod, "__spec__", None)
        if spec is not None and spec.name not in (None, "__main__"):
            module = spec.name  # python -m package.module
        else:
            path = getattr(main_mod, "__file__", None)
            if path is None:
                raise ValueError(f"main={main!r} lives in an interactive session; put it in a file")
            path = os.path.abspath(path)
    return module, qualname, path


# ------------------------------------------------------------- listen sockets
@dataclasses.dataclass
class _Plan:
    """The supervisor's sockets and what each worker serves."""

    listen: list[AcceptOptions] = dataclasses.field(default_factory=list)
    held: list[socket.socket] = dataclasses.field(default_factory=list)
    pass_fds: list[int] = dataclasses.field(default_factory=list)

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def reuse_port_available() -> bool:
    """Whether this platform lets several sockets share a port with ``SO_REUSEPORT``."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            return False
    return True


async def _plan_listeners(specs: Sequence[AcceptOptions], sharing: Sharing) -> _Plan:
    if sharing == "auto":
        sharing = "reuseport" if reuse_port_available() else "inherit"
    plan = _Plan()
    try:
        for spec in specs:
            if spec.ssl_context is not None:
                raise ValueError(
                    f"{spec!r}: an ssl_context cannot be sent to a worker process; build it in "
                    "the worker: ctx.serve(net, handler, listen=ctx.listen_options(ssl_context=c))"
                )
            if spec.fd is not None:
                _plan_adopted(plan, spec)
            elif sharing == "reuseport":
                await _plan_reuseport(plan, spec)
            else:
                await _plan_inherit(plan, spec)
    except BaseException:
        plan.close()
        raise
    return plan


def _plan_adopted(plan: _Plan, spec: AcceptOptions) -> None:
    assert spec.fd is not None
    listener = adopt_listener(spec.fd, spec)
    plan.held.append(listener.socket)
    plan.pass_fds.append(spec.fd)
    plan.listen.append(spec)


async def _plan_inherit(plan: _Plan, spec: AcceptOptions) -> None:
    for listener in await open_listeners(dataclasses.replace(spec, reuse_port=False)):
        plan.held.append(listener.socket)
        fd = listener.socket.fileno()
        plan.pass_fds.append(fd)
        plan.listen.append(dataclasses.replace(listener.options, fd=fd))


async def _plan_reuseport(plan: _Plan, spec: AcceptOptions) -> None:
    spec = dataclasses.replace(spec, reuse_port=True)
    port = spec.port
    reserved = 0
    for family, sockaddr in await _bind_addresses(spec):
        # Bound with SO_REUSEPORT but not listening (see the module notes).
        sock = bind_socket(family, (sockaddr[0], port, *sockaddr[2:]), spec)
        if sock is None:
            continue
        plan.held.append(sock)
        port = sock.getsockname()[1]
        reserved += 1
        worker_spec = dataclasses.replace(
            spec,
            host=sockaddr[0],
            port=port,
            localhost_only=False,
            family=socket.AddressFamily(family),
        )
        plan.listen.append(worker_spec)
    if not reserved:
        raise OSError(errno.EADDRNOTAVAIL, f"no address to listen on for {spec!r}")


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
    ) -> None:
        self._main_ref = _locate_main(main)
        self.specs = [AcceptOptions.coerce(spec) for spec in listen]
        if not self.specs:
            raise ValueError("run_workers() needs at least one port or AcceptOptions")
        self.workers = workers if workers is not None else usable_cpus()
        _check_int("run_workers", "workers", self.workers, 1)
        _check_seconds("run_workers", "grace", grace)
        _check_seconds("run_workers", "restart_delay", restart_delay, allow_zero=False)
        _check_seconds("run_workers", "max_restart_delay", max_restart_delay, allow_zero=False)
        if sharing not in _SHARING:
            raise ValueError(f"run_workers: sharing={sharing!r}: must be one of {_SHARING}")
        self.grace = float(grace)
        self.sharing: Sharing = sharing
        self.restart_delay = float(restart_delay)
        self.max_restart_delay = max(float(max_restart_delay), self.restart_delay)
        self.restarts = 0
        self.listen: tuple[AcceptOptions, ...] = ()
        self._procs: dict[int, trio.Process] = {}
        self._ready: set[int] = set()
        self._ready_changed = trio.lowlevel.ParkingLot()
        self._stopping = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._failed = False
        self._startup_error: WorkerStartupError | None = None
        self._errors: dict[int, str] = {}
        self._plan = _Plan()
        self._ports: list[int] = []

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
          OSError: a listen spec could not be bound (before ``started``).
          ValueError: a listen spec a worker cannot receive (``ssl_context``).
          WorkerStartupError: a worker failed at start-up ``STARTUP_ATTEMPTS``
            times in a row (after ``started``); every worker was stopped first.
        """
        self._plan = await _plan_listeners(self.specs, self.sharing)
        self.listen = tuple(self._plan.listen)
        self._ports = list(dict.fromkeys(_port_of(opts, self._plan) for opts in self.listen))
        logger.info(
            "starting %d worker(s) on port(s) %s (%s)",
            self.workers,
            self.ports,
            "inherited socket" if self._plan.pass_fds else "SO_REUSEPORT",
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                async with trio.open_nursery() as slots:
                    for wid in range(self.workers):
                        slots.start_soon(self._slot, wid)
                    task_status.started(self)
                nursery.cancel_scope.cancel()  # the SIGKILL timer, if any
        finally:
            self._plan.close()
        logger.info("all workers stopped")
        if self._startup_error is not None:
            raise self._startup_error
        return 1 if self._failed else 0

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
        try:
            proc, control = await self._spawn(wid, restarts)
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

    async def _spawn(self, wid: int, restarts: int) -> tuple[trio.Process, trio.socket.SocketType]:
        parent_end, child_end = socket.socketpair()
        try:
            job = _Job(
                *self._main_ref,
                worker_id=wid,
                workers=self.workers,
                restarts=restarts,
                listen=self.listen,
                grace=self.grace,
                control_fd=child_end.fileno(),
            )
            env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
            env[_PAYLOAD_ENV] = base64.b64encode(pickle.dumps(job)).decode("ascii")
            env[_PATH_ENV] = os.pathsep.join(p for p in sys.path if p)
            argv = [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _BOOT]  # type: ignore[attr-defined]
            proc = await trio.lowlevel.open_process(
                argv, env=env, pass_fds=(*self._plan.pass_fds, child_end.fileno())
            )
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
            if len(pending) > _MAX_MESSAGE:  # not our protocol: drop it, stay bounded
                pending = b""
            for message in messages:
                self._on_message(wid, pid, message)

    def _on_message(self, wid: int, pid: int, message: bytes) -> None:
        if message == _READY.rstrip(b"\n") and wid not in self._ready:
            self._ready.add(wid)
            logger.info("worker %d (pid %d) serving", wid, pid)
            self._ready_changed.unpark_all()
        elif message.startswith(_ERROR):
            self._errors[wid] = message[len(_ERROR) :].decode("utf-8", "replace")


@dataclasses.dataclass(frozen=True)
class _Exit:
    """How one worker process ended."""

    status: int  # as Process.returncode: negative for a signal
    ready: bool  # it had reported serving
    error: str | None  # its one-line start-up error, if it sent one


def _port_of(opts: AcceptOptions, plan: _Plan) -> int:
    if opts.fd is None:
        return opts.port
    for sock in plan.held:
        if sock.fileno() == opts.fd:
            return int(sock.getsockname()[1])
    return opts.port


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
) -> int:
    """Serve on many cores: run ``main(ctx)`` in ``workers`` processes until SIGTERM/SIGINT.

    Each worker is a fresh interpreter that runs ``trio.run(main, ctx)``;
    ``main`` builds its own :class:`NetProcessor` and usually ends with
    ``await ctx.serve(net, handler)``, which serves ``ctx.listen`` and shuts
    down gracefully on request. Limits (``max_connections``...) are per worker.

    Example (a script; under systemd, pass ``*trionet.inherited_listeners()``
    instead of the port and the workers share the activated socket)::

        async def echo(conn):
            while data := await conn.receive_some():
                await conn.send_all(data)

        async def worker(ctx: trionet.WorkerContext) -> None:
            net = trionet.NetProcessor(max_connections=10_000)  # per worker
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
      restart_delay / max_restart_delay: a dead worker is restarted after
        ``restart_delay`` seconds, doubling while it keeps dying within
        ``STABLE_AFTER`` seconds, up to ``max_restart_delay``.

    Returns:
      An exit status: 0 if every worker exited cleanly after the shutdown.

    Raises:
      OSError: a port could not be bound (before any worker starts).
      ValueError / TypeError: bad arguments, named.
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
    )
    return trio.run(_supervise_with_signals, supervisor)


async def _supervise_with_signals(supervisor: WorkerSupervisor) -> int:
    # The documented errors leave run_workers as themselves, not wrapped in the
    # ExceptionGroup of the nursery that forwards signals.
    error: Exception | None = None
    status = 1
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_forward_signals, supervisor, signals)
            try:
                status = await supervisor.run()
            except (OSError, ValueError, WorkerStartupError) as exc:
                error = exc
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return status


async def _forward_signals(supervisor: WorkerSupervisor, signals: Any) -> None:
    # A repeated SIGTERM is not an escalation: `timeout`, `kill -- -pgid` and
    # some init systems send it to the supervisor twice (directly and via the
    # process group). A second SIGINT (Ctrl-C twice) is: the workers die now.
    async for signum in signals:
        name = signal.Signals(signum).name
        if not supervisor.stopping:
            logger.warning("%s: graceful shutdown (grace %.1f s)", name, supervisor.grace)
            supervisor.shutdown()
        elif signum == signal.SIGINT:
            logger.warning("%s again: killing the workers now", name)
            supervisor.kill()
