"""``trionet echo|proxy --config FILE.toml`` and ``--check``: the file holds
the flags' settings (flags override it), every problem of a file or command
line is one line, and the real command runs from a file (workers too)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trionet._apps._cli import check, main, parse

from .running import Running, echo_roundtrip, env, running_upstream

GOOD = """\
# A proxy, as an operator writes it.
listen = 0
upstream = "127.0.0.1:9"
max_connections = 100
throttle = "close"
inactivity_timeout = 30
connect_timeout = 2.5
proxy_protocol = true
proxy_protocol_trusted = ["10.0.0.0/8", "192.168.0.0/16"]
access_log = false
log_level = "warning"
log_format = "json"
"""


def write(tmp_path: Path, text: str, name: str = "trionet.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_the_file_sets_what_the_flags_set(tmp_path: Path) -> None:
    args, plan = parse(["proxy", "--config", write(tmp_path, GOOD)])
    assert (args.port, args.upstream) == (0, [("127.0.0.1", 9)])
    assert (args.max_connections, args.throttle) == (100, "close")
    assert (args.inactivity_timeout, args.connect_timeout) == (30.0, 2.5)
    assert args.proxy_protocol is True
    assert [str(n) for n in args.proxy_protocol_trusted] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert (args.access_log, args.log_level, args.log_format) == (False, "warning", "json")
    # ... and reaches what runs: the processor and the listening options.
    assert plan.processor.max_connections == 100 and plan.processor.access_log is False
    assert plan.listen.inactivity_timeout == 30.0 and plan.listen.proxy_protocol is True


def test_flags_override_the_file(tmp_path: Path) -> None:
    argv = ["proxy", "--config", write(tmp_path, GOOD), "--max-connections", "7"]
    argv += ["--upstream", "10.1.1.1:80", "--proxy-protocol-trusted", "172.16.0.0/12"]
    args, _plan = parse(argv)
    assert (args.max_connections, args.upstream) == (7, [("10.1.1.1", 80)])
    assert [str(n) for n in args.proxy_protocol_trusted] == ["172.16.0.0/12"]  # replaced
    assert args.throttle == "close"  # from the file, not overridden


def test_listen_and_port_are_one_key(tmp_path: Path) -> None:
    args, _plan = parse(["proxy", "--config", write(tmp_path, 'port = 81\nupstream = "h:1"\n')])
    assert args.port == 81


def test_several_upstreams_in_the_file(tmp_path: Path) -> None:
    conf = write(tmp_path, 'port = 81\nupstream = ["h:1", "g:2"]\nbalance = "least-conn"\n')
    args, _plan = parse(["proxy", "--config", conf])
    assert (args.upstream, args.balance) == ([("h", 1), ("g", 2)], "least-conn")


def test_check_lists_every_problem_of_the_file_and_the_flags(tmp_path: Path) -> None:
    bad = write(
        tmp_path,
        """\
listen = 99999
upstrem = "127.0.0.1:9"
max_connections = 0
inactivity_timeout = "soon"
proxy_protocol = "yes"
throttle = "sideways"
proxy_protocol_trusted = ["ten"]
port = 80
workers = [1]
""",
    )
    problems = check(["proxy", "--config", bad, "--grace", "later", "--workers", "0"])
    assert problems == [
        f"{bad}: listen: '99999': a port is 0..65535",
        f"{bad}: unknown key 'upstrem' (no such option of 'trionet proxy'); "
        "did you mean 'upstream'?",
        f"{bad}: max_connections: '0': must be at least 1",
        f"{bad}: inactivity_timeout: 'soon': expected seconds, e.g. 30 or 0.5",
        f"{bad}: proxy_protocol: 'yes': expected true or false",
        f"{bad}: throttle: 'sideways': expected one of 'pause', 'close'",
        f"{bad}: proxy_protocol_trusted: 'ten': expected a network, e.g. 10.0.0.0/8",
        f"{bad}: port: the same setting as listen; give one",
        f"{bad}: workers: [1]: expected a string or a number, not a TOML list",
        "argument --grace: 'later': expected seconds, e.g. 30 or 0.5",
        "argument --workers: '0': must be at least 1",
        # upstream is missing (misspelt in the file); listen is there, if bad.
        "the following arguments are required: --upstream",
    ]


def test_check_lists_combination_and_file_problems(tmp_path: Path) -> None:
    conf = write(tmp_path, 'listen = 0\nupstream = "h:1"\nproxy_protocol_trusted = ["::1/128"]\n')
    argv = ["proxy", "--config", conf, "--max-connections", "1", "--tls-cert", "c.pem"]
    assert check([*argv, "--throttle", "up"]) == [
        "argument --throttle: invalid choice: 'up' (choose from 'pause', 'close')",
        "argument --tls-cert: needs --tls-key as well",
        "argument --proxy-protocol-trusted: needs --proxy-protocol",
        "argument --max-connections: '1': a proxy session needs 2 connections "
        "(client and upstream); give at least 2",
    ]
    missing = str(tmp_path / "missing.pem")
    assert check(["echo", "--tls-cert", missing, "--tls-key", missing]) == [
        f"argument --tls-cert: {missing!r}: no such file"
    ]
    [unresolvable] = check(["echo", "--host", "no-such-host.invalid"])
    assert unresolvable.startswith("argument --host: 'no-such-host.invalid': cannot resolve it")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("port = 1\nport = = 2\n", "not valid TOML: Invalid value (at line 2, column 8)"),
        ("[echo]\nport = 1\n", "unknown key 'echo' (no such option of 'trionet echo')"),
        ("port = {a = 1}\n", "port: {'a': 1}: expected a string or a number, not a TOML dict"),
        ("check = true\n", "unknown key 'check' (no such option of 'trionet echo')"),
        ("no_access_log = true\n", "unknown key 'no_access_log' (no such option of "),
        ("upstream = 'h:1'\n", "unknown key 'upstream' (no such option of 'trionet echo')"),
        ("access_log = 'no'\n", "access_log: 'no': expected true or false"),
        ("port = 1.5\n", "port: '1.5': expected a port number"),
        ("port = true\n", "port: True: expected a string or a number, not a boolean"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, text)
    [line] = check(["echo", "--config", path])
    assert line.startswith(f"{path}: {problem}"), line


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    assert check(["echo", "--config", path]) == [
        f"{path}: cannot read it: No such file or directory"
    ]


def test_check_passes_a_good_configuration(tmp_path: Path) -> None:
    assert check(["proxy", "--config", write(tmp_path, GOOD)]) == []
    assert check(["echo", "--port", "0"]) == []


def test_without_check_a_bad_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "port = 99999\nmax_connections = -1\n")
    with pytest.raises(SystemExit) as info:
        main(["echo", "--config", path])
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: trionet echo")
    assert err[-2:] == [
        f"trionet echo: error: {path}: port: '99999': a port is 0..65535",
        f"trionet echo: error: {path}: max_connections: '-1': must be at least 1",
    ]


# ------------------------------------------------------ the real command
def run_check(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trionet", *argv, "--check"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_exit_status_and_lines(tmp_path: Path) -> None:
    good = run_check("proxy", "--config", write(tmp_path, GOOD))
    assert (good.returncode, good.stdout, good.stderr) == (
        0,
        "trionet proxy: configuration OK\n",
        "",
    )
    bad_file = write(tmp_path, "listen = -1\nupstream = 'nowhere'\nthrottle = 3\n", "bad.toml")
    bad = run_check("proxy", "--config", bad_file, "--stats-port", "http")
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        f"trionet proxy: {bad_file}: listen: '-1': a port is 0..65535",
        f"trionet proxy: {bad_file}: upstream: 'nowhere': expected HOST:PORT, e.g. 127.0.0.1:8080",
        f"trionet proxy: {bad_file}: throttle: '3': expected one of 'pause', 'close'",
        "trionet proxy: argument --stats-port: 'http': expected a port number",
    ]


def test_the_command_runs_from_a_file(tmp_path: Path) -> None:
    with running_upstream() as upstream:
        conf = write(
            tmp_path,
            f'listen = 0\nupstream = "127.0.0.1:{upstream.server_address[1]}"\n'
            'log_format = "json"\nmax_connections = 10\n',
        )
        with Running("-m", "trionet", "proxy", "--config", conf) as run:
            port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+), forwarding to")[1])
            assert echo_roundtrip(port, b"from a file") == b"got 11 bytes"
            status, _out, err = run.stop(signal.SIGTERM)
    assert status == 0, err
    [session] = [json.loads(line) for line in err.splitlines()]  # JSON: the file said so
    assert session["end"] == "eof" and session["bytes_in"] == 11


@pytest.mark.slow
def test_workers_read_the_file_too(tmp_path: Path) -> None:
    conf = write(tmp_path, 'port = 0\nworkers = 2\nlog_format = "json"\ngrace = 2\n')
    with Running("-m", "trionet", "echo", "--config", conf) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)")[1])
        deadline = time.monotonic() + 60
        while not _echoes(port):  # a worker may not listen yet
            assert time.monotonic() < deadline, "no worker serves"
            time.sleep(0.05)
        status, out, err = run.stop(signal.SIGTERM, timeout=30)
    assert status == 0, err
    assert out.count("connections accepted") == 2  # both workers ran...
    lines = [json.loads(line) for line in err.splitlines()]  # ...and logged JSON, as the file says
    assert any(r["logger"] == "trionet.access" and r["worker"] in (0, 1) for r in lines)


def _echoes(port: int) -> bool:
    try:
        return echo_roundtrip(port, b"x") == b"x"
    except OSError:
        return False
