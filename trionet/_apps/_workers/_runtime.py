"""The worker side: what a worker's ``main(ctx)`` gets (:class:`WorkerContext`)
and the process body around it -- the job read, ``trio.run``, SIGTERM and the
supervisor's death turned into a shutdown request."""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, final

import trio

from ..._base._errors import leaves
from ..._base._options import AcceptOptions
from ..._inbound._server import Handler, Server
from ..._processor import NetProcessor
from ._fleet import publish, publish_until, share_limits, wake_paused
from ._job import (
    DUMP_SIGNAL,
    ERROR,
    HEARTBEAT,
    MAX_MESSAGE,
    READY,
    WorkerMain,
    decode_job,
    resolve_main,
)
from ._shared import WorkerSlot

__all__ = ["WorkerContext", "run_worker", "worker_entry"]

logger = logging.getLogger("trionet.workers")


@final
class WorkerContext:
    """What a worker's ``main(ctx)`` gets from the supervisor.

    Attributes:
      worker_id: 0..workers-1; a restarted worker keeps the id of the one it
        replaces, and so does its successor after a reload.
      workers: how many workers the supervisor runs.
      generation: 0 for the workers started with the supervisor, one more
        for each reload (:meth:`WorkerSupervisor.reload`).
      restarts: how many times this worker id was restarted before this process.
      listen: the :class:`AcceptOptions` to serve: ``fd=`` of a listening
        socket the supervisor opened (this worker's own ``SO_REUSEPORT``
        socket, or the one every worker shares), with the resolved address.
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
        fleet: WorkerSlot | None = None,
        generation: int = 0,
    ) -> None:
        self.worker_id = worker_id
        self.generation: int = generation
        self.workers = workers
        self.restarts = restarts
        self.listen: tuple[AcceptOptions, ...] = tuple(listen)
        self.grace = grace
        self.shutdown_requested: trio.Event = trio.Event()
        self._control = control
        self._fleet = fleet
        self._serving = False
        self._net: NetProcessor | None = None

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
                self._control.send(READY)

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

        The fleet is one server: ``net``'s ``max_connections`` and
        ``per_client_max_connections`` count the connections of every worker
        (through shared memory; see :doc:`/howto/deploying` for the bound on
        overshoot under concurrent accepts), and ``net``'s statistics (and
        ``handler``'s, if it is a :class:`TcpProxy`) are published to the
        supervisor's stats page. Serve one processor per worker this way.

        Raises:
          OSError: a listen spec could not be bound (as :meth:`NetProcessor.serve`).
          UnsupportedOptionError: an option the platform cannot provide.
          AcceptError: a fatal accept error, once the connections have ended.
          RuntimeError: ``net`` is already serving elsewhere (its limits
            cannot be made the fleet's while it has connections open).
        """
        specs = self.listen if listen is None else tuple(listen)
        self._net = net  # its open connections go out with each heartbeat
        slot = self._fleet
        if slot is not None:
            share_limits(slot, net)
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(net.serve, handler, *specs)
            if slot is not None:
                nursery.start_soon(publish_until, slot, net, handler)
                nursery.start_soon(wake_paused, net)
            self.ready()
            nursery.start_soon(self._shutdown_on_request, server)
            await server.wait_closed()
            nursery.cancel_scope.cancel()
        if slot is not None:
            publish(slot, net, handler)  # the last word: every connection has ended
        return server

    async def _shutdown_on_request(self, server: Server) -> None:
        await self.shutdown_requested.wait()
        logger.info("worker %d (pid %d): shutting down", self.worker_id, os.getpid())
        server.shutdown(self.grace)


def worker_entry(early_sigterm: list[int]) -> None:
    """The worker process's body (called by ``_boot``).

    Error handling:
      An exception before the worker reported ready (an import error, a port
      it cannot bind...) is sent to the supervisor as one line and the process
      exits with status 1, without a traceback. After that, an exception is a
      crash of a serving worker: Python prints its traceback, as for any bug.
    """
    _line_buffered_output()
    job = decode_job(os.environ)
    control = socket.socket(fileno=job.control_fd)
    control.setblocking(False)
    ctx = WorkerContext(
        worker_id=job.worker_id,
        workers=job.workers,
        restarts=job.restarts,
        listen=job.listen,
        grace=job.grace,
        control=control,
        fleet=WorkerSlot.from_environ(os.environ),
        generation=job.generation,
    )
    # A hung worker's stacks, on the supervisor's request, written by the C
    # signal handler (a blocked trio loop cannot run Python code) into the
    # control socket, where the supervisor reads and logs them.
    faulthandler.register(DUMP_SIGNAL, file=control.fileno(), all_threads=True)
    try:
        main = resolve_main(job.main_module, job.main_qualname, job.main_path)
        trio.run(run_worker, main, ctx, early_sigterm, job.heartbeat)
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
    for leaf in leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]:
        text = str(leaf)
        if not isinstance(leaf, OSError) or not text:
            text = f"{type(leaf).__name__}: {text}" if text else type(leaf).__name__
        parts.append(" ".join(text.split()))  # no newlines in a one-line report
    line = "; ".join(dict.fromkeys(parts))
    return line if len(line) <= MAX_MESSAGE // 2 else line[: MAX_MESSAGE // 2 - 3] + "..."


def _report_startup_failure(ctx: WorkerContext, line: str) -> None:
    # The supervisor prints (or raises) it once it gives up; printing here too
    # would repeat it once per attempt. Without a supervisor to tell, say it.
    # Bytes, not characters, are what the supervisor bounds (MAX_MESSAGE).
    text = line.encode("utf-8", "replace")[: MAX_MESSAGE - len(ERROR) - 1]
    message = ERROR + text + b"\n"
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


async def run_worker(
    main: WorkerMain, ctx: WorkerContext, early: list[int], heartbeat: float = 5.0
) -> None:
    """``main(ctx)`` under trio, with SIGTERM and the supervisor's death turned
    into ``ctx.shutdown_requested``, and a heartbeat every ``heartbeat`` seconds."""
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_sigterm, ctx, early)
        if ctx._control is not None:
            nursery.start_soon(_watch_supervisor, ctx, ctx._control)
            nursery.start_soon(_heartbeat, ctx, ctx._control, heartbeat)
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


async def _heartbeat(ctx: WorkerContext, control: socket.socket, interval: float) -> None:
    # A task of the worker's own trio loop: when a handler blocks the loop
    # (time.sleep, a CPU-bound loop), the heartbeats stop and the supervisor
    # notices (worker_timeout). One short message every few seconds; it also
    # carries the open-connection count (systemd STATUS=).
    while True:
        net = ctx._net
        count = net.statistics().connections_currently_open if net is not None else 0
        # A full buffer (the supervisor is busy) or a dead supervisor: skip
        # this one; _watch_supervisor handles the latter.
        with contextlib.suppress(OSError):
            control.send(HEARTBEAT + str(count).encode() + b"\n")
        await trio.sleep(interval)
