"""Health endpoints (/healthz, /readyz) and the shutdown order a load
balancer sees: /readyz turns 503, then the listeners close, then the
connections drain within the grace, and the stats page closes last.

In-process with a real HTTP client first (Readiness, the proxy's readings on
both pages), then across a real shutdown of the ``trionet`` command, in one
process and with ``--workers 2`` (the supervisor's page).
"""

from __future__ import annotations

import json
import signal
import socket
import time
from functools import partial

import pytest
import trio

import trionet

from .running import Running, running_upstream
from .test_stats_page import echo, exchange, fetch, get

OPEN = "proxy.process.tcp_proxy.sessions_open"


# ---------------------------------------------------------------- in-process
def test_readiness_reasons() -> None:
    readiness = trionet.Readiness()
    assert readiness.ready and readiness.problem() is None
    workers = {"serving": 1}
    readiness.add_check(lambda: None if workers["serving"] == 2 else "1 of 2 workers serving")
    assert readiness.problem() == "1 of 2 workers serving"
    workers["serving"] = 2
    assert readiness.ready
    readiness.not_ready("reloading")
    readiness.not_ready("shutting down")  # the first reason is kept
    assert readiness.problem() == "reloading"
    readiness.ready_again()
    assert readiness.ready
    with pytest.raises(TypeError, match="is not callable"):
        readiness.add_check("yes")  # type: ignore[arg-type]


async def test_readyz_follows_the_server_and_healthz_the_page(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    server = await nursery.start(net.serve, echo, trionet.AcceptOptions(host="127.0.0.1"))
    readiness = trionet.Readiness()
    readiness.watch(server)
    page = await nursery.start(partial(net.serve_stats, 0, readiness=readiness))
    port = page.ports[0]
    assert (await get(port, "/readyz"))[::2] == (200, b"ready\n")
    assert (await get(port, "/healthz"))[::2] == (200, b"ok\n")
    status, headers, body = await get(port, "/readyz", "HEAD")
    assert (status, body, headers["content-length"]) == (200, b"", "6")
    stream = await exchange(server.ports[0], b"held")
    server.shutdown(5)  # listeners close; the held connection drains
    assert (await get(port, "/readyz"))[::2] == (503, b"not ready: shutting down\n")
    assert (await get(port, "/healthz"))[::2] == (200, b"ok\n")
    records = json.loads((await get(port, "/stats"))[2])
    assert records["proxy.process.net.connections_currently_open"] == 1
    assert records["proxy.process.net.accepts_currently_open"] == 0
    await stream.aclose()
    await server.wait_closed()
    page.shutdown(0)


async def test_proxy_statistics_on_both_pages(nursery: trio.Nursery) -> None:
    upstream_net = trionet.NetProcessor()
    upstream = await nursery.start(
        upstream_net.serve, echo, trionet.AcceptOptions(host="127.0.0.1")
    )
    net = trionet.NetProcessor()
    proxy = trionet.TcpProxy(net, "127.0.0.1", upstream.ports[0])
    server = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))

    async def serve(*, task_status: trio.TaskStatus[trionet.Server]) -> None:
        await trionet.serve_stats(
            net.statistics, 0, extra=[proxy.readings], task_status=task_status
        )

    page = await nursery.start(serve)
    stream = await exchange(server.ports[0], b"through")
    records = json.loads((await get(page.ports[0], "/stats"))[2])
    assert records["proxy.process.tcp_proxy.sessions"] == 1
    assert records["proxy.process.tcp_proxy.sessions_open"] == 1
    assert records["proxy.process.tcp_proxy.upstream_failures"] == 0
    text = (await get(page.ports[0], "/metrics"))[2].decode()
    assert "# TYPE trionet_tcp_proxy_sessions_open gauge" in text
    assert "trionet_tcp_proxy_sessions_total 1.0" in text
    assert "(ATS record proxy.process.tcp_proxy.upstream_timeouts)" in text
    await stream.aclose()
    server.shutdown(0)
    upstream.shutdown(0)
    page.shutdown(0)


async def test_extra_must_be_callable() -> None:
    with pytest.raises(TypeError, match=r"serve_stats.extra: 3 is not callable"):
        await trionet.serve_stats(trionet.NetProcessor().statistics, 0, extra=[3])  # type: ignore[list-item]


# ------------------------------------------------------ a real shutdown (CLI)
def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def _echo_once(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(100)
        if not chunk:
            break
        got += chunk
    return got


def _wait_ready(page: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while fetch(page, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, fetch(page, "/readyz")
        time.sleep(0.05)


def _shutdown_in_order(run: Running, port: int, page: int) -> None:
    """Hold a connection, SIGTERM, and check what a load balancer sees."""
    _wait_ready(page)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        assert _echo_once(client, b"before") == b"before"
        run.proc.send_signal(signal.SIGTERM)
        run.expect(r"SIGTERM: shutting down")
        # 1. /readyz is 503 at once, the page still answers (/healthz 200).
        status, _headers, body = fetch(page, "/readyz")
        assert (status, body) == (503, b"not ready: shutting down\n")
        assert fetch(page, "/healthz")[::2] == (200, b"ok\n")
        # 2. The listeners are closed: a new client is refused...
        deadline = time.monotonic() + 10
        while not _refused(port):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # 3. ...while the open connection drains, still served.
        assert _echo_once(client, b"during") == b"during"
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b""
    # 4. The page closes last, once the connections have ended: the command
    # exits by itself (no second signal).
    out, err = run.proc.communicate(timeout=30)
    assert run.proc.returncode == 0, err
    assert b"stopped: " in out
    assert _refused(page)


@pytest.mark.slow
def test_cli_shutdown_order() -> None:
    argv = ["echo", "--port", "0", "--stats-port", "0", "--grace", "20"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        page = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
        _shutdown_in_order(run, port, page)


@pytest.mark.slow
def test_cli_fleet_shutdown_order() -> None:
    argv = ["echo", "--port", "0", "--workers", "2", "--stats-port", "0", "--grace", "20"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)")[1])
        page = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats", 60)[1])
        _shutdown_in_order(run, port, page)


@pytest.mark.slow
def test_cli_proxy_page_shows_the_proxy() -> None:
    with running_upstream() as upstream:
        target = f"127.0.0.1:{upstream.server_address[1]}"
        argv = ["proxy", "--listen", "0", "--upstream", target, "--stats-port", "0"]
        with Running("-m", "trionet", *argv) as run:
            port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
            page = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(b"hi")
                deadline = time.monotonic() + 10
                while (records := json.loads(fetch(page, "/stats")[2]))[OPEN] != 1:
                    assert time.monotonic() < deadline, records
                    time.sleep(0.05)
                client.shutdown(socket.SHUT_WR)
                assert client.recv(100) == b"got 2 bytes"
            status, _out, err = run.stop()
    assert status == 0, err
    assert records["proxy.process.tcp_proxy.sessions"] == 1
