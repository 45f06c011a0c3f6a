"""Reloading a fleet of workers, hung-worker detection, systemd notifications.

Real worker processes on loopback, an in-process supervisor: three reloads
under a continuous load of short request/response connections and long
streaming ones lose no connection and no byte, in both port-sharing modes,
while systemd's side of the notify socket sees READY / RELOADING / READY ...
STOPPING in order; a reload whose workers cannot start leaves the old ones
serving; a worker whose handler blocks the event loop is killed and replaced,
and its stack (naming the handler) is in the log.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import trionet
import trionet._apps._workers._supervisor
from trionet._apps._workers._sockets import Sharing
from trionet._apps._workers._supervisor import STARTUP_ATTEMPTS, WorkerSupervisor


# ------------------------------------------------------------ worker programs
# Module-level: worker processes import them by name.
async def tagged_echo_worker(ctx: trionet.WorkerContext) -> None:
    """Echo, after a first line "<generation> <pid>" telling who served."""
    header = f"{ctx.generation} {os.getpid()}\n".encode()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(header)
        while data := await conn.receive_some():
            await conn.send_all(data)

    await ctx.serve(trionet.NetProcessor(), handler)


async def no_second_generation_worker(ctx: trionet.WorkerContext) -> None:
    """Serves as generation 0; any later generation fails at start-up."""
    if ctx.generation > 0:
        raise RuntimeError(f"generation {ctx.generation}: bad configuration")
    await tagged_echo_worker(ctx)


def block_the_loop() -> None:
    time.sleep(60)  # what a hung worker's stack dump must show


async def hanging_worker(ctx: trionet.WorkerContext) -> None:
    header = f"{os.getpid()}\n".encode()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(header)
        if await conn.receive_some() == b"hang":
            block_the_loop()

    await ctx.serve(trionet.NetProcessor(), handler)


async def _run_supervisor(
    supervisor: WorkerSupervisor, status: list[int], *, task_status: trio.TaskStatus[None]
) -> None:
    status.append(await supervisor.run(task_status=task_status))


# ----------------------------------------------------- systemd's side of it
@pytest.fixture
def notify_socket(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[socket.socket]:
    """A datagram socket playing systemd, named by $NOTIFY_SOCKET: a path, or
    an abstract ``@name`` when the test is parametrized with one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"trionet-test-{os.getpid()}-{id(sock)}"
    if getattr(request, "param", "path") == "abstract":
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        path = f"/tmp/{name}.sock"
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()
        if getattr(request, "param", "path") != "abstract":
            os.unlink(path)


def received(sock: socket.socket) -> list[list[str]]:
    """Every datagram waiting on ``sock``, each as its lines."""
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode().split("\n"))
        except BlockingIOError:
            return out


async def collect(sock: socket.socket, out: list[list[str]]) -> None:
    """Read datagrams as systemd does, at once (a socket's queue holds few:
    net.unix.max_dgram_qlen, 10 here)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        out.extend(received(sock))


def states(datagrams: list[list[str]]) -> list[str]:
    """The state changes, in order (STATUS= and WATCHDOG=1 left out)."""
    keys = ("READY=1", "RELOADING=1", "STOPPING=1")
    return [line for d in datagrams for line in d if line in keys]


# ------------------------------------------------------------------ the load
class Load:
    """Clients on loopback: short request/response connections and long
    streams, each checking every byte it got back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = trio.Event()
        self.errors: list[str] = []
        self.short_done = 0
        self.long_done = 0
        self.bytes_checked = 0
        self.generations: set[int] = set()

    async def _exchange(self, payload: bytes, pace: float = 0.0) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            got = bytearray()

            async def receive() -> None:
                while chunk := await stream.receive_some(65536):
                    got.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                for i in range(0, len(payload), 4096):
                    await stream.send_all(payload[i : i + 4096])
                    if pace:
                        await trio.sleep(pace)
                await stream.send_eof()
        header, _, echoed = bytes(got).partition(b"\n")
        self.generations.add(int(header.split()[0]))
        if hashlib.sha256(echoed).digest() != hashlib.sha256(payload).digest():
            self.errors.append(f"sent {len(payload)} bytes, got {len(echoed)} back")
        self.bytes_checked += len(payload)

    async def short_client(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                await self._exchange(os.urandom(512 + n % 1024))
                self.short_done += 1
            except (OSError, trio.BrokenResourceError) as exc:
                self.errors.append(f"short: {exc!r}")
            await trio.sleep(0.005)  # continuous, yet leaves the CPU to the workers

    async def long_client(self) -> None:
        while not self.stop.is_set():
            try:  # ~1.5 s streaming 4 KiB every 10 ms: spans a reload or two
                await self._exchange(os.urandom(150 * 4096), pace=0.01)
                self.long_done += 1
            except (OSError, trio.BrokenResourceError) as exc:
                self.errors.append(f"long: {exc!r}")


async def _wait_for_log(caplog: pytest.LogCaptureFixture, text: str) -> None:
    while not any(text in r.getMessage() for r in caplog.records):
        await trio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sharing", "notify_socket"),
    [("reuseport", "abstract"), ("inherit", "path")],
    indirect=["notify_socket"],
)
async def test_three_reloads_under_load_lose_no_connection_and_no_byte(
    sharing: Sharing, notify_socket: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        tagged_echo_worker,
        trionet.AcceptOptions(host="127.0.0.1", backlog=16),
        workers=2,
        grace=30.0,
        sharing=sharing,
    )
    status: list[int] = []
    old_pids: list[set[int]] = []
    datagrams: list[list[str]] = []
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, notify_socket, datagrams)
            await nursery.start(_run_supervisor, supervisor, status)
            [port] = supervisor.ports
            await supervisor.wait_ready()
            load = Load(port)
            async with trio.open_nursery() as clients:
                for _ in range(3):
                    clients.start_soon(load.short_client)
                for _ in range(2):
                    clients.start_soon(load.long_client)
                for number in (1, 2, 3):
                    await trio.sleep(0.5)
                    old_pids.append(set(supervisor.ready_pids.values()))
                    supervisor.reload()
                    assert supervisor.reloading
                    await supervisor.wait_reloaded(number)
                    assert not supervisor.reloading
                    assert supervisor.generation == number
                    await trio.sleep(0.5)  # the new generation serves under load
                load.stop.set()
            for number in (0, 1, 2):
                await _wait_for_log(caplog, f"reload: generation {number} drained")
            supervisor.shutdown()
            await _wait_for_log(caplog, "all workers stopped")
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()  # the collector
    datagrams.extend(received(notify_socket))
    assert load.errors == [], load.errors
    assert load.short_done >= 20 and load.long_done >= 2
    assert load.generations == {0, 1, 2, 3}  # every generation served clients
    assert (supervisor.reloads, supervisor.failed_reloads, status) == (3, 0, [0])
    for a, b in itertools.pairwise(old_pids):
        assert not a & b  # each reload replaced every worker
    messages = [r.getMessage() for r in caplog.records]
    for number in (1, 2, 3):
        start = messages.index(
            f"reload: starting generation {number} (2 workers) beside generation {number - 1}"
        )
        serving = next(
            i
            for i, m in enumerate(messages)
            if m.startswith(
                f"reload: generation {number} serving; generation {number - 1} stops accepting"
            )
        )
        drained = messages.index(f"reload: generation {number - 1} drained, all its workers exited")
        assert start < serving < drained
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert states(datagrams) == ["READY=1", *["RELOADING=1", "READY=1"] * 3, "STOPPING=1"]
    for datagram in datagrams:
        if "RELOADING=1" in datagram:  # Type=notify-reload requires it
            [usec] = [line for line in datagram if line.startswith("MONOTONIC_USEC=")]
            assert 0 < int(usec.split("=")[1]) <= time.monotonic_ns() // 1000
    print(
        f"{sharing}: {load.short_done} short, {load.long_done} long connections, "
        f"{load.bytes_checked} bytes checked across 3 reloads"
    )


@pytest.mark.slow
async def test_a_reload_that_cannot_start_keeps_the_old_generation_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        no_second_generation_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=1,
        grace=2.0,
        restart_delay=0.05,
    )
    status: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run_supervisor, supervisor, status)
            [port] = supervisor.ports
            before = await supervisor.wait_ready()
            # A hang-up reaches the whole process group: the workers ignore it.
            os.kill(before[0], signal.SIGHUP)
            supervisor.reload()
            await supervisor.wait_reloaded(1)
            after = supervisor.ready_pids
            load = Load(port)
            await load._exchange(b"still here")
            supervisor.shutdown()
    assert (supervisor.reloads, supervisor.failed_reloads) == (0, 1)
    assert after == before and supervisor.generation == 0
    assert load.generations == {0} and load.errors == []
    assert status == [0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        "reload failed: generation 1 could not start (worker 0 could not start "
        f"({STARTUP_ATTEMPTS} attempts): RuntimeError: generation 1: bad configuration); "
        "generation 0 keeps serving"
    ]


async def _header(stream: trio.SocketStream) -> bytes:
    got = b""
    while not got.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        assert chunk, "closed before the header"
        got += chunk
    return got


@pytest.mark.slow
async def test_a_reload_waits_for_a_shared_slot_held_by_a_draining_worker(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Shared memory with room for two worker processes (normally 3 x workers
    # + 2): generation 0 drains a long connection while generation 1 serves,
    # so generation 2's worker has no slot until generation 0's exits. It must
    # wait for it -- not fail the reload, not run outside the fleet's limits.
    monkeypatch.setattr(trionet._apps._workers._supervisor, "fleet_capacity", lambda n: 2)
    caplog.set_level(logging.INFO, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        tagged_echo_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=1,
        grace=60.0,
        restart_delay=0.05,
    )
    status: list[int] = []
    waiting = "generation 2: worker 0 waits for a draining worker to exit"
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run_supervisor, supervisor, status)
            [port] = supervisor.ports
            await supervisor.wait_ready()
            long = await trio.open_tcp_stream("127.0.0.1", port)
            assert (await _header(long)).startswith(b"0 ")
            supervisor.reload()
            await supervisor.wait_reloaded(1)  # generation 1 serves, 0 drains `long`
            supervisor.reload()
            while not any(waiting in r.getMessage() for r in caplog.records):
                await trio.sleep(0.05)
            assert supervisor.generation == 1 and supervisor.reloading
            await long.send_all(b"still served")  # the draining worker was not cut
            got = b""
            while len(got) < len(b"still served"):
                got += await long.receive_some()
            assert got == b"still served"
            await long.aclose()  # generation 0's worker exits: its slot is free
            await supervisor.wait_reloaded(2)
            assert (supervisor.generation, supervisor.reloads) == (2, 2)
            # Generation 1 may still accept from the shared queue until its
            # SIGTERM lands; generation 2 must be the one serving soon after.
            served_by = b""
            while not served_by.startswith(b"2 "):
                async with await trio.open_tcp_stream("127.0.0.1", port) as fresh:
                    served_by = await _header(fresh)
                assert served_by[:2] in (b"1 ", b"2 ")
            supervisor.shutdown()
    assert supervisor.failed_reloads == 0 and status == [0]


@pytest.mark.slow
async def test_a_hung_worker_is_dumped_killed_and_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.workers")
    supervisor = WorkerSupervisor(
        hanging_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=1,
        grace=2.0,
        sharing="inherit",
        restart_delay=0.05,
        worker_timeout=4.0,
    )
    status: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run_supervisor, supervisor, status)
            [port] = supervisor.ports
            [hung] = (await supervisor.wait_ready()).values()
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert int(await stream.receive_some()) == hung
            await stream.send_all(b"hang")
            while supervisor.ready_pids.get(0, hung) == hung:
                await trio.sleep(0.05)
            replacement = supervisor.ready_pids[0]
            fresh = await trio.open_tcp_stream("127.0.0.1", port)
            assert int(await fresh.receive_some()) == replacement
            await fresh.aclose()
            await stream.aclose()
            supervisor.shutdown()
    assert supervisor.hung_workers == 1 and supervisor.restarts == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors[0].startswith(f"worker 0 (pid {hung}) hung: no heartbeat for ")
    assert errors[1].startswith(f"worker 0 (pid {hung}) stack when it hung:\n")
    dump = errors[1]
    # faulthandler's dump of the blocked thread: the sleeping function and
    # the handler that called it, in this file.
    assert "in block_the_loop" in dump and "in handler" in dump and "test_reload.py" in dump
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("worker 0 was killed by SIGKILL after") for m in messages)
    assert status == [0]


# ------------------------------------------------- the notifier, no process
def _as_env(sock: socket.socket) -> str:
    name = sock.getsockname()
    return "@" + name[1:].decode() if isinstance(name, bytes) else name


@pytest.mark.parametrize("notify_socket", ["abstract", "path"], indirect=True)
def test_notifier_sends_one_datagram_per_call(notify_socket: socket.socket) -> None:
    notifier = trionet._apps._workers._notify.SystemdNotifier.from_environ()
    assert notifier.enabled and notifier.watchdog is None
    assert notifier.ready("2 workers,\n 0 open connections")
    assert notifier.reloading()
    assert notifier.stopping()
    notifier.close()
    [ready, reloading, stopping] = received(notify_socket)
    assert ready == ["READY=1", "STATUS=2 workers, 0 open connections"]  # one line
    assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
    assert stopping == ["STOPPING=1"]


def test_notifier_reads_the_environment() -> None:
    from_environ = trionet._apps._workers._notify.SystemdNotifier.from_environ
    assert not from_environ({}).enabled
    assert not from_environ({"NOTIFY_SOCKET": "vsock:2:1"}).enabled  # logged, not used
    assert from_environ({"NOTIFY_SOCKET": "@x"}).address == "\0x"
    mine = {"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "3000000"}
    assert from_environ(mine).watchdog == 3.0
    assert from_environ({**mine, "WATCHDOG_PID": str(os.getpid())}).watchdog == 3.0
    assert from_environ({**mine, "WATCHDOG_PID": "1"}).watchdog is None  # not ours
    assert from_environ({**mine, "WATCHDOG_USEC": "0"}).watchdog is None


def test_a_missing_systemd_is_logged_once(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    notifier = trionet._apps._workers._notify.SystemdNotifier(str(tmp_path / "gone"))
    assert not notifier.ready() and not notifier.stopping()
    notifier.close()
    [record] = [r for r in caplog.records if r.name == "trionet.workers"]
    assert record.levelno == logging.WARNING and "cannot notify systemd at" in record.getMessage()


async def test_watchdog_at_half_its_period_and_status_every_interval(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"trionet-watchdog-{os.getpid()}"
    sock.bind("\0" + name)
    sock.setblocking(False)
    notify = trionet._apps._workers._notify
    notifier = notify.SystemdNotifier("\0" + name, watchdog=2.0)
    with sock:
        times: list[tuple[float, list[str]]] = []

        async def collect() -> None:
            while True:
                await trio.lowlevel.wait_readable(sock)
                times.append((trio.current_time(), sock.recv(4096).decode().split("\n")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            nursery.start_soon(notify.notify_loop, notifier, lambda: "3 open connections", 5.0)
            await trio.sleep(10.5)
            nursery.cancel_scope.cancel()
    notifier.close()
    watchdog = [t for t, lines in times if lines == ["WATCHDOG=1"]]
    status = [t for t, lines in times if lines == ["STATUS=3 open connections"]]
    assert watchdog == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert status == [5.0, 10.0]
