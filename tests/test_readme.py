"""The README keeps its promises: the quick start's commands are the ones CI
runs, the 15-line example runs and proxies bytes with the limits it shows, the
command lines it shows parse, and the links point at files that exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.request

import pytest
import trio

import trionet
from trionet._apps._cli_args import build_parser

from .running import ROOT, connect_when_up, free_port

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()

ECHO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && "
    ".venv/bin/python examples/echo_server.py"
)
TEST_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest"
)


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert [commands(b) for b in blocks] == [[ECHO_COMMAND], [TEST_COMMAND]]
    ci_commands = [line.strip() for line in CI.splitlines() if not line.startswith("#")]
    assert ci_commands[-1] == TEST_COMMAND
    # The first command's program exists (tests/test_examples.py runs it).
    assert (ROOT / "examples" / "echo_server.py").is_file()


def example() -> str:
    [block] = code_blocks("python")
    return block


def test_example_is_fifteen_lines() -> None:
    assert len(example().rstrip("\n").splitlines()) == 15


async def test_example_runs(nursery: trio.Nursery) -> None:
    """Run the example's main() (its own ports swapped for free ones) in front
    of an echo server; bytes go through the proxy, /stats counts them."""
    upstream_net = trionet.NetProcessor()

    async def echo(conn: trionet.Connection) -> None:
        while data := await conn.receive_some():
            await conn.send_all(data)

    up = await nursery.start(upstream_net.serve, echo, trionet.AcceptOptions(host="127.0.0.1"))
    ports = {"7007": str(up.ports[0]), "8080": str(free_port()), "9100": str(free_port())}
    code = example().replace("trio.run(main)", "")
    assert code.count("7007") == code.count("8080") == code.count("9100") == 1
    for old, new in ports.items():
        code = code.replace(old, new)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    nursery.start_soon(namespace["main"])  # type: ignore[arg-type]
    proxy_port, stats_port = int(ports["8080"]), int(ports["9100"])
    stream = await connect_when_up(proxy_port)
    async with stream:
        await stream.send_all(b"through the README")
        assert await stream.receive_some() == b"through the README"
    records = await connect_stats(stats_port)
    assert records["proxy.process.net.connects_total"] == 1
    assert records["proxy.process.tcp.total_accepts"] == 1


async def connect_stats(port: int) -> dict[str, int]:
    def fetch() -> dict[str, int]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as resp:
            records: dict[str, int] = json.loads(resp.read())
        return records

    (await connect_when_up(port)).socket.close()
    return await trio.to_thread.run_sync(fetch)


def test_command_lines_parse() -> None:
    lines = [line for b in code_blocks("sh") for line in commands(b) if line.startswith("trionet ")]
    assert lines
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])


def test_links_point_at_files() -> None:
    targets = re.findall(r"\]\(((?:docs|examples)/[^)]*)\)", README)
    assert len(targets) >= 10
    for target in targets:
        assert (ROOT / target).exists(), target


@pytest.mark.slow
def test_lint_and_types_as_the_quick_start_says() -> None:
    """The quick start says the test command includes lint and types."""
    for args in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        result = subprocess.run(
            [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
