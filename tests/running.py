"""Run a trionet program (an example, the command) as a subprocess and talk to it.

Used by tests/test_cli.py, tests/test_examples.py and tests/test_readme.py:
start it, wait for the line saying where it listens, exchange bytes, stop it
with a signal and check it exited cleanly. Everything is bounded in time and
the process is killed if a test fails half way.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import pytest
import trio

ROOT = Path(__file__).resolve().parent.parent

# .ci/run also runs this suite against the installed wheel, from a copy of the
# checkout without trionet/: tests of the source tree itself (lint, types, the
# docs build, which includes the examples' source) run on the checkout only.
needs_source_tree = pytest.mark.skipif(
    not (ROOT / "trionet").is_dir(),
    reason="needs the source tree; run against the checkout (.ci/run does both)",
)


def env() -> dict[str, str]:
    """The test environment, with this checkout importable (also when trionet
    is not installed)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    out["PYTHONUNBUFFERED"] = "1"
    return out


class Running:
    """A subprocess whose stdout is read line by line with a deadline."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.lines: list[str] = []
        self._buf = b""

    def __enter__(self) -> Running:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first new stdout line matching ``pattern`` (re.search)."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode()
                self.lines.append(line)
                if m := re.search(pattern, line):
                    return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.args}: no line matching {pattern!r} in {self.lines}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"{self.args} exited; stdout {self.lines}, stderr {err}")
                self._buf += chunk

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> tuple[int, str, str]:
        """Send ``sig``; wait for the exit. Returns (status, rest of stdout, stderr)."""
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 15.0) -> tuple[int, str, str]:
        """Wait for the exit; every stdout line (also those :meth:`expect` read past
        its match) ends up in ``lines``. Returns (status, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        rest = (self._buf + out).decode()
        self._buf = b""
        self.lines.extend(rest.splitlines())
        return self.proc.returncode, rest, err.decode()


def wait_until_listening(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def echo_roundtrip(port: int, payload: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``payload``, half-close, and read everything until EOF."""
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    return got


class HalfCloseUpstream(socketserver.ThreadingTCPServer):
    """A stdlib upstream server for proxy tests: reads the whole request
    (until the EOF the proxy forwards), then answers and closes."""

    # server_close() joins the handler threads, so `requests` is complete once
    # the context below exits; a handler never waits more than 10 s.
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.requests: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(10)
            data = b""
            while chunk := self.request.recv(65536):
                data += chunk
            self.server.requests.append(data)  # type: ignore[attr-defined]
            self.request.sendall(b"got %d bytes" % len(data))


@contextmanager
def running_upstream() -> Iterator[HalfCloseUpstream]:
    server = HalfCloseUpstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def free_port() -> int:
    """A loopback port that was free a moment ago (for programs that take --port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def connect_when_up(port: int) -> trio.SocketStream:
    """Connect to 127.0.0.1:port, retrying while the server starts (10 s at most)."""
    with trio.fail_after(10):
        while True:
            try:
                return await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.01)
