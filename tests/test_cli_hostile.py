"""Hostile values for every flag of the ``trionet`` command.

Hypothesis throws numbers (negative, huge, NaN, inf, floats where ints go),
host names with NULs and control characters, garbage and empty strings at each
flag, and random mixes of flags. Each value is either accepted -- and then it is
checked against an independent rule for what that flag may hold -- or refused
with status 2 and one line that names the flag and quotes the value; never a
traceback, never another exception. Most cases run in-process through
``trionet._apps._cli.parse`` (argparse and the option objects, nothing bound); a few
go through ``python -m trionet`` to see the real exit status and stderr.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import math
import subprocess
import sys
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trionet._apps._cli import parse
from trionet._apps._cli_args import MAX_WORKERS

from .running import ROOT, env

# ------------------------------------------------------------------- values
NASTY = [
    "",
    " ",
    "-1",
    "-0",
    "0",
    "+7",
    " 7 ",
    "1_000",
    "0x10",
    "1e3",
    "1.5",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "9" * 30,
    "9" * 5000,
    "65535",
    "65536",
    "4294967296",
    "٣",  # an Arabic-Indic digit: int() takes it
    "\x00",
    "127.0.0.1\x00.evil",
    "a\nb",
    "\u2028",
    "\x85",
    "--port",
    "[::]",
    "::",
    "0.0.0.0",
    "[::1]:80",
    "localhost:0",
    "localhost:65536",
    "x" * 300,
    ".".join(["a" * 63] * 5),
    "a..b",
    "ü" * 70,
    "%s%n",
    "pause",
    "close",
    "10.0.0.0/8",
    "10.0.0.0/33",
]

VALUES = st.one_of(
    st.sampled_from(NASTY),
    st.integers(-(10**30), 10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8", categories=["Cc", "Zs", "Zl", "Po", "Nd"]), max_size=12),
)


# ------------------------------------------------------------------- oracles
# What each flag may hold, written independently of the CLI's own checks.
def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def port_ok(text: str) -> bool:
    value = _int(text)
    return value is not None and 0 <= value <= 65535


def count_ok(text: str) -> bool:
    value = _int(text)
    return value is not None and value >= 1


def workers_ok(text: str) -> bool:
    value = _int(text)
    return value is not None and 1 <= value <= MAX_WORKERS


def seconds_ok(text: str) -> bool:
    value = _float(text)
    return value is not None and math.isfinite(value) and value > 0


def grace_ok(text: str) -> bool:
    value = _float(text)
    return value is not None and math.isfinite(value) and value >= 0


def host_ok(text: str) -> bool:
    # No control, format, unassigned or separator character (a NUL would cut
    # the name in C; IDNA drops a soft hyphen), and a length a resolver takes.
    if any(unicodedata.category(c)[0] in "CZ" for c in text):
        return False
    return len(text) <= 255


def network_ok(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def upstream_ok(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (sep and host and host_ok(host) and port.isascii() and port.isdigit()):
        return False
    return 1 <= int(port) <= 65535


def throttle_ok(text: str) -> bool:
    return text in ("pause", "close")


# flag -> (oracle, the parsed attribute, other arguments it needs)
Oracle = Callable[[str], bool]
ECHO: dict[str, tuple[Oracle, str, list[str]]] = {
    "--port": (port_ok, "port", []),
    "--stats-port": (port_ok, "stats_port", []),
    "--max-connections": (count_ok, "max_connections", []),
    "--per-client-max": (count_ok, "per_client_max", []),
    "--workers": (workers_ok, "workers", []),
    "--inactivity-timeout": (seconds_ok, "inactivity_timeout", []),
    "--active-timeout": (seconds_ok, "active_timeout", []),
    "--grace": (grace_ok, "grace", []),
    "--host": (host_ok, "host", []),
    "--stats-host": (host_ok, "stats_host", ["--stats-port", "0"]),
    "--throttle": (throttle_ok, "throttle", []),
    "--proxy-protocol-trusted": (network_ok, "proxy_protocol_trusted", ["--proxy-protocol"]),
}
PROXY: dict[str, tuple[Oracle, str, list[str]]] = {
    "--listen": (port_ok, "port", ["--upstream", "127.0.0.1:80"]),
    "--upstream": (upstream_ok, "upstream", ["--listen", "0"]),
    "--connect-timeout": (seconds_ok, "connect_timeout", ["--listen", "0", "--upstream", "h:1"]),
}


# ------------------------------------------------------------------- running
def run_parse(argv: list[str]) -> tuple[int | None, str, object]:
    """(exit status or None, stderr, parsed args or None): parse() in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args, _plan = parse(argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
            return code, err.getvalue(), None
    return None, err.getvalue(), args


def check_refusal(command: str, flag: str, value: str, status: int | None, err: str) -> None:
    assert status == 2, (flag, value, status, err)
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    # argparse names the option (--listen is also --port: "--listen/--port").
    assert last.startswith(f"trionet {command}: error: argument {flag}"), last
    assert repr(value) in last or repr(value)[1:-1] in last, (value, last)


def check_flag(
    command: str, table: dict[str, tuple[Oracle, str, list[str]]], flag: str, value: str
) -> None:
    oracle, attribute, needs = table[flag]
    status, err, args = run_parse([command, *needs, f"{flag}={value}"])
    if oracle(value):
        # Accepted by the rule: the CLI must take it (a host name that
        # passes the rule may still be refused for its syntax).
        if status is None or flag not in ("--host", "--stats-host", "--upstream"):
            assert status is None, (flag, value, err)
            assert getattr(args, attribute) is not None
        else:
            check_refusal(command, flag, value, status, err)
    else:
        check_refusal(command, flag, value, status, err)


@settings(max_examples=300, deadline=None)
@given(flag=st.sampled_from(sorted(ECHO)), value=VALUES)
def test_echo_flag_values(flag: str, value: str) -> None:
    check_flag("echo", ECHO, flag, value)


@settings(max_examples=100, deadline=None)
@given(flag=st.sampled_from(sorted(PROXY)), value=VALUES)
def test_proxy_flag_values(flag: str, value: str) -> None:
    check_flag("proxy", PROXY, flag, value)


@pytest.mark.parametrize("flag", sorted(ECHO))
def test_every_nasty_value_at_every_echo_flag(flag: str) -> None:
    for value in NASTY:
        check_flag("echo", ECHO, flag, value)


def test_soft_hyphen_and_nul_do_not_reach_the_resolver() -> None:
    for host in ["local\u00adhost", "localhost\x00.example.com", "\u200blocalhost"]:
        status, err, _args = run_parse(["echo", f"--host={host}"])
        check_refusal("echo", "--host", host, status, err)


def test_accepted_values_are_the_values_given() -> None:
    status, err, args = run_parse(
        ["echo", "--port=+7", "--grace=-0", "--inactivity-timeout=1e-3", "--workers= 3 "]
    )
    assert status is None, err
    assert (args.port, args.inactivity_timeout, args.workers) == (7, 0.001, 3)  # type: ignore[attr-defined]
    assert math.copysign(1, args.grace) == 1  # type: ignore[attr-defined]  # not -0.0


TOKENS = st.one_of(
    st.sampled_from([*ECHO, "--proxy-protocol", "--tls-cert", "--tls-key", "--version"]),
    VALUES,
)


@settings(max_examples=200, deadline=None)
@given(command=st.sampled_from(["echo", "proxy", "serve", ""]), tokens=st.lists(TOKENS, max_size=8))
def test_random_command_lines(command: str, tokens: list[str]) -> None:
    # Any mix of flags, values and garbage: parsed, or refused with status 2
    # (0 for --version) and an error line, never any other exception.
    status, err, _args = run_parse([command, *tokens])
    assert "Traceback" not in err
    if status is not None and status != 0:
        assert status == 2, (tokens, err)
        last = err.splitlines()[-1]
        assert last.startswith("trionet") and ": error: " in last, err


# -------------------------------------------------------------- subprocesses
@pytest.mark.parametrize(
    ("argv", "status", "line"),
    [
        (["echo", "--port=nan"], 2, "trionet echo: error: argument --port: 'nan': expected a port"),
        (
            ["echo", "--grace=inf"],
            2,
            "trionet echo: error: argument --grace: 'inf': must be zero or more seconds",
        ),
        (
            ["echo", "--workers=99999999"],
            2,
            "trionet echo: error: argument --workers: '99999999': at most 1024 workers",
        ),
        (
            ["echo", "--host=bad\thost"],
            2,
            "trionet echo: error: argument --host: 'bad\\thost': expected an IP address or a host "
            "name",
        ),
        (
            ["proxy", "--listen=0", "--upstream=[::1]:99999"],
            2,
            "trionet proxy: error: argument --upstream: '[::1]:99999': expected HOST:PORT, "
            "e.g. 127.0.0.1:8080",
        ),
        (
            ["echo", "--port=0", "--host=no-such-host.invalid"],
            1,
            "trionet echo: argument --host: 'no-such-host.invalid': cannot resolve it",
        ),
    ],
)
def test_through_the_command(argv: list[str], status: int, line: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trionet", *argv],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1].startswith(line), done.stderr
    if status == 1:
        assert len(done.stderr.splitlines()) == 1
