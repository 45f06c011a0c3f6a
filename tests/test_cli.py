"""The ``trionet`` command: argument errors that name the option, --help, and
real runs as a subprocess (``python -m trionet``) stopped with signals;
``--host ::`` serving both families; workers whose stats port is taken.
(tests/test_cli_hostile.py throws hypothesis at every flag.)"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trustme

from trionet._apps._cli import main, parse
from trionet._apps._cli_args import _host_port, build_parser

from .running import Running, echo_roundtrip, env, running_upstream

# A log line's timestamp (trionet._apps._logging): ISO 8601, UTC, milliseconds.
LOG_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["proxy", "--listen", "80", "--upstream", "foo"],
            "argument --upstream: 'foo': expected HOST:PORT",
        ),
        (
            ["proxy", "--listen", "80", "--upstream", "host:0"],
            "argument --upstream: 'host:0': expected HOST:PORT",
        ),
        (["proxy", "--listen", "80"], "the following arguments are required: --upstream"),
        (["echo", "--port", "99999"], "argument --port: '99999': a port is 0..65535"),
        (["echo", "--port", "http"], "argument --port: 'http': expected a port number"),
        (["echo", "--max-connections", "0"], "argument --max-connections: '0': must be at least 1"),
        (
            ["proxy", "--listen", "80", "--upstream", "h:1", "--max-connections", "1"],
            "argument --max-connections: '1': a proxy session needs 2 connections",
        ),
        (
            ["echo", "--inactivity-timeout", "-1"],
            "argument --inactivity-timeout: '-1': must be a positive number of seconds",
        ),
        (
            ["echo", "--active-timeout", "nan"],
            "argument --active-timeout: 'nan': must be a positive number of seconds",
        ),
        (["echo", "--grace", "soon"], "argument --grace: 'soon': expected seconds"),
        (["echo", "--throttle", "sideways"], "argument --throttle: invalid choice: 'sideways'"),
        (["echo", "--tls-cert", "cert.pem"], "argument --tls-cert: needs --tls-key as well"),
        (["echo", "--tls-key", "key.pem"], "argument --tls-key: needs --tls-cert as well"),
        (["serve"], "argument COMMAND: invalid choice: 'serve'"),
        (
            ["echo", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"],
            "argument --tls-cert: '/nonexistent.pem': no such file",
        ),
        (
            ["echo", "--proxy-protocol-trusted", "10.0.0.0/8"],
            "argument --proxy-protocol-trusted: needs --proxy-protocol",
        ),
        (
            ["echo", "--proxy-protocol", "--proxy-protocol-trusted", "ten"],
            "argument --proxy-protocol-trusted: 'ten': expected a network",
        ),
        (["echo", "--workers", "0"], "argument --workers: '0': must be at least 1"),
        (["echo", "--workers", "5000"], "argument --workers: '5000': at most 1024 workers"),
        (["echo", "--port", "9" * 5000], "argument --port: '99999"),  # then "...': too large"
        (["echo", "--host", "a b"], "argument --host: 'a b': expected an IP address or a host"),
        (
            ["echo", "--stats-host", "127.0.0.1\x00.example"],
            "argument --stats-host: '127.0.0.1\\x00.example': expected an IP address",
        ),
        (
            ["proxy", "--listen", "80", "--upstream", "localhost\x00.example.com:80"],
            "argument --upstream: 'localhost\\x00.example.com:80': expected HOST:PORT",
        ),
    ],
)
def test_usage_errors_name_the_argument(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in usage_error(capsys, *argv)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("example.com:443", ("example.com", 443)),
        ("[::1]:80", ("::1", 80)),
        ("::1:80", ("::1", 80)),
    ],
)
def test_upstream_parsing(text: str, expected: tuple[str, int]) -> None:
    assert _host_port(text) == expected


def test_huge_number_is_too_large(capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(capsys, "echo", "--max-connections", "9" * 5000)
    assert line.endswith("': too large")


@pytest.mark.parametrize(
    ("host", "bound"),
    [
        ("::", None),  # every address: both families (AcceptOptions host=None)
        ("[::]", None),
        ("0:0:0:0:0:0:0:0", None),
        ("", None),
        ("0.0.0.0", "0.0.0.0"),  # every IPv4 address, as written
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("localhost", "localhost"),
        ("bücher.example", "bücher.example"),
    ],
)
def test_bind_host(host: str, bound: str | None) -> None:
    _args, plan = parse(["echo", "--host", host, "--stats-port", "0", "--stats-host", host])
    assert plan.listen.host == bound
    assert plan.stats is not None and plan.stats.host == bound


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_host_colons_serves_ipv6_and_ipv4() -> None:
    with Running("-m", "trionet", "echo", "--host", "::", "--port", "0") as run:
        first = run.expect(r"listening on (\S+):(\d+)$")
        second = run.expect(r"listening on (\S+):(\d+)$")
        assert {first[1], second[1]} == {"[::]", "0.0.0.0"}
        assert first[2] == second[2]
        port = int(first[2])
        assert echo_roundtrip(port, b"over ipv4", host="127.0.0.1") == b"over ipv4"
        assert echo_roundtrip(port, b"over ipv6", host="::1") == b"over ipv6"
        status, out, err = run.stop()
    assert status == 0, err
    assert "stopped: 2 connections accepted" in out


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["proxy", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--listen PORT",
        "--upstream HOST:PORT",
        "--host",
        "--max-connections",
        "--throttle {pause,close}",
        "--inactivity-timeout",
        "--active-timeout",
        "--connect-timeout",
        "--stats-port",
        "--workers",
        "--tls-cert",
        "--tls-key",
        "--proxy-protocol",
        "example: trionet proxy --listen 8080",
    ):
        assert option in text, option


def test_defaults() -> None:
    args = build_parser().parse_args(["echo"])
    assert (args.host, args.port, args.throttle, args.grace) == ("127.0.0.1", 7007, "pause", 5.0)
    assert args.max_connections is None and args.stats_port is None
    assert isinstance(args, argparse.Namespace)


def wait_ready(page: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{page}/readyz", timeout=10):
                return
        except urllib.error.HTTPError as exc:
            exc.close()
            assert time.monotonic() < deadline, exc
            time.sleep(0.05)


def fetch_stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
        records: dict[str, int] = json.loads(resp.read())
    return records


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_echo_command_runs_and_stops_gracefully(sig: int) -> None:
    with Running("-m", "trionet", "echo", "--port", "0", "--stats-port", "0") as run:
        port = int(run.expect(r"trionet echo: listening on 127\.0\.0\.1:(\d+)")[1])
        stats_port = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
        assert echo_roundtrip(port, b"hello trionet") == b"hello trionet"
        records = fetch_stats(stats_port)
        assert records["proxy.process.tcp.total_accepts"] == 1
        assert records["proxy.process.net.read_bytes"] == 13
        status, out, err = run.stop(sig)
    assert status == 0, err
    assert f"{signal.Signals(sig).name}: shutting down (grace 5 s)" in out
    assert "stopped: 1 connections accepted, 13 bytes in, 13 bytes out" in out
    # stderr has the session log (on by default) and nothing else.
    [line] = err.splitlines()
    session = rf"INFO trionet\.access: 127\.0\.0\.1:\d+ -> :{port} #1 eof [\d.]+s in=13 out=13"
    assert re.fullmatch(LOG_TIME + session, line), line


def test_limits_and_timeouts_are_applied() -> None:
    argv = ["echo", "--port", "0", "--stats-port", "0", "--max-connections", "1"]
    argv += ["--throttle", "close", "--inactivity-timeout", "1.0"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        stats_port = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as first:
            first.sendall(b"ping")
            assert first.recv(10) == b"ping"
            # At the limit with --throttle close: the second client is closed at once.
            with socket.create_connection(("127.0.0.1", port), timeout=10) as second:
                assert second.recv(10) == b""
            # The idle first connection is closed by its inactivity timeout.
            assert first.recv(10) == b""
        records = fetch_stats(stats_port)
        assert records["proxy.process.net.connections_throttled_in"] == 1
        assert records["proxy.process.net.inactivity_timeouts"] == 1
        assert records["proxy.process.net.connections_currently_open"] == 0
        status, _out, err = run.stop()
    assert status == 0, err


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Running("-m", "trionet", "echo", "--port", str(port)) as run:
            _out, err = run.proc.communicate(timeout=15)
    assert run.proc.returncode == 1
    assert err.decode().startswith("trionet echo: [Errno 98]")
    assert "in use" in err.decode()


def test_proxy_command() -> None:
    with running_upstream() as upstream:
        target = f"127.0.0.1:{upstream.server_address[1]}"
        argv = ["proxy", "--listen", "0", "--upstream", target, "--connect-timeout", "2"]
        with Running("-m", "trionet", *argv, "--stats-port", "0") as run:
            line = rf"trionet proxy: listening on 127\.0\.0\.1:(\d+), forwarding to {target}$"
            port = int(run.expect(line)[1])
            stats_port = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
            assert echo_roundtrip(port, b"through the proxy") == b"got 17 bytes"
            records = fetch_stats(stats_port)
            status, out, err = run.stop()
    assert status == 0, err
    assert upstream.requests == [b"through the proxy"]
    assert records["proxy.process.net.connects_total"] == 1
    assert records["proxy.process.tcp.total_accepts"] == 1
    # 17 bytes up, "got 17 bytes" (12) down: each read once and written once.
    assert "stopped: 1 sessions (0 upstream failures), 29 bytes in, 29 bytes out" in out


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    cert.private_key_pem.write_to_path(d / "key.pem")
    cert.cert_chain_pems[0].write_to_path(d / "cert.pem")
    for pem in cert.cert_chain_pems[1:]:
        with open(d / "cert.pem", "ab") as f:
            f.write(pem.bytes())
    return ca, d / "cert.pem", d / "key.pem"


def test_echo_over_tls(certificate: tuple[trustme.CA, Path, Path]) -> None:
    ca, cert, key = certificate
    argv = ["echo", "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+) \(TLS\)$")[1])
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"secret")
            assert tls.recv(100) == b"secret"
            version = tls.version()
        status, out, err = run.stop()
    assert status == 0, err
    assert version in ("TLSv1.2", "TLSv1.3")
    # The processor counts bytes on the wire: the handshake and TLS records too.
    m = re.search(r"stopped: 1 connections accepted, (\d+) bytes in, (\d+) bytes out", out)
    assert m is not None, out
    assert int(m[1]) > 6 and int(m[2]) > 6


def test_echo_behind_proxy_protocol() -> None:
    argv = ["echo", "--port", "0", "--proxy-protocol", "--stats-port", "0"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        stats_port = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
        header = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"
        assert echo_roundtrip(port, header + b"hello") == b"hello"  # header consumed
        with socket.create_connection(("127.0.0.1", port), timeout=10) as bare:
            bare.sendall(b"no header at all\r\n")
            bare.shutdown(socket.SHUT_WR)
            try:
                reply = bare.recv(100)
            except ConnectionResetError:  # closed with our bytes unread
                reply = b""
            assert reply == b""  # closed, never echoed
        records = fetch_stats(stats_port)
        status, _out, err = run.stop()
    assert status == 0, err
    assert records["proxy.process.net.proxy_protocol_errors"] == 1
    assert records["proxy.process.net.read_bytes"] == len(header) + 5  # header + payload


@pytest.mark.slow
def test_fleet_stats_port_taken_stops_with_one_line() -> None:
    # The supervisor serves the fleet's one page: a port taken stops the
    # command before any worker starts, with status 1 and one line.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        page = held.getsockname()[1]
        argv = ["echo", "--port", "0", "--workers", "2", "--stats-port", str(page)]
        done = subprocess.run(
            [sys.executable, "-m", "trionet", *argv, "--grace", "1"],
            env=env(),
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 1, done
    # The supervisor's log lines aside, one line.
    [line] = [line for line in done.stderr.splitlines() if not re.match(LOG_TIME, line)]
    assert line.startswith(f"trionet echo: [Errno {errno.EADDRINUSE}] "), line
    assert f"127.0.0.1:{page}" in line and os.strerror(errno.EADDRINUSE) in line
    assert "worker" not in done.stdout


@pytest.mark.slow
def test_echo_with_two_workers() -> None:
    argv = ["echo", "--port", "0", "--workers", "2", "--stats-port", "0", "--grace", "2"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"trionet echo: listening on 127\.0\.0\.1:(\d+) \(2 workers\)")[1])
        # One page, the supervisor's, for the fleet.
        page = int(run.expect(r"trionet echo: statistics on http://127\.0\.0\.1:(\d+)/", 60)[1])
        wait_ready(page)  # /readyz: 200 once both workers serve
        for i in range(8):
            assert echo_roundtrip(port, b"w%d" % i) == b"w%d" % i
        deadline = time.monotonic() + 10
        while (accepted := fetch_stats(page)["proxy.process.tcp.total_accepts"]) < 8:
            assert time.monotonic() < deadline, accepted
            time.sleep(0.05)
        status, out, err = run.stop(signal.SIGTERM, timeout=30)
    assert status == 0, err
    assert accepted == 8
    assert "SIGTERM: shutting down (grace 2 s)" in out
    assert out.count("connections accepted") == 2
    assert "worker 0: statistics" not in out


@pytest.mark.slow
def test_workers_follow_the_supervisor_policy_on_a_repeated_sigterm() -> None:
    # One signal policy for every supervisor (trionet._apps._workers._signals):
    # a repeated SIGTERM is not an escalation, so an open connection keeps its
    # grace period and the command still exits 0 once it ends.
    argv = ["echo", "--port", "0", "--workers", "2", "--grace", "10"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)")[1])
        with _connect_when_serving(port) as client:
            run.proc.send_signal(signal.SIGTERM)
            run.expect(r"SIGTERM: shutting down \(grace 10 s\)")
            run.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            client.sendall(b"after")  # the workers were not killed
            assert client.recv(100) == b"after"
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b""
        status, out, err = run.stop(signal.SIGTERM, timeout=30)
    assert status == 0, err
    assert "again" not in out


def _connect_when_serving(port: int, timeout: float = 60.0) -> socket.socket:
    """A connection to a worker that echoes (a worker may not listen yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"before")
            if client.recv(100) == b"before":
                return client
            client.close()
        except OSError:
            pass
        assert time.monotonic() < deadline, f"nothing serves port {port}"
        time.sleep(0.05)
