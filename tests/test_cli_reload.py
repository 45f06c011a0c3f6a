"""The ``trionet`` command under an init system: SIGHUP and systemd's notify
socket, as real subprocesses. A single process stops gracefully on SIGHUP
(with its summary, instead of dying silently); with ``--workers`` SIGHUP
reloads, and a connection open across the reload keeps every byte. systemd's
side is a datagram socket the test reads."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .running import Running, echo_roundtrip


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket playing systemd; $NOTIFY_SOCKET names it for the command."""
    path = f"/tmp/trionet-cli-{os.getpid()}-{time.monotonic_ns()}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        yield sock
    finally:
        sock.close()
        os.unlink(path)


def wait_for(sock: socket.socket, line: str, seen: list[str], timeout: float = 60.0) -> None:
    """Read datagrams into ``seen`` (their lines) until one has ``line``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no datagram with {line!r}; got {seen}")
        ready, _, _ = select.select([sock], [], [], remaining)
        if ready:
            lines = sock.recv(4096).decode().split("\n")
            seen.extend(lines)
            if line in lines:
                return


def states(lines: list[str]) -> list[str]:
    return [x for x in lines if x in ("READY=1", "RELOADING=1", "STOPPING=1")]


def test_sighup_stops_a_single_process_gracefully(systemd: socket.socket) -> None:
    seen: list[str] = []
    with Running("-m", "trionet", "echo", "--port", "0") as run:
        port = int(run.expect(r"trionet echo: listening on 127\.0\.0\.1:(\d+)")[1])
        wait_for(systemd, "READY=1", seen)
        assert "STATUS=0 open connections" in seen
        assert echo_roundtrip(port, b"hello") == b"hello"
        status, out, err = run.stop(signal.SIGHUP)
    wait_for(systemd, "STOPPING=1", seen, timeout=5)
    assert status == 0, err
    assert "SIGHUP: shutting down (grace 5 s)" in out
    assert "stopped: 1 connections accepted, 5 bytes in, 5 bytes out" in out
    assert states(seen) == ["READY=1", "STOPPING=1"]


class LoadThread(threading.Thread):
    """Short echo connections one after another until stopped; counts what
    failed (refused, reset, short) and the bytes checked."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopped = threading.Event()
        self.done = 0
        self.bytes = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            payload = os.urandom(700)
            try:
                got = echo_roundtrip(self.port, payload)
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            if got != payload:
                self.errors.append(f"sent {len(payload)} bytes, got {len(got)}")
            self.done += 1
            self.bytes += len(got)
            time.sleep(0.005)


@pytest.mark.slow
def test_sighup_reloads_the_workers_without_dropping_a_connection(
    systemd: socket.socket,
) -> None:
    # Three reloads under a continuous load of short connections, with one
    # long connection open across all of them (served by a generation-0
    # worker, which drains while generations 1 to 3 take over).
    seen: list[str] = []
    argv = ["echo", "--port", "0", "--workers", "2", "--grace", "60"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)")[1])
        wait_for(systemd, "READY=1", seen)  # both workers serve
        load = LoadThread(port)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(b"before")
            assert client.recv(100) == b"before"
            load.start()
            try:
                for _ in range(3):
                    run.proc.send_signal(signal.SIGHUP)
                    run.expect(r"SIGHUP: reloading")
                    wait_for(systemd, "RELOADING=1", seen)
                    wait_for(systemd, "READY=1", seen)  # the new generation serves
                    # The old workers stopped accepting; this one is still served.
                    client.sendall(b"after")
                    assert client.recv(100) == b"after"
            finally:
                load.stopped.set()
                load.join(30)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b""
        status, _, err = run.stop(signal.SIGTERM, timeout=60)
    wait_for(systemd, "STOPPING=1", seen, timeout=5)
    assert status == 0, err
    assert load.errors == [] and load.done >= 20, (load.errors, load.done)
    assert states(seen) == ["READY=1", *["RELOADING=1", "READY=1"] * 3, "STOPPING=1"]
    assert "MONOTONIC_USEC=" in "\n".join(seen)
    # Four generations of two workers each printed their summary.
    summaries = [line for line in run.lines if "connections accepted" in line]
    assert len(summaries) == 8, run.lines
    assert "Traceback" not in err
    print(f"{load.done} connections, {load.bytes} bytes echoed across 3 reloads")
