"""trionet's API as type checkers see it.

* ``pyright --verifytypes trionet --ignoreexternal`` scores 100%: every symbol
  a user can reach has a declared type (no attribute left for a checker to
  infer, nothing unknown).
* A small user program passes ``mypy --strict`` and pyright's strict mode, and
  the types they infer are the real ones: ``net.start_server`` gives a
  ``Server``, addresses are :data:`trionet.SocketAddress` (never ``Any``),
  ``await conn.receive_some()`` gives ``bytes``, the public aliases annotate.

pyright comes from PyPI (the ``pyright`` wrapper, which fetches pyright's npm
package and runs it with node). The pyright tests skip, saying why, only when
that cannot work here (the package missing, or the wrapper unable to fetch or
start pyright: no registry, no node); with ``CI`` set in the environment they
fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .running import ROOT

BIN = Path(sys.executable).parent

USER_PROGRAM = """\
# pyright: strict
import ipaddress

import trio

import trionet


async def handler(conn: trionet.Connection) -> None:
    data = await conn.receive_some()
    reveal_type(data)
    reveal_type(conn.remote_address)
    reveal_type(conn.local_address)
    reveal_type(conn.timed_out)
    address = conn.remote_address
    if isinstance(address, tuple):  # TCP; a Unix socket's address is a str
        host, port = address[:2]
        print(host.upper(), port + 1)
    await conn.send_all(data)
    await conn.send_eof()


def peer(header: trionet.ProxyHeader) -> trionet.SocketAddress | None:
    return header.source


async def main() -> None:
    mode: trionet.ThrottleMode = "close"
    net = trionet.NetProcessor(
        throttle=mode, per_client_exempt=["10.0.0.0/8", ipaddress.ip_network("::1/128")]
    )
    opts = trionet.AcceptOptions(
        port=0, proxy_protocol=True, proxy_protocol_trusted=["10.0.0.0/8"]
    )
    serve: trionet.Handler = handler
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, serve, opts)
        reveal_type(server)
        reveal_type(server.listeners[0].address)
        await trionet.stop_on_signals(server, grace=1.0)


trio.run(main)
"""

ADDRESS = "tuple[str, int] | tuple[str, int, int, int] | str"


def _cannot_run(why: str) -> None:
    """Skip, saying why pyright cannot run here; under CI, fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"pyright must run in CI: {why}")
    pytest.skip(why)


def _run_pyright(args: list[str], cwd: Path, ran: str) -> subprocess.CompletedProcess[str]:
    """Run pyright; ``ran`` is a pattern of its own output, which a wrapper
    that could not fetch or start pyright (no registry, no node) never prints."""
    if shutil.which("pyright", path=str(BIN)) is None:
        _cannot_run("the pyright package is not installed (it is in the test extra)")
    env = dict(os.environ)
    # pyright finds the packages through the first python on PATH: this one's.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [str(BIN / "pyright"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    if not re.search(ran, result.stdout):
        _cannot_run(f"pyright did not run: {(result.stderr or result.stdout).strip()[-400:]}")
    return result


@pytest.mark.slow
def test_pyright_verifytypes_scores_100_percent() -> None:
    args = ["--verifytypes", "trionet", "--ignoreexternal", "--outputjson"]
    result = _run_pyright(args, ROOT, ran=r'"typeCompleteness"')
    report = json.loads(result.stdout)
    completeness = report["typeCompleteness"]
    problems = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert completeness["packageRootDirectory"].endswith("trionet"), completeness
    assert completeness["exportedSymbolCounts"]["withKnownType"] > 50
    assert completeness["completenessScore"] == 1.0, "\n".join(problems)
    assert result.returncode == 0, result.stdout[-2000:]


def _program(tmp_path: Path) -> Path:
    path = tmp_path / "user_program.py"
    path.write_text(USER_PROGRAM)
    return path


def _revealed(lines: list[str], pattern: str) -> list[str]:
    return [m[1] for line in lines if (m := re.search(pattern, line))]


@pytest.mark.slow
def test_a_user_program_passes_mypy_strict_with_the_real_types(tmp_path: Path) -> None:
    program = _program(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), program],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout
    # Older mypy versions write builtins.str: compare without the prefix.
    revealed = [t.replace("builtins.", "") for t in _revealed(lines, r'Revealed type is "(.*)"')]
    assert revealed == [
        "bytes",
        ADDRESS,
        ADDRESS,
        "Literal['inactivity'] | Literal['active'] | Literal['evicted'] | None",
        "trionet._inbound._server.Server",
        ADDRESS,
    ], result.stdout


@pytest.mark.slow
def test_a_user_program_passes_pyright_strict_with_the_real_types(tmp_path: Path) -> None:
    program = _program(tmp_path)
    result = _run_pyright([str(program)], tmp_path, ran=r"\d+ errors?, \d+ warnings?")
    lines = result.stdout.splitlines()
    assert "0 errors" in result.stdout, result.stdout
    revealed = _revealed(lines, r'Type of "[^"]*" is "(.*)"')
    assert revealed == [
        "bytes",
        ADDRESS,
        ADDRESS,
        "Literal['inactivity', 'active', 'evicted'] | None",
        "Server",
        ADDRESS,
    ], result.stdout
