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

* ``"reuseport"`` (default where the kernel has ``SO_REUSEPORT``): the
  supervisor opens one listening socket per worker slot on the same address,
  all with ``SO_REUSEPORT``, and worker *i* inherits socket *i*: the kernel
  spreads new connections over the workers' own accept queues (no thundering
  herd, no shared queue lock). The sockets outlive the workers, so a worker
  that exits never resets the connections queued on its socket (closing a
  reuseport socket does, see ``_sockets``): its replacement, or its successor
  after a reload, accepts them.
* ``"inherit"`` (the fallback, or forced): the supervisor opens one listening
  socket per address and every worker inherits it (``AcceptOptions(fd=...)``);
  the workers compete for ``accept()`` on one queue. A restarting worker loses
  no connection: the queue belongs to the supervisor's socket.

An :class:`AcceptOptions` with ``fd=`` (e.g. from
:func:`trionet.inherited_listeners`: a socket-activated supervisor) is always
shared the second way.

The fleet is one server. Workers share a block of memory with the supervisor
(``_shared``): each publishes its statistics to its own slot, and the
supervisor's stats page (``run_workers(stats=PORT)``, ``trionet --workers N
--stats-port P``) shows their sum -- monotonic across worker restarts, an
exited worker's last counters folding into the totals -- with per-worker
``worker="i"`` series in ``/metrics``. ``max_connections`` and
``per_client_max_connections`` of the processor a worker serves with
``ctx.serve`` count every worker's connections (a bounded overshoot of at
most workers - 1 admissions racing at the limit; see ``_shared``).

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

Reload (SIGHUP, :meth:`WorkerSupervisor.reload`): a new generation of
workers starts on the same sockets; once all of it serves, the old one is
sent SIGTERM (stop accepting, drain within ``grace``) and not restarted. A
new generation that cannot start is stopped instead, and the old one serves
on (``_generation``). Hung workers: each worker's trio loop heartbeats on the
control socket; one silent for ``worker_timeout`` seconds is sent SIGUSR1
(faulthandler writes its stacks into the control socket; the supervisor logs
them), then SIGKILL, and is replaced like a crashed one. Under systemd the
supervisor speaks the notify protocol (``_notify``).

Trade-off of the supervisor-held reuseport sockets: while a worker slot is
empty (between a crash and the replacement's start), the connections the
kernel hashes to its socket wait in that queue rather than going to a
sibling; they are served late, not reset.
"""

# The package's modules, bottom up: _job (what crosses from supervisor to
# worker), _boot (the worker's first lines), _shared (the shared memory:
# statistics slots, the fleet-wide throttle), _fleet (the fleet as one server:
# the page's readiness, a worker's limits and publishing), _runtime (the
# worker side), _sockets (socket planning), _signals (the signal policy),
# _generation (a generation of workers), _notify (systemd), _supervisor.
