"""Every example under examples/ runs: started as a subprocess on a free port,
bytes exchanged, stopped with SIGINT, clean exit checked. (echo_client.py and
ats_echo_server.py are tested by their authors' test files.)"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from .running import ROOT, Running, echo_roundtrip, env

EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_every_example_has_help(name: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--help"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert out.startswith("usage: ")
    assert "--port" in out or "--listen" in out or "--host" in out


def test_echo_server() -> None:
    args = ["examples/echo_server.py", "--port", "0", "--max-connections", "10"]
    with Running(*args, "--inactivity-timeout", "30") as run:
        port = int(run.expect(r"echo server listening on 127\.0\.0\.1 port (\d+)")[1])
        assert echo_roundtrip(port, b"abc" * 1000) == b"abc" * 1000
        assert echo_roundtrip(port, b"second") == b"second"
        status, out, err = run.stop(signal.SIGINT)
    assert status == 0, err
    assert "SIGINT: shutting down (grace 5.0 s)" in out
    assert "stopped after 2 connections" in out
