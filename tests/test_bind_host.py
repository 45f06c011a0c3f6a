"""A bind host that cannot be resolved: an error naming the host and the port,
from the API (an OSError) and from the command line (one line, exit status 1)."""

from __future__ import annotations

import re
import socket

import pytest
import trio

import trionet
from trionet import AcceptOptions, NetProcessor

from .running import Running


async def ignore(conn: trionet.Connection) -> None:
    pass


async def test_unresolvable_bind_host_names_host_and_port() -> None:
    host = "no-such-host.invalid"  # NXDOMAIN, or no DNS at all: getaddrinfo's words
    with pytest.raises(socket.gaierror) as info, trio.fail_after(10):
        await NetProcessor().serve(ignore, AcceptOptions(host=host, port=8080))
    message = str(info.value)
    assert message.startswith(
        f"[Errno {info.value.errno}] cannot listen on host {host!r} port 8080: "
    )
    assert info.value.errno < 0  # an EAI_* code, as getaddrinfo's own errors have


@pytest.mark.parametrize(
    ("host", "why"),
    [
        # The C resolver would cut the name at the NUL and bind "localhost".
        ("localhost\x00.example.com", "a control character, '\\x00' at position 9"),
        ("a" * 64 + ".example", "a label of 64 characters, more than 63"),
        ("bad..name", "an empty label"),
    ],
)
def test_invalid_bind_host_is_refused_where_it_is_written(host: str, why: str) -> None:
    # Refused by AcceptOptions itself, before anything is resolved or bound.
    with pytest.raises(ValueError) as info:
        AcceptOptions(host=host, port=8080)
    message = str(info.value)
    assert message.startswith(f"AcceptOptions.host={host!r}: "), message
    assert why in message, message


@pytest.mark.slow
@pytest.mark.parametrize("option", ["--host", "--stats-host"])
def test_cli_unresolvable_host_is_one_line(option: str) -> None:
    argv = ["echo", "--port", "0", "--stats-port", "0", option, "no-such-host.invalid"]
    with Running("-m", "trionet", *argv) as run:
        _out, err = run.proc.communicate(timeout=15)
    assert run.proc.returncode == 1
    (line,) = err.decode().splitlines()  # no traceback
    # The CLI resolves --host/--stats-host up front, so the line names the flag
    # as well as the host (the library's own message is tested above).
    assert re.fullmatch(
        rf"trionet echo: argument {option}: 'no-such-host\.invalid': cannot resolve it \(.+\)",
        line,
    ), line
