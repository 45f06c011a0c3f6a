"""The ``trionet`` command: argument errors that name the option, --help, and
real runs as a subprocess (``python -m trionet``) stopped with signals."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import urllib.request

import pytest

from trionet._cli import _host_port, build_parser, main

from .running import Running, echo_roundtrip


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
    assert err == ""


def test_limits_and_timeouts_are_applied() -> None:
    argv = ["echo", "--port", "0", "--stats-port", "0", "--max-connections", "1"]
    argv += ["--throttle", "close", "--inactivity-timeout", "0.5"]
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
