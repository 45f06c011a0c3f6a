"""EMFILE for real: a server process with a low RLIMIT_NOFILE runs out of
descriptors, keeps serving what it has, and serves the waiting clients as soon
as descriptors free up (ATS accept_error_seriousness: warn, pause, retry)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "low_fd_echo_server.py"
LIMIT = 40
EXTRA = 5


def echo_ok(sock: socket.socket, payload: bytes, expect: bytes | None = None) -> bool:
    sock.sendall(payload)
    expect = payload if expect is None else expect
    got = b""
    try:
        while len(got) < len(expect):
            chunk = sock.recv(100)
            if not chunk:
                return False
            got += chunk
    except TimeoutError:
        return False
    return got == expect


@pytest.mark.slow
def test_emfile_pauses_then_serves_again() -> None:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(LIMIT)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin and proc.stdout and proc.stderr
    clients: list[socket.socket] = []
    try:
        port = int(proc.stdout.readline().split()[1])
        for _ in range(LIMIT + EXTRA):  # more than the server has descriptors for
            s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
            clients.append(s)
        served = [s for s in clients if echo_ok(s, b"x")]
        waiting = [s for s in clients if s not in served]
        # The server holds what it could accept; the rest wait in the backlog.
        assert 10 <= len(served) < LIMIT and len(waiting) >= EXTRA
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        stats = json.loads(proc.stdout.readline())
        assert stats["proxy.process.net.accept_errors_resource"] > 0
        # Free descriptors: close the served clients; the server closes their sockets.
        for s in served:
            s.close()
        for s in waiting:
            s.settimeout(5)
            assert echo_ok(s, b"again", b"xagain"), (
                "a waiting client was not served after fds freed"
            )
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        stats = json.loads(proc.stdout.readline())
        assert stats["proxy.process.tcp.total_accepts"] == LIMIT + EXTRA
        assert stats["proxy.process.net.connections_currently_open"] == len(waiting)
    finally:
        for s in clients:
            s.close()
        proc.stdin.close()
        proc.wait(timeout=10)
    err = proc.stderr.read()
    proc.stderr.close()
    proc.stdout.close()
    assert proc.returncode == 0, err
    assert f"accept on port {port} failed: [Errno 24]" in err
