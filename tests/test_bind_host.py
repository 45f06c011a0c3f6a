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


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("no-such-host.invalid", ""),  # NXDOMAIN, or no DNS at all: getaddrinfo's words
        # The C resolver would cut the name at the NUL and bind "localhost".
        ("localhost\x00.example.com", "control character in the host name"),
        ("a" * 64 + ".example", "not a valid host name"),  # IDNA: label too long
        ("bad..name", "not a valid host name"),  # IDNA: empty label
    ],
)
async def test_unresolvable_bind_host_names_host_and_port(host: str, why: str) -> None:
    with pytest.raises(socket.gaierror) as info, trio.fail_after(10):
        await NetProcessor().serve(ignore, AcceptOptions(host=host, port=8080))
    message = str(info.value)
    assert message.startswith(
        f"[Errno {info.value.errno}] cannot listen on host {host!r} port 8080: "
    )
    assert info.value.errno < 0  # an EAI_* code, as getaddrinfo's own errors have
    assert why in message


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
