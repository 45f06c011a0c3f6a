"""The README keeps its promises: the quick start's commands are the ones CI
runs, the 15-line example runs and proxies bytes with the limits it shows, the
command lines it shows parse, and its links -- absolute, as the PyPI page needs
-- point at documentation pages and repository files that exist."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio

import trionet
from trionet._apps._cli_args import build_parser

from .running import ROOT, connect_when_up, free_port, needs_source_tree

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()

ECHO_COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e . && "
    ".venv/bin/python -m trionet.examples.echo_server"
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
    # The first command's program is in the package (tests/test_examples.py runs it).
    assert importlib.util.find_spec("trionet.examples.echo_server") is not None


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


DOCS_URL = "https://trionet.readthedocs.io/en/latest/"
REPO_URL = "https://github.com/trionet/trionet"
# Where the files under trionet/ are: the checkout, or site-packages when the
# suite runs against an installed wheel (.ci/run).
PACKAGE_PARENT = Path(trionet.__file__).resolve().parent.parent


def test_install_comes_first_and_names_the_package() -> None:
    """PyPI readers install from PyPI; the clone is the quick start's business."""
    install = README.split("## Installation", 1)[1].split("\n## ", 1)[0]
    assert README.index("## Installation") < README.index("## Quick start")
    assert [commands(b) for b in re.findall(r"```sh\n(.*?)```", install, re.S)] == [
        ["pip install trionet"]
    ]


def test_links_are_absolute_and_resolve() -> None:
    """Every link works off GitHub (on PyPI): documentation pages map back to a
    docs/ source that exists, repository links to a file or folder that exists."""
    targets = re.findall(r"\]\(([^)]*)\)", README)
    assert len(targets) >= 15
    docs = repo = 0
    for target in targets:
        if target.startswith(DOCS_URL):
            page = target.removeprefix(DOCS_URL).split("#", 1)[0]
            if page:  # the site's root is docs/index.rst
                assert page.endswith(".html"), target
                assert (ROOT / "docs" / page).with_suffix(".rst").is_file(), target
            docs += 1
        elif target.startswith(f"{REPO_URL}/blob/main/") or target.startswith(
            f"{REPO_URL}/tree/main/"
        ):
            path = target.split("/main/", 1)[1]
            base = PACKAGE_PARENT if path.startswith("trionet/") else ROOT
            assert (base / path).exists(), target
            repo += 1
        else:
            assert target in (REPO_URL, "https://trio.readthedocs.io"), target
    assert docs >= 14 and repo >= 3


@pytest.mark.slow
@needs_source_tree
def test_lint_and_types_as_the_quick_start_says() -> None:
    """The quick start says the test command includes lint and types."""
    for args in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        result = subprocess.run(
            [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
