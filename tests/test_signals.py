"""``trionet.stop_on_signals`` and ``NetProcessor.start_server``.

In a subprocess (tests/scripts/signal_echo_server.py), as a program runs: one
SIGTERM stops gracefully (the port closes, the connection in flight is still
served and finishes, exit 0); two stop at once (the connection in flight is
cancelled well within the grace period, exit 0). In process: the argument
checks, several servers stopped together, a return without any signal, and a
first signal that finds the servers already stopping.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio

import trionet

from .conftest import tcp_client
from .running import ROOT, Running

SCRIPT = str(ROOT / "tests" / "scripts" / "signal_echo_server.py")
GRACE = 30.0  # far longer than any wait below: an immediate stop cannot be the grace ending


@contextmanager
def running_server() -> Iterator[tuple[Running, socket.socket]]:
    """The script, serving one client connection that has echoed once."""
    with Running(SCRIPT, str(GRACE)) as run:
        port = int(run.expect(r"^PORT (\d+)$")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(b"ping")
            assert client.recv(100) == b"ping"  # the handler is running
            yield run, client


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.slow
def test_one_sigterm_stops_gracefully() -> None:
    with running_server() as (run, client):
        port = client.getpeername()[1]
        run.proc.send_signal(signal.SIGTERM)
        run.expect(r"^SIGTERM: shutting down \(grace 30 s\)$")
        deadline = time.monotonic() + 10
        while not refused(port):  # the listening socket closes at once...
            assert time.monotonic() < deadline, "still accepting after SIGTERM"
            time.sleep(0.02)
        client.sendall(b"after")  # ...while the connection in flight is served
        assert client.recv(100) == b"after"
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100) == b""  # the handler finished and closed it
        status, _, err = run.wait(timeout=15)
    assert status == 0, err
    lines = run.lines
    assert "handler finished" in lines and "handler cancelled" not in lines
    assert lines[-1] == "stopped 0"


@pytest.mark.slow
def test_a_second_sigterm_stops_at_once() -> None:
    with running_server() as (run, client):
        run.proc.send_signal(signal.SIGTERM)
        run.expect(r"^SIGTERM: shutting down \(grace 30 s\)$")
        start = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        run.expect(r"^SIGTERM again: stopping now$")
        assert client.recv(100) == b""  # closed as the cancelled handler exits
        assert time.monotonic() - start < 10  # not the 30 s grace
        status, _, err = run.wait(timeout=15)
    assert status == 0, err
    lines = run.lines
    assert "handler cancelled" in lines and "handler finished" not in lines
    assert lines[-1] == "stopped 0"


# ---------------------------------------------------------------- in process
async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def test_start_server_returns_the_bound_server(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    server = await net.start_server(nursery, echo, trionet.AcceptOptions(host="127.0.0.1"))
    assert isinstance(server, trionet.Server) and server.processor is net
    stream = await tcp_client(server.ports[0])
    await stream.send_all(b"typed")
    assert await stream.receive_some() == b"typed"
    await stream.aclose()
    server.shutdown(0)
    await server.wait_closed()


async def test_start_server_raises_what_serve_raises(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
            await net.start_server(
                nursery, echo, trionet.AcceptOptions(host="127.0.0.1", port=port)
            )
    with pytest.raises(ValueError, match="at least one port"):
        await net.start_server(nursery, echo)
    assert net.statistics().accepts_currently_open == 0


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((), {}, TypeError, "at least one Server"),
        (("server",), {}, TypeError, "'server' is not a trionet.Server"),
        ((None,), {"grace": -1}, ValueError, "grace=-1"),
        ((None,), {"grace": None}, ValueError, "grace=None"),
        ((None,), {"signals": []}, ValueError, r"signals=\[\]"),
        ((None,), {"signals": [9999]}, ValueError, "9999 is not a signal"),
    ],
)
async def test_bad_arguments_are_refused_before_anything_runs(
    nursery: trio.Nursery,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    error: type[Exception],
    match: str,
) -> None:
    server = await trionet.NetProcessor().start_server(nursery, echo, 0)
    args = tuple(server if a is None else a for a in args)
    with pytest.raises(error, match=match):
        await trionet.stop_on_signals(*args, **kwargs)
    assert not server.stopping
    server.shutdown(0)


async def test_returns_when_the_servers_close_without_a_signal(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    server = await net.start_server(nursery, echo, 0)
    page = await nursery.start(net.serve_stats)
    said: list[str] = []

    async def stop_later() -> None:
        await trio.sleep(0.01)
        server.shutdown(0)
        page.shutdown(0)

    nursery.start_soon(stop_later)
    with trio.fail_after(10):
        await trionet.stop_on_signals(server, page, announce=said.append)
    assert said == []
    assert server.stopping and page.stopping


async def test_one_signal_stops_every_server_given(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    server = await net.start_server(nursery, echo, 0)
    page = await nursery.start(net.serve_stats)
    said: list[str] = []

    async def signal_later() -> None:
        await trio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    nursery.start_soon(signal_later)
    with trio.fail_after(10):
        await trionet.stop_on_signals(server, page, grace=2.5, announce=said.append)
    assert said == ["SIGINT: shutting down (grace 2.5 s)"]
    assert server.stopping and page.stopping
    assert net.statistics().accepts_currently_open == 0


async def test_a_signal_while_already_stopping_cancels_at_once(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    cancelled = trio.Event()

    async def hold(conn: trionet.Connection) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server = await net.start_server(nursery, hold, 0)
    client = await tcp_client(server.ports[0])
    while net.statistics().connections_currently_open == 0:
        await trio.sleep(0.01)
    server.shutdown(GRACE)  # begun elsewhere, with a long grace
    said: list[str] = []

    async def signal_later() -> None:
        await trio.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    nursery.start_soon(signal_later)
    with trio.fail_after(10):
        await trionet.stop_on_signals(server, grace=GRACE, announce=said.append)
    assert said == ["SIGTERM: stopping now"]  # not "again": this call saw one signal
    assert cancelled.is_set()
    assert await client.receive_some() == b""
    await client.aclose()
