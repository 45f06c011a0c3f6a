"""A fleet of workers as one server: shared statistics, fleet-wide limits.

The shared memory (trionet._apps._workers._shared) is tested in one process
first -- slots that sum, fold into totals when retired, and a throttle whose
limits count every slot -- then with real worker processes on loopback: one
stats page summing two workers and staying monotonic when one is killed, and
``max_connections`` holding for two workers under a burst of clients.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import trionet
from trionet._apps._tcp_proxy import ProxyStatistics
from trionet._apps._workers._shared import (
    BUCKETS,
    FleetMemory,
    WorkerSlot,
    bucket_of,
    fleet_capacity,
)
from trionet._apps._workers._supervisor import WorkerSupervisor
from trionet._core._throttle import Throttle

from .running import Running, echo_roundtrip, running_upstream

ACCEPTS = "proxy.process.tcp.total_accepts"
OPEN = "proxy.process.net.connections_currently_open"
FLEET_LIMIT = 4
PER_CLIENT = 3
SESSIONS = "proxy.process.tcp_proxy.sessions"


# ------------------------------------------------------------ worker programs
async def _echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def fleet_echo_worker(ctx: trionet.WorkerContext) -> None:
    await ctx.serve(trionet.NetProcessor(), _echo)


async def limited_worker(ctx: trionet.WorkerContext) -> None:
    await ctx.serve(trionet.NetProcessor(max_connections=FLEET_LIMIT), _echo)


async def per_client_worker(ctx: trionet.WorkerContext) -> None:
    await ctx.serve(trionet.NetProcessor(per_client_max_connections=PER_CLIENT), _echo)


# -------------------------------------------------------- the shared memory
@contextmanager
def fleet_of(capacity: int) -> Iterator[FleetMemory]:
    fleet = FleetMemory(capacity)
    try:
        yield fleet
    finally:
        fleet.close()


def _values(fleet: FleetMemory) -> dict[str, tuple[int, tuple[tuple[int, int], ...]]]:
    return {r.statistic.record: (r.value, r.workers) for r in fleet.readings()}


def test_slots_sum_and_fold_into_totals_when_retired() -> None:
    with fleet_of(fleet_capacity(2)) as fleet, ExitStack() as stack:
        a, b = fleet.claim(0), fleet.claim(1)
        one = WorkerSlot(fleet.fd, fleet.capacity, a)
        two = WorkerSlot(fleet.fd, fleet.capacity, b)
        stack.callback(one.close)
        stack.callback(two.close)
        one.publish(trionet.NetStatistics(total_accepts=5, connections_currently_open=2))
        two.publish(trionet.NetStatistics(total_accepts=7, connections_currently_open=1))
        values = _values(fleet)
        assert values[ACCEPTS] == (12, ((0, 5), (1, 7)))
        assert values[OPEN] == (3, ((0, 2), (1, 1)))
        assert "proxy.process.tcp_proxy.sessions" not in values  # no proxy ran
        # Worker 0 exits: its counters stay in the total, its gauge goes.
        fleet.retire(a)
        values = _values(fleet)
        assert values[ACCEPTS] == (12, ((1, 7),))
        assert values[OPEN] == (1, ((1, 1),))
        # Its replacement takes a fresh (zeroed) slot and counts from 0.
        c = fleet.claim(0)
        three = WorkerSlot(fleet.fd, fleet.capacity, c)
        stack.callback(three.close)
        three.publish(trionet.NetStatistics(total_accepts=1), ProxyStatistics(sessions=1))
        values = _values(fleet)
        assert values[ACCEPTS] == (13, ((0, 1), (1, 7)))
        assert values["proxy.process.tcp_proxy.sessions"] == (1, ((0, 1), (1, 0)))


def test_claim_refuses_when_every_slot_is_taken() -> None:
    with fleet_of(2) as fleet:
        fleet.claim(0)
        fleet.claim(1)
        with pytest.raises(RuntimeError, match="no free statistics slot: 2 worker processes"):
            fleet.claim(2)


def test_shared_throttle_limits_the_fleet() -> None:
    with fleet_of(4) as fleet, ExitStack() as stack:
        throttles = []
        for wid in range(2):
            slot = WorkerSlot(fleet.fd, fleet.capacity, fleet.claim(wid))
            stack.callback(slot.close)
            throttles.append(slot.throttle(Throttle(3, 2), ()))
        one, two = throttles
        one.acquire("192.0.2.1")
        one.acquire("192.0.2.1")
        # Worker two sees worker one's connections: per client and in all.
        assert two.client_at_limit("192.0.2.1") and two.client_at_limit("::ffff:192.0.2.1")
        assert not two.client_at_limit("192.0.2.2")
        assert not two.at_limit() and two.at_limit(need=2)
        two.acquire("192.0.2.2")
        assert one.at_limit() and two.at_limit() and fleet.open_connections() == 3
        one.release("192.0.2.1")
        assert not two.client_at_limit("192.0.2.1") and not two.at_limit()
        # A plain Throttle (one process) sees only its own.
        assert not Throttle(3, 2).at_limit()


def test_exempt_clients_are_not_counted_in_the_shared_table() -> None:
    with fleet_of(2) as fleet:
        slot = WorkerSlot(fleet.fd, fleet.capacity, fleet.claim(0))
        exempt = (ipaddress.IPv4Network("10.0.0.0/8"),)
        throttle = slot.throttle(Throttle(None, 1, exempt), exempt)
        for _ in range(3):
            throttle.acquire("10.1.2.3")
        assert not throttle.client_at_limit("10.1.2.3")
        # Even a client hashed into the exempt client's bucket is not blocked by it.
        start = bucket_of("10.1.2.3") * fleet.capacity
        assert sum(slot._regions.clients[start : start + fleet.capacity]) == 0
        slot.close()


def test_retire_gives_back_a_dead_workers_connections() -> None:
    with fleet_of(2) as fleet:
        slot_id = fleet.claim(0)
        slot = WorkerSlot(fleet.fd, fleet.capacity, slot_id)
        throttle = slot.throttle(Throttle(2, 1), ())
        throttle.acquire("192.0.2.9")
        throttle.acquire("192.0.2.8")
        slot.close()
        other = WorkerSlot(fleet.fd, fleet.capacity, fleet.claim(1))
        peer = other.throttle(Throttle(2, 1), ())
        assert peer.at_limit() and peer.client_at_limit("192.0.2.9")
        fleet.retire(slot_id)  # the worker died with its connections
        assert not peer.at_limit() and not peer.client_at_limit("192.0.2.9")
        other.close()


def test_buckets_are_stable_across_processes() -> None:
    # hash() is salted per interpreter; the table must not be.
    assert bucket_of("192.0.2.1") == bucket_of("::ffff:192.0.2.1")
    assert 0 <= bucket_of("2001:db8::1") < BUCKETS
    assert bucket_of("192.0.2.1") == 55  # CRC-32, the same in every worker


def test_use_throttle_refuses_while_connections_are_open() -> None:
    net = trionet.NetProcessor(max_connections=5)
    table = trionet._processor.table_of(net)
    table.throttle.acquire(None)
    with pytest.raises(RuntimeError, match=r"1 connection\(s\) open"):
        table.use_throttle(Throttle(5))


# ------------------------------------------------------------- real workers
def _fetch(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _stats(port: int) -> dict[str, int]:
    status, body = await trio.to_thread.run_sync(_fetch, port, "/stats")
    assert status == 200
    records: dict[str, int] = json.loads(body)
    return records


async def _wait_for(port: int, record: str, value: int) -> dict[str, int]:
    with trio.fail_after(20):
        while (records := await _stats(port))[record] != value:
            await trio.sleep(0.05)
    return records


async def _roundtrip(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        got = b""
        while chunk := await stream.receive_some():
            got += chunk
    return got


async def _run(
    supervisor: WorkerSupervisor, *, task_status: trio.TaskStatus[WorkerSupervisor]
) -> None:
    await supervisor.run(task_status=task_status)


@pytest.mark.slow
async def test_one_page_sums_the_workers_and_stays_monotonic() -> None:
    supervisor = WorkerSupervisor(
        fleet_echo_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=2,
        grace=2.0,
        restart_delay=0.05,
        stats=0,
    )
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            await nursery.start(_run, supervisor)
            [port] = supervisor.ports
            assert supervisor.stats_server is not None
            [page] = supervisor.stats_server.ports
            pids = await supervisor.wait_ready()
            status, body = await trio.to_thread.run_sync(_fetch, page, "/readyz")
            assert (status, body) == (200, b"ready\n")
            for i in range(12):
                assert await _roundtrip(port, b"x%d" % i) == b"x%d" % i
            # Published every 0.1 s: a snapshot may show the last accept and
            # not yet its bytes, so wait for the connections to have closed.
            sent = sum(len(b"x%d" % i) for i in range(12))
            records = await _until(page, lambda r: r[ACCEPTS] == 12 and r[OPEN] == 0)
            assert records["proxy.process.net.read_bytes"] == sent
            assert records["proxy.process.net.write_bytes"] == sent
            # /metrics: the total and one series per worker, adding up.
            _, text = await trio.to_thread.run_sync(_fetch, page, "/metrics")
            families = {f.name: f for f in text_string_to_metric_families(text.decode())}
            samples = {
                s.labels.get("worker", "all"): s.value
                for s in families["trionet_tcp_total_accepts"].samples
            }
            assert samples["all"] == 12 and samples["0"] + samples["1"] == 12
            # Kill worker 0: its counts stay in the total; its replacement adds.
            os.kill(pids[0], signal.SIGKILL)
            while supervisor.ready_pids.get(0, pids[0]) == pids[0]:
                await trio.sleep(0.02)
            assert (await _stats(page))[ACCEPTS] == 12
            for _ in range(4):
                assert await _roundtrip(port, b"y") == b"y"
            await _wait_for(page, ACCEPTS, 16)
            supervisor.shutdown()
    assert supervisor.restarts == 1


def _hold(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        clients.append(sock)
    return clients


def _echoed(clients: list[socket.socket], expect: int) -> list[socket.socket]:
    """The first ``expect`` of ``clients`` (each sent one byte) whose byte
    comes back (the others wait in a backlog: the fleet is at its limit)."""
    pending, echoed = list(clients), list[socket.socket]()
    deadline = time.monotonic() + 15
    while len(echoed) < expect and (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(pending, [], [], left)
        for sock in readable:
            assert sock.recv(1) == b"?"
            pending.remove(sock)
            echoed.append(sock)
    return echoed


async def _settled(page: int, record: str, at_least: int) -> dict[str, int]:
    """The page once ``record`` is ``at_least`` and a moment more has passed
    (time for an overshoot to show, if there were one)."""
    await _until(page, lambda records: records[record] >= at_least)
    await trio.sleep(0.5)
    return await _stats(page)


async def _until(page: int, done: Callable[[dict[str, int]], bool]) -> dict[str, int]:
    with trio.fail_after(15):
        while not done(records := await _stats(page)):
            await trio.sleep(0.05)
    return records


@pytest.mark.slow
@pytest.mark.parametrize("sharing", ["reuseport", "inherit"])
async def test_max_connections_holds_for_the_fleet(sharing: str) -> None:
    supervisor = WorkerSupervisor(
        limited_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=2,
        grace=1.0,
        sharing=sharing,  # type: ignore[arg-type]
        stats=0,
    )
    clients: list[socket.socket] = []
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                await nursery.start(_run, supervisor)
                [port] = supervisor.ports
                assert supervisor.stats_server is not None
                [page] = supervisor.stats_server.ports
                await supervisor.wait_ready()
                # A burst of 16 clients at once against a fleet limit of 4.
                clients = await trio.to_thread.run_sync(_hold, port, 16)
                for sock in clients:
                    sock.sendall(b"?")
                records = await _settled(page, OPEN, FLEET_LIMIT)
                # Per worker it would be 8; the bound is limit + workers - 1.
                held = records[OPEN]
                assert FLEET_LIMIT <= held <= FLEET_LIMIT + 1, records
                assert records[ACCEPTS] == held
                served = await trio.to_thread.run_sync(_echoed, clients, held)
                assert len(served) == held
                # Two clients leave: waiting ones are served in their place, on
                # whichever worker their connection waits (a paused worker is
                # woken when the fleet is below its limit again).
                for sock in served[:2]:
                    sock.close()
                await _until(page, lambda r: r[ACCEPTS] > held and r[OPEN] >= FLEET_LIMIT)
                await trio.sleep(0.5)  # time for an overshoot to show
                records = await _stats(page)
                assert FLEET_LIMIT <= records[OPEN] <= FLEET_LIMIT + 1, records
                admitted = records[ACCEPTS] - held
                assert admitted == records[OPEN] - (held - 2) >= 1, records
                rest = [sock for sock in clients if sock not in served]
                more = await trio.to_thread.run_sync(_echoed, rest, admitted)
                assert len(more) == admitted
                for sock in clients:
                    sock.close()
                supervisor.shutdown()
    finally:
        for sock in clients:
            sock.close()


def _echoed_or_closed(clients: list[socket.socket]) -> tuple[int, int]:
    """(echoed, closed by the server) of ``clients``, each sending one byte."""
    echoed = closed = 0
    for sock in clients:
        try:
            sock.sendall(b"?")
            got = sock.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            got = b""
        echoed += got == b"?"
        closed += got == b""
    return echoed, closed


@pytest.mark.slow
async def test_per_client_limit_holds_for_the_fleet() -> None:
    supervisor = WorkerSupervisor(
        per_client_worker,
        trionet.AcceptOptions(host="127.0.0.1"),
        workers=2,
        grace=1.0,
        stats=0,
    )
    clients: list[socket.socket] = []
    try:
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                await nursery.start(_run, supervisor)
                [port] = supervisor.ports
                assert supervisor.stats_server is not None
                [page] = supervisor.stats_server.ports
                await supervisor.wait_ready()
                # 12 connections of one client (127.0.0.1), spread over both
                # workers by the kernel; per worker, 6 would be served.
                clients = await trio.to_thread.run_sync(_hold, port, 12)
                echoed, closed = await trio.to_thread.run_sync(_echoed_or_closed, clients)
                assert PER_CLIENT <= echoed <= PER_CLIENT + 1, echoed
                assert echoed + closed == 12
                # Both as the fleet counted them, once every worker has published.
                await _until(
                    page,
                    lambda r: (
                        r[ACCEPTS] == echoed
                        and r["proxy.process.net.per_client.connections_throttled_in"] == closed
                    ),
                )
                for sock in clients:
                    sock.close()
                supervisor.shutdown()
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.slow
def test_cli_proxy_fleet_page_sums_the_proxy_sessions() -> None:
    with running_upstream() as upstream:
        target = f"127.0.0.1:{upstream.server_address[1]}"
        argv = ["proxy", "--listen", "0", "--upstream", target, "--workers", "2"]
        with Running("-m", "trionet", *argv, "--stats-port", "0", "--grace", "2") as run:
            port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
            page = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats", 60)[1])
            deadline = time.monotonic() + 60
            while _fetch(page, "/readyz")[0] != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            for i in range(6):
                assert echo_roundtrip(port, b"p" * i) == b"got %d bytes" % i
            deadline = time.monotonic() + 20
            while (records := json.loads(_fetch(page, "/stats")[1]))[SESSIONS] < 6:
                assert time.monotonic() < deadline, records
                time.sleep(0.05)
            _, text = _fetch(page, "/metrics")
            status, _out, err = run.stop(signal.SIGTERM, timeout=30)
    assert status == 0, err
    assert records[SESSIONS] == 6 and records["proxy.process.tcp_proxy.upstream_failures"] == 0
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    samples = {
        s.labels.get("worker", "all"): s.value
        for s in families["trionet_tcp_proxy_sessions"].samples
    }
    assert samples["all"] == 6 and samples["0"] + samples["1"] == 6
