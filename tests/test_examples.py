"""Every example in trionet.examples runs (``python -m trionet.examples.NAME``,
from the package this suite imports: the checkout or an installed wheel):
started as a subprocess on a free port, bytes exchanged, stopped with SIGINT,
clean exit checked; and every server example given a port that is taken says
so in one line and exits 1. (The echo_client and ats_echo_server runs are
tested by their authors' test files.)"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import trionet.examples

from .running import Running, echo_roundtrip, env, running_upstream

EXAMPLES = Path(trionet.examples.__file__).parent
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.py") if p.stem != "__init__")
ECHO_SERVER = ("-m", "trionet.examples.echo_server")
TCP_PROXY = ("-m", "trionet.examples.tcp_proxy")
ATS_TUNNEL = ("-m", "trionet.examples.ats_tunnel")


def test_the_examples_are_all_there() -> None:
    """The package ships the five programs the docs tell readers to run."""
    assert NAMES == ["ats_echo_server", "ats_tunnel", "echo_client", "echo_server", "tcp_proxy"]


@pytest.mark.parametrize("name", NAMES)
def test_every_example_has_help(name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", f"trionet.examples.{name}", "--help"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.startswith("usage: ")
    assert "--port" in out or "--listen" in out or "--host" in out


SERVERS = {
    "echo_server": [],
    "tcp_proxy": ["--upstream", "127.0.0.1:9"],
    "ats_echo_server": [],
    "ats_tunnel": ["--upstream", "127.0.0.1:9"],
}


def test_every_server_example_is_checked_with_its_port_taken() -> None:
    clients = {"echo_client"}
    assert set(SERVERS) | clients == set(NAMES)


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_port_taken_is_one_line_and_status_1(name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", f"trionet.examples.{name}", "--port", str(port), *SERVERS[name]],
            env=env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 1, done
    assert done.stdout == ""
    [line] = done.stderr.splitlines()  # one line: no traceback, no second report
    assert line.startswith(f"{name}: "), line
    assert f"127.0.0.1:{port}" in line and "Address already in use" in line, line


def test_echo_server() -> None:
    args = [*ECHO_SERVER, "--port", "0", "--max-connections", "10"]
    with Running(*args, "--inactivity-timeout", "30") as run:
        port = int(run.expect(r"echo server listening on 127\.0\.0\.1 port (\d+)")[1])
        assert echo_roundtrip(port, b"abc" * 1000) == b"abc" * 1000
        assert echo_roundtrip(port, b"second") == b"second"
        status, out, err = run.stop(signal.SIGINT)
    assert status == 0, err
    assert "SIGINT: shutting down (grace 5 s)" in out
    assert "stopped after 2 connections" in out


def test_tcp_proxy() -> None:
    with running_upstream() as upstream:
        up_port = upstream.server_address[1]
        args = [*TCP_PROXY, "--port", "0", "--upstream", f"127.0.0.1:{up_port}"]
        with Running(*args, "--max-connections", "10", "--inactivity-timeout", "30") as run:
            port = int(run.expect(r"tcp proxy listening on 127\.0\.0\.1 port (\d+), upstream")[1])
            assert echo_roundtrip(port, b"q" * 100_000) == b"got 100000 bytes"
            assert echo_roundtrip(port, b"second") == b"got 6 bytes"
            status, out, err = run.stop(signal.SIGINT)
    assert status == 0, err
    assert upstream.requests == [b"q" * 100_000, b"second"]
    assert "sessions: 2, upstream failures: 0 (0 timed out), resets: 0, timeouts: 0" in out
    # 100 000 + 6 request bytes, 16 + 11 response bytes, each read once and written once.
    assert "bytes read: 100033, written: 100033, throttled: 0, open now: 0" in out


def test_tcp_proxy_upstream_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    args = [*TCP_PROXY, "--port", "0", "--upstream", f"127.0.0.1:{dead}"]
    with Running(*args) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1 port (\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert client.recv(10) == b""  # closed once the upstream refused
        status, out, err = run.stop(signal.SIGTERM)
    assert status == 0, err
    assert "sessions: 1, upstream failures: 1 (0 timed out)" in out


def test_ats_tunnel() -> None:
    """The same proxy on the iocore shim: same bytes, same half-close."""
    with running_upstream() as upstream:
        up_port = upstream.server_address[1]
        args = [*ATS_TUNNEL, "--port", "0", "--upstream", f"127.0.0.1:{up_port}"]
        with Running(*args, "--inactivity-timeout", "30", "--max-connections", "10") as run:
            port = int(run.expect(r"ats tunnel listening on 127\.0\.0\.1 port (\d+), upstream")[1])
            assert echo_roundtrip(port, b"t" * 300_000) == b"got 300000 bytes"
            assert echo_roundtrip(port, b"second") == b"got 6 bytes"
            status, out, err = run.stop(signal.SIGINT)
    assert status == 0, err
    assert upstream.requests == [b"t" * 300_000, b"second"]
    assert "sessions: 2, upstream failures: 0, errors: 0, bytes up: 300006, down: 27" in out


def test_ats_tunnel_upstream_down() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    args = [*ATS_TUNNEL, "--port", "0", "--upstream", f"127.0.0.1:{dead}"]
    with Running(*args) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1 port (\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert client.recv(10) == b""  # NET_EVENT_OPEN_FAILED: closed
        status, out, err = run.stop(signal.SIGTERM)
    assert status == 0, err
    assert "sessions: 1, upstream failures: 1, errors: 0" in out


def test_ats_tunnel_inactivity_timeout() -> None:
    """A session that goes quiet (the client neither sends nor half-closes)
    ends on VC_EVENT_INACTIVITY_TIMEOUT, aborting both sides: a cut request
    must not reach the upstream as a complete one."""
    with running_upstream() as upstream:
        up_port = upstream.server_address[1]
        args = [*ATS_TUNNEL, "--port", "0", "--upstream", f"127.0.0.1:{up_port}"]
        with Running(*args, "--inactivity-timeout", "0.5") as run:
            port = int(run.expect(r"listening on 127\.0\.0\.1 port (\d+)")[1])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(b"partial")
                with pytest.raises(ConnectionResetError):  # aborted by the timeout
                    client.recv(100)
            status, out, err = run.stop(signal.SIGINT)
    assert status == 0, err
    assert "sessions: 1, upstream failures: 0, errors: 1, bytes up: 7, down: 0" in out
    assert upstream.requests == []  # a reset, not an EOF ending a complete request
