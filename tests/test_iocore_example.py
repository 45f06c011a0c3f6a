"""trionet.examples.ats_echo_server as a subprocess: it listens, echoes (small and
larger than its 32 KiB buffer, so backpressure is exercised), and exits
cleanly on SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys

from .running import ROOT, Running, echo_roundtrip, env


def test_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "trionet.examples.ats_echo_server", "--help"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "--port" in out.stdout and "--host" in out.stdout


def test_ats_echo_server_roundtrip_and_sigint() -> None:
    with Running("-m", "trionet.examples.ats_echo_server", "--port", "0") as proc:
        m = proc.expect(r"listening on 127\.0\.0\.1 port (\d+)")
        port = int(m.group(1))
        assert echo_roundtrip(port, b"hello ats") == b"hello ats"
        big = bytes(range(256)) * 1024  # 256 KiB
        assert echo_roundtrip(port, big) == big
        status, rest, err = proc.stop(signal.SIGINT)
    assert status == 0, err
    assert "SIGINT: stopping" in rest
    assert "stopped after 2 connections" in rest
    assert "Traceback" not in err
