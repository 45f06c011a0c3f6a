"""trionet.examples.echo_client against trionet.examples.echo_server, both as real
processes on loopback (port 0: the server prints the port it got)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SERVER = ["-m", "trionet.examples.echo_server"]
CLIENT = ["-m", "trionet.examples.echo_client"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TIMEOUT = 20.0


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise AssertionError("echo server printed nothing in time")
    return proc.stdout.readline()


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, *SERVER, "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        line = read_line(proc, time.monotonic() + TIMEOUT)
        match = re.fullmatch(r"echo server listening on 127\.0\.0\.1 port (\d+)\n", line)
        assert match, f"unexpected first line from the echo server: {line!r}"
        yield int(match.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *CLIENT, *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=TIMEOUT,
    )


def test_count_round_trips(server_port: int) -> None:
    done = run_client("--port", str(server_port), "--count", "25", "--size", "256")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(
        rf"connected to 127\.0\.0\.1 port {server_port} from 127\.0\.0\.1 port \d+ in [\d.]+ ms",
        lines[0],
    )
    assert re.fullmatch(r"echoed 6400 bytes in 25 round trips of 256 bytes in [\d.]+ s", lines[1])
    assert done.stderr == ""


def test_default_size_and_count(server_port: int) -> None:
    done = run_client("--port", str(server_port))
    assert done.returncode == 0, done.stderr
    assert "echoed 25600 bytes in 100 round trips of 256 bytes" in done.stdout


def test_large_messages_arrive_intact(server_port: int) -> None:
    # 64 KiB messages come back in several segments; the client checks every byte.
    done = run_client("--port", str(server_port), "--count", "8", "--size", "65536")
    assert done.returncode == 0, done.stderr
    assert "echoed 524288 bytes in 8 round trips of 65536 bytes" in done.stdout


def test_duration(server_port: int) -> None:
    done = run_client("--port", str(server_port), "--duration", "0.3", "--size", "1000")
    assert done.returncode == 0, done.stderr
    match = re.search(
        r"echoed (\d+) bytes in (\d+) round trips of 1000 bytes in ([\d.]+) s", done.stdout
    )
    assert match, done.stdout
    received, trips, seconds = int(match[1]), int(match[2]), float(match[3])
    assert received >= 1000 and trips == received // 1000
    assert 0.29 <= seconds < 5.0


def test_refused_connect_names_the_address() -> None:
    with socket.socket() as bound:  # bound, not listening: connect is refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        done = run_client("--port", str(port), "--connect-timeout", "5")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == f"echo_client: Connection refused: 127.0.0.1:{port}\n"


def test_help_and_bad_arguments() -> None:
    done = run_client("--help")
    assert done.returncode == 0
    for flag in ("--host", "--port", "--size", "--count", "--duration", "--connect-timeout"):
        assert flag in done.stdout
    done = run_client("--count", "3", "--duration", "1")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
    done = run_client("--size", "0")
    assert done.returncode == 2 and "--size 0: must be >= 1" in done.stderr
    done = run_client("--connect-timeout", "0")
    assert done.returncode == 1
    assert "ConnectOptions.connect_timeout=0.0" in done.stderr
