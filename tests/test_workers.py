"""Worker processes: run_workers / WorkerSupervisor / WorkerContext.

The supervisor's bookkeeping (back-off, listen plans, argument checks) is tested
in-process; the real behaviour with real worker processes on loopback: a worker
killed with SIGKILL is replaced by a new pid that serves, a SIGTERM to the
supervisor stops everything gracefully without losing a byte of a connection
in flight, and workers do not outlive a supervisor killed with SIGKILL. A
worker that cannot start (a port held by the test) is given up on after
STARTUP_ATTEMPTS tries, with its one-line error in WorkerStartupError.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import trionet
from trionet._apps._workers._generation import Generation, WorkerProcess
from trionet._apps._workers._runtime import _error_line
from trionet._apps._workers._sockets import plan_listeners
from trionet._apps._workers._supervisor import STARTUP_ATTEMPTS, RestartBackoff, WorkerSupervisor

ROOT = Path(trionet.__file__).resolve().parent.parent


# ------------------------------------------------------------ worker programs
# Module-level, so worker processes import them by name (test_workers.echo_worker).
async def _echo_with_pid(conn: trionet.Connection) -> None:
    await conn.send_all(f"{os.getpid()}\n".encode())
    while data := await conn.receive_some():
        await conn.send_all(data)


async def echo_worker(ctx: trionet.WorkerContext) -> None:
    await ctx.serve(trionet.NetProcessor(), _echo_with_pid)


async def stubborn_worker(ctx: trionet.WorkerContext) -> None:
    ctx.ready()
    await trio.sleep_forever()  # ignores ctx.shutdown_requested


async def crash_worker(ctx: trionet.WorkerContext) -> None:
    ctx.ready()  # it served (a moment): a crash, not a start-up failure
    raise RuntimeError(f"worker {ctx.worker_id} fails on purpose")


async def fail_at_start_worker(ctx: trionet.WorkerContext) -> None:
    raise RuntimeError(f"worker {ctx.worker_id} cannot start:\nsecond line")


async def held_port_worker(ctx: trionet.WorkerContext) -> None:
    """Worker 1 also serves $TRIONET_TEST_HELD_PORT, which the test holds."""
    extra = []
    if ctx.worker_id == 1:
        port = int(os.environ["TRIONET_TEST_HELD_PORT"])
        extra.append(trionet.AcceptOptions(host="127.0.0.1", port=port))
    await ctx.serve(trionet.NetProcessor(), _echo_with_pid, listen=[*ctx.listen, *extra])


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers=0"),
        ({"workers": 1.5}, ValueError, "workers=1.5"),
        ({"grace": -1}, ValueError, "grace=-1"),
        ({"sharing": "fork"}, ValueError, "sharing='fork'"),
        ({"restart_delay": 0}, ValueError, "restart_delay=0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        WorkerSupervisor(echo_worker, 0, **kwargs)  # type: ignore[arg-type]


def test_default_worker_count_is_the_usable_cpus() -> None:
    assert WorkerSupervisor(echo_worker, 0).workers == len(os.sched_getaffinity(0))


def test_main_must_be_importable_by_name() -> None:
    async def nested(ctx: trionet.WorkerContext) -> None:
        pass

    with pytest.raises(ValueError, match="nested"):
        WorkerSupervisor(nested, 0)
    with pytest.raises(ValueError, match="lambda"):
        WorkerSupervisor(lambda ctx: nested(ctx), 0)
    with pytest.raises(TypeError, match="'not callable'"):
        WorkerSupervisor("not callable", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one port"):
        WorkerSupervisor(echo_worker)


def test_restart_backoff_doubles_and_resets_after_a_healthy_run() -> None:
    backoff = RestartBackoff(0.1, 1.0)
    quick = [backoff.next_delay(0.5) for _ in range(6)]
    assert quick == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.next_delay(60.0) == 0.1  # it ran a minute: healthy again
    assert backoff.next_delay(0.5) == 0.2


def test_listen_options_replace_fields_but_not_the_binding() -> None:
    ctx = trionet.WorkerContext(
        worker_id=0,
        workers=1,
        restarts=0,
        listen=[trionet.AcceptOptions(port=8080, reuse_port=True)],
        grace=1.0,
    )
    [opts] = ctx.listen_options(inactivity_timeout=5.0)
    assert (opts.port, opts.reuse_port, opts.inactivity_timeout) == (8080, True, 5.0)
    with pytest.raises(ValueError, match=r"listen_options\(port=...\)"):
        ctx.listen_options(port=1)


def test_error_line_is_one_line_with_every_leaf() -> None:
    taken = OSError(errno.EADDRINUSE, "cannot listen on 127.0.0.1:80: Address already in use")
    group = ExceptionGroup("x", [ExceptionGroup("y", [taken]), ValueError("bad\n  value")])
    assert _error_line(group) == (
        "[Errno 98] cannot listen on 127.0.0.1:80: Address already in use; ValueError: bad value"
    )
    assert _error_line(ModuleNotFoundError("No module named 'x'")) == (
        "ModuleNotFoundError: No module named 'x'"
    )
    assert _error_line(OSError()) == "OSError"
    assert len(_error_line(ValueError("x" * 5000))) <= 1024


async def test_control_messages_are_framed_and_bounded() -> None:
    # Worker -> supervisor: "R\n" when serving, "E<line>\n" for a start-up
    # error, "H<open connections>\n" heartbeats. Split across reads, or
    # oversized and unterminated, they neither confuse nor grow the
    # supervisor's buffer.
    supervisor = WorkerSupervisor(echo_worker, 0, workers=1)
    gen = Generation(0, 1)
    worker = WorkerProcess(0, None, last_heartbeat=-1.0)  # type: ignore[arg-type]
    worker.proc = type("P", (), {"pid": 1})()  # type: ignore[assignment]
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"E[Errno 98] R in the middle")  # no ready: an "R" inside text
        theirs.sendall(b" of an error\nR")
        theirs.sendall(b"\nH1")
        theirs.sendall(b"7\nHx\n" + b"x" * 10_000 + b"E tail\n")
        theirs.shutdown(socket.SHUT_WR)
        await supervisor._read_control(gen, worker, trio.socket.from_stdlib_socket(ours))
    assert worker.ready
    assert worker.error == "[Errno 98] R in the middle of an error"
    assert worker.open_connections == 17 and worker.last_heartbeat >= 0


# -------------------------------------------------------------- listen plans
async def test_reuseport_plan_opens_one_listening_socket_per_worker() -> None:
    plan = await plan_listeners([trionet.AcceptOptions(localhost_only=True)], "reuseport", 3)
    try:
        assert plan.listen == [] and plan.pass_fds == []  # nothing shared
        mine = [plan.listen_for(wid) for wid in range(3)]
        ports = {opts.port for specs in mine for opts in specs}
        assert len(ports) == 1 and ports != {0}  # port 0 resolved once, for every address
        fds = [opts.fd for specs in mine for opts in specs]
        assert len(set(fds)) == len(fds) == len(plan.held)  # every worker has its own
        assert [plan.fds_for(wid) for wid in range(3)] == [
            tuple(o.fd for o in specs) for specs in mine
        ]
        for sock in plan.held:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        assert all(not o.reuse_port and o.fd is not None for specs in mine for o in specs)
        [port] = ports
        # One reuseport group: the kernel spreads connections over the three
        # queues, and each is served by accepting on that worker's socket.
        clients = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(24)]
        v4 = [s for s in plan.held if s.family == socket.AF_INET]
        accepted = []
        for sock in v4:
            sock.setblocking(False)
            n = 0
            while True:
                try:
                    sock.accept()[0].close()
                    n += 1
                except BlockingIOError:
                    break
            accepted.append(n)
        for c in clients:
            c.close()
        assert sum(accepted) == 24 and len(accepted) == 3
    finally:
        plan.close()


async def test_inherit_plan_opens_one_listening_socket_for_all_workers() -> None:
    spec = trionet.AcceptOptions(host="127.0.0.1", reuse_port=True, inactivity_timeout=7.0)
    plan = await plan_listeners([spec], "inherit")
    try:
        [opts] = plan.listen
        [sock] = plan.held
        assert opts.fd == sock.fileno() and plan.pass_fds == [sock.fileno()]
        assert not opts.reuse_port and opts.inactivity_timeout == 7.0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        plan.close()


async def test_auto_falls_back_to_an_inherited_socket_without_reuseport(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trionet._apps._workers._sockets, "reuse_port_available", lambda: False)
    plan = await plan_listeners([trionet.AcceptOptions(host="127.0.0.1")], "auto")
    try:
        [opts] = plan.listen
        assert opts.fd is not None and plan.pass_fds == [opts.fd]
    finally:
        plan.close()


async def test_already_open_sockets_are_passed_to_workers_as_they_are() -> None:
    # A socket-activated supervisor: run_workers(main, *trionet.inherited_listeners()).
    raw = socket.create_server(("127.0.0.1", 0))
    spec = trionet.AcceptOptions(fd=raw.detach())
    plan = await plan_listeners([spec], "reuseport")
    try:
        assert plan.listen == [spec] and plan.pass_fds == [spec.fd]
        [sock] = plan.held
        assert sock.fileno() == spec.fd and not sock.getblocking()
    finally:
        plan.close()
    with pytest.raises(OSError):
        os.fstat(spec.fd)


async def test_ssl_context_cannot_cross_to_workers() -> None:
    spec = trionet.AcceptOptions(ssl_context=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    with pytest.raises(ValueError, match="listen_options"):
        await plan_listeners([spec], "auto")


# ------------------------------------------------- real workers, in-process supervisor
async def _hello(port: int, payload: bytes = b"ping") -> tuple[int, bytes]:
    """Connect, read the worker's pid line, echo ``payload``; (pid, echoed)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        got = b""
        while chunk := await stream.receive_some():
            got += chunk
    pid, _, echoed = got.partition(b"\n")
    return int(pid), echoed


async def _run_supervisor(
    supervisor: WorkerSupervisor, status: list[int], *, task_status: trio.TaskStatus[None]
) -> None:
    status.append(await supervisor.run(task_status=task_status))


@pytest.mark.slow
@pytest.mark.parametrize(("sharing", "workers"), [("reuseport", 2), ("inherit", 1)])
async def test_killed_worker_is_replaced(
    sharing: trionet._apps._workers._sockets.Sharing,
    workers: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        echo_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=workers,
        grace=2.0,
        sharing=sharing,
        restart_delay=0.05,
    )
    status: list[int] = []
    with trio.fail_after(30):  # a worker takes seconds to start on a loaded machine
        async with trio.open_nursery() as nursery:
            await nursery.start(_run_supervisor, supervisor, status)
            [port] = supervisor.ports
            first = await supervisor.wait_ready()
            assert sorted(first) == list(range(workers))
            victim = first[0]
            os.kill(victim, signal.SIGKILL)
            # Ask at once: with an inherited socket the connection waits in the
            # supervisor's queue until the new worker accepts it.
            served = {(await _hello(port))[0] for _ in range(1 if workers == 1 else 0)}
            while supervisor.ready_pids.get(0, victim) == victim:
                await trio.sleep(0.02)
            replacement = supervisor.ready_pids[0]
            for _ in range(60):
                pid, echoed = await _hello(port, b"after")
                assert echoed == b"after" and pid != victim
                served.add(pid)
                if replacement in served and len(served) == workers:
                    break
            supervisor.shutdown()
    assert replacement != victim and replacement in served
    assert served == {replacement} | (set(first.values()) - {victim})
    assert supervisor.restarts == 1 and status == [0]
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        re.fullmatch(
            r"worker 0 was killed by SIGKILL after [\d.]+ s; restarting in 0\.05 s "
            r"\(restart #1\)",
            m,
        )
        for m in messages
    ), messages
    assert f"worker 0 started (pid {replacement})" in messages


@pytest.mark.slow
async def test_crashing_worker_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    # It crashes after reporting ready: restarted for ever (with back-off), never
    # given up on as a start-up failure, however often it crashes.
    caplog.set_level(logging.WARNING, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        crash_worker, trionet.AcceptOptions(host="127.0.0.1"), workers=1, restart_delay=0.05
    )
    status: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run_supervisor, supervisor, status)
            # Start-up failures would be given up on at the STARTUP_ATTEMPTS-th
            # exit, before this many restarts.
            while supervisor.restarts < STARTUP_ATTEMPTS:
                await trio.sleep(0.02)
            supervisor.shutdown()
    delays = [
        m.group(1)
        for r in caplog.records
        if (
            m := re.search(
                r"worker 0 exited with status 1 .*restarting in ([\d.]+) s", r.getMessage()
            )
        )
    ]
    assert delays[:2] == ["0.05", "0.10"]  # doubling; RestartBackoff's test covers the rest
    assert len(delays) >= STARTUP_ATTEMPTS and len(status) == 1  # run() returned
    assert not supervisor.pids


@pytest.mark.slow
async def test_worker_that_cannot_start_stops_the_supervisor(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Worker 1 needs a port the test holds; worker 0 serves. Worker 1 fails at
    # start-up STARTUP_ATTEMPTS times in a row, then everything stops and
    # run() raises with worker 1's own error, as one line.
    caplog.set_level(logging.INFO, logger="trionet.workers")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        monkeypatch.setenv("TRIONET_TEST_HELD_PORT", str(port))
        supervisor = WorkerSupervisor(
            held_port_worker,
            trionet.AcceptOptions(host="127.0.0.1"),
            workers=2,
            grace=1.0,
            restart_delay=0.05,
        )
        with trio.fail_after(30), pytest.raises(trionet.WorkerStartupError) as info:
            await supervisor.run()
    error = info.value
    assert (error.worker_id, error.attempts) == (1, STARTUP_ATTEMPTS)
    assert error.error.startswith(f"[Errno {errno.EADDRINUSE}] ")
    assert f"127.0.0.1:{port}" in error.error and os.strerror(errno.EADDRINUSE) in error.error
    assert str(error) == f"worker 1 could not start ({STARTUP_ATTEMPTS} attempts): {error.error}"
    assert not supervisor.pids  # worker 0 was stopped too
    messages = [r.getMessage() for r in caplog.records]
    for attempt in range(1, STARTUP_ATTEMPTS):
        retry = f"worker 1 could not start (attempt {attempt} of {STARTUP_ATTEMPTS}): {error.error}"
        assert any(m.startswith(retry) for m in messages), messages
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err  # the workers printed none


@pytest.mark.slow
def test_run_workers_raises_the_startup_error_itself(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(trionet.WorkerStartupError) as info:
        trionet.run_workers(
            fail_at_start_worker,
            trionet.AcceptOptions(host="127.0.0.1"),
            workers=1,
            restart_delay=0.05,
        )
    assert info.value.error == "RuntimeError: worker 0 cannot start: second line"
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow
async def test_worker_ignoring_shutdown_is_killed_after_grace(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(trionet._apps._workers._supervisor, "EXIT_MARGIN", 0.1)
    caplog.set_level(logging.INFO, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        stubborn_worker, trionet.AcceptOptions(host="127.0.0.1"), workers=1, grace=0.2
    )
    status: list[int] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run_supervisor, supervisor, status)
            [pid] = (await supervisor.wait_ready()).values()
            supervisor.shutdown()
            stopped_at = trio.current_time()
    assert trio.current_time() - stopped_at >= 0.3  # grace + margin, then SIGKILL
    assert status == [1] and supervisor.restarts == 0
    messages = [r.getMessage() for r in caplog.records]
    assert f"worker 0 (pid {pid}) still running after grace: SIGKILL" in messages
    assert f"worker 0 (pid {pid}) was killed by SIGKILL" in messages


# ----------------------------------------------------- the supervisor as a program
SCRIPT = """\
import logging, sys
import trionet

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(process)d %(name)s %(levelname)s %(message)s")

async def echo(conn):
    while data := await conn.receive_some():
        await conn.send_all(data)

async def worker(ctx):
    await ctx.serve(trionet.NetProcessor(), echo)

if __name__ == "__main__":
    sys.exit(trionet.run_workers(worker, trionet.AcceptOptions(host="127.0.0.1"),
                                 workers=2, grace=5.0, sharing=sys.argv[1]))
"""


class _Lines:
    """A subprocess's stderr, read by a thread, waited on with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stderr is not None
        self._stream = proc.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self._queue.put(line)

    def close(self) -> None:
        """Call once the process has exited: the reader sees EOF and stops."""
        self._thread.join(5)
        self._stream.close()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 5.0) -> list[re.Match[str]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [m for line in self.seen if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found
            try:
                self.seen.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no {count}x {pattern!r} in {self.seen}") from None


@pytest.fixture
def supervisor_process(tmp_path: Path) -> Iterator[object]:
    script = tmp_path / "supervisor.py"
    script.write_text(SCRIPT)
    started: list[tuple[subprocess.Popen[str], _Lines]] = []

    def start(sharing: str) -> tuple[subprocess.Popen[str], _Lines]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(
            [sys.executable, str(script), sharing], env=env, stderr=subprocess.PIPE, text=True
        )
        started.append((proc, _Lines(proc)))
        return started[-1]

    yield start
    for proc, lines in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        lines.close()


def _wait_refused(port: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except ConnectionRefusedError:
            return
        except ConnectionResetError:  # queued on a listener as it closed
            pass
        assert time.monotonic() < deadline, f"port {port} still accepts connections"
        time.sleep(0.02)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(min(65536, n - len(got)))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


@pytest.mark.slow
@pytest.mark.parametrize("sharing", ["reuseport", "inherit"])
def test_sigterm_stops_gracefully_without_losing_bytes(
    supervisor_process: object, sharing: str
) -> None:
    proc, lines = supervisor_process(sharing)  # type: ignore[operator]
    [m] = lines.wait_for(r"on port\(s\) \[(\d+)\]")
    port = int(m.group(1))
    lines.wait_for(r"worker \d \(pid \d+\) serving", count=2)
    first, second = os.urandom(200_000), os.urandom(300_000)
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    with client:
        client.sendall(first)
        assert _recv_exactly(client, len(first)) == first  # in flight: half done
        proc.send_signal(signal.SIGTERM)
        lines.wait_for(r"trionet.workers INFO worker \d \(pid \d+\): shutting down", count=2)
        # The listening sockets close (new clients are refused); the connection lives on.
        _wait_refused(port)
        client.sendall(second)
        client.shutdown(socket.SHUT_WR)
        rest = bytearray()
        while chunk := client.recv(65536):
            rest += chunk
    assert bytes(rest) == second
    assert proc.wait(timeout=8) == 0
    exits = lines.wait_for(r"worker (\d) \(pid \d+\) exited with status 0", count=2)
    assert sorted(m.group(1) for m in exits) == ["0", "1"]
    lines.wait_for("all workers stopped")


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_supervisor(supervisor_process: object) -> None:
    proc, lines = supervisor_process("reuseport")  # type: ignore[operator]
    pids = [int(m.group(1)) for m in lines.wait_for(r"worker \d started \(pid (\d+)\)", count=2)]
    lines.wait_for(r"worker \d \(pid \d+\) serving", count=2)
    proc.kill()
    proc.wait(5)
    lines.wait_for("supervisor gone, shutting down", count=2)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"orphaned workers still running: {pids}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


PRINTING_SCRIPT = """\
import sys
import trio
import trionet

async def worker(ctx):
    for i in range(500):
        print(f"worker {ctx.worker_id} line {i}")  # text and newline: two writes
        if i % 10 == 0:
            await trio.sleep(0.002)  # both workers print over the same ~0.2 s
    ctx.ready()
    await ctx.shutdown_requested.wait()

if __name__ == "__main__":
    sys.exit(trionet.run_workers(worker, trionet.AcceptOptions(host="127.0.0.1"),
                                 workers=2, grace=2.0, sharing="inherit"))
"""


@pytest.mark.slow
def test_worker_lines_do_not_interleave_on_unbuffered_stdout(tmp_path: Path) -> None:
    # Under PYTHONUNBUFFERED (systemd units often set it) print() writes the
    # text and the newline separately; workers sharing the supervisor's stdout
    # would then produce merged lines. Workers run line-buffered instead.
    script = tmp_path / "printing.py"
    script.write_text(PRINTING_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while len(lines) < 1000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()
    bad = [line for line in lines if not re.fullmatch(r"worker [01] line \d+", line)]
    assert not bad, bad[:5]
    assert sorted(lines) == sorted(f"worker {w} line {i}" for w in (0, 1) for i in range(500))
