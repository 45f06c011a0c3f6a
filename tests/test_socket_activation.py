"""Inherited listening sockets: systemd's LISTEN_FDS protocol and AcceptOptions(fd=...).

The protocol rules are tested I/O-free on parse_listen_environment; the file
descriptor side in subprocesses launched exactly as systemd launches a service
(fork, move the sockets to fd 3.., set LISTEN_PID to the child's own pid, exec),
once by a launcher of ours and once by the real `systemd-socket-activate`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trionet
from trionet._inbound._inherit import parse_listen_environment
from trionet._inbound._listen import adopt_listener, check_listening_fd

from .running import free_port

ROOT = Path(trionet.__file__).resolve().parent.parent
PID = 4242

# ------------------------------------------------------------ protocol, I/O-free
PARSE_CASES: list[tuple[dict[str, str], list[tuple[int, str]]]] = [
    ({}, []),
    ({"LISTEN_FDS": "1"}, []),  # no LISTEN_PID: nothing was meant for us
    ({"LISTEN_PID": str(PID)}, []),  # no LISTEN_FDS
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "0"}, []),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "1"}, [(3, "unknown")]),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "3"}, [(3, "unknown"), (4, "unknown"), (5, "unknown")]),
    (
        {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:admin"},
        [(3, "http"), (4, "admin")],
    ),
    (
        {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:web"},
        [(3, "web"), (4, "web")],
    ),
    (
        {"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": ":x"},
        [(3, "unknown"), (4, "x")],
    ),
]


@pytest.mark.parametrize(("environ", "expected"), PARSE_CASES)
def test_parse_listen_environment(environ: dict[str, str], expected: list[tuple[int, str]]) -> None:
    assert parse_listen_environment(environ, PID) == expected


BAD_CASES = [
    ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc'"),
    ({"LISTEN_PID": "0", "LISTEN_FDS": "1"}, "LISTEN_PID='0'"),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1'"),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "two"}, "LISTEN_FDS='two'"),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": ""}, "LISTEN_FDS=''"),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "\u0663"}, "LISTEN_FDS="),  # Arabic-Indic 3
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}, "LISTEN_FDNAMES='a'"),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"}, "LISTEN_FDNAMES='a:b'"),
    ({"LISTEN_PID": str(PID), "LISTEN_FDS": "0", "LISTEN_FDNAMES": "a"}, "LISTEN_FDNAMES='a'"),
]


@pytest.mark.parametrize(("environ", "message"), BAD_CASES)
def test_parse_listen_environment_rejects(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_listen_environment(environ, PID)


def test_other_pid_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    with caplog.at_level(logging.WARNING, logger="trionet.inherit"):
        assert parse_listen_environment(environ, PID) == []
    [record] = caplog.records
    assert "LISTEN_PID=1 is not this process (pid 4242)" in record.getMessage()


def test_inherited_listeners_unsets_environment_like_sd_listen_fds() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "HOME": "/h"}
    result = trionet.inherited_listeners(environ=environ)
    assert list(result) == [] and result.names == ()
    assert environ == {"HOME": "/h"}
    assert trionet.inherited_listeners(environ=environ) == []  # a second call finds nothing


def test_inherited_listeners_can_keep_environment() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    trionet.inherited_listeners(environ=environ, unset_environment=False)
    assert environ == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}


def test_inherited_listeners_unsets_even_when_malformed() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"}
    with pytest.raises(ValueError, match="LISTEN_FDS='x'"):
        trionet.inherited_listeners(environ=environ)
    assert environ == {}


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"port": 80}, ValueError, "port=80"),
        ({"reuse_port": True}, ValueError, "reuse_port=True"),
        ({"fd": 3}, ValueError, "fd=3"),
        ({"colour": "red"}, TypeError, "'colour'"),
    ],
)
def test_inherited_listeners_rejects_bind_time_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        trionet.inherited_listeners(environ={}, **options)


def test_inherited_listeners_named_lookup() -> None:
    a, b, c = (trionet.AcceptOptions(fd=n) for n in (3, 4, 5))
    listeners = trionet.InheritedListeners([("http", a), ("admin", b), ("http", c)])
    assert list(listeners) == [a, b, c]
    assert listeners.named("http") == [a, c]
    assert listeners.by_name() == {"http": [a, c], "admin": [b]}
    with pytest.raises(KeyError, match="'metrics'"):
        listeners.named("metrics")


# ------------------------------------------------------- wrong file descriptors
@pytest.fixture
def closed_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


def test_wrong_fds_are_refused_by_number(tmp_path: Path, closed_fd: int) -> None:
    opts = trionet.AcceptOptions()
    with pytest.raises(ValueError, match=rf"fd {closed_fd} cannot be served"):
        adopt_listener(closed_fd, opts)
    with open(tmp_path / "f", "w") as f:
        fd = f.fileno()
        with pytest.raises(ValueError, match=rf"fd {fd} cannot be served"):
            check_listening_fd(fd)
        os.fstat(fd)  # still open: only looked at
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match=rf"fd {unlistened.fileno()} .*not listening"):
            adopt_listener(unlistened.fileno(), opts)
        assert unlistened.fileno() >= 0  # refused, not taken over: still open
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with (
        udp,
        pytest.raises(ValueError, match=rf"fd {udp.fileno()} is not a TCP or Unix stream socket"),
    ):
        check_listening_fd(udp.fileno())


def test_bind_time_options_with_fd_are_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        for name in ("reuse_port", "transparent"):
            opts = trionet.AcceptOptions(fd=sock.fileno(), **{name: True})
            with pytest.raises(ValueError, match=rf"fd {sock.fileno()}: AcceptOptions.{name}"):
                adopt_listener(sock.fileno(), opts)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


async def test_serving_an_inherited_fd_end_to_end() -> None:
    # A *blocking* listening socket, as another program may hand it over.
    raw = socket.create_server(("127.0.0.1", 0))
    assert raw.getblocking()
    port = raw.getsockname()[1]
    fd = raw.detach()
    opts = trionet.AcceptOptions(
        fd=fd, socket=trionet.SocketOptions(keepalive=True), defer_accept=1.0
    )
    seen: list[tuple[int, int]] = []

    async def handler(conn: trionet.Connection) -> None:
        seen.append(
            (
                conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            )
        )
        while data := await conn.receive_some():
            await conn.send_all(data.upper())

    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(net.serve, handler, opts)
        [listener] = server.listeners
        assert server.ports == [port]
        assert listener.socket.fileno() == fd and not listener.socket.getblocking()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"inherited")
        await stream.send_eof()
        got = b""
        while chunk := await stream.receive_some():
            got += chunk
        await stream.aclose()
        server.shutdown(1)
        await server.wait_closed()
    assert got == b"INHERITED"
    assert seen == [(1, 1)]
    assert net.statistics().connections_currently_open == 0
    with pytest.raises(OSError):  # the server closed the fd it took over
        os.fstat(fd)


# ------------------------------------------------------------- real processes
SERVER = """\
import json, os, signal, sys
import trio, trionet

async def main():
    listeners = trionet.inherited_listeners()
    leftover = sorted(k for k in os.environ if k.startswith("LISTEN_"))
    net = trionet.NetProcessor()

    def make_handler(name):
        async def handler(conn):
            await conn.send_all(f"{name} {os.getpid()}\\n".encode())
            while data := await conn.receive_some():
                await conn.send_all(data)
        return handler

    async with trio.open_nursery() as nursery:
        servers = []
        for name, opts in zip(listeners.names, listeners):
            servers.append(await nursery.start(net.serve, make_handler(name), opts))
        info = {"pid": os.getpid(), "names": list(listeners.names),
                "fds": [o.fd for o in listeners], "leftover": leftover,
                "cloexec": [not os.get_inheritable(o.fd) for o in listeners],
                "ports": [s.ports[0] for s in servers]}
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            print(json.dumps(info), flush=True)
            async for _ in signals:
                break
        for s in servers:
            s.shutdown(1)
    print(json.dumps({"accepted": net.statistics().total_accepts,
                      "open": net.statistics().connections_currently_open}), flush=True)

trio.run(main)
"""

# What systemd does between fork() and exec(): move the sockets to 3, 4, ...,
# export LISTEN_FDS/LISTEN_FDNAMES and LISTEN_PID = the child's own pid (exec
# keeps it), then exec the service.
LAUNCHER = """\
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
names = sys.argv[2]
# Copy them above 3..3+n first, so that moving one never overwrites another.
staged = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3 + len(fds)) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(staged):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_FDNAMES"] = names
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, *sys.argv[3:]])
"""


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    return tmp_path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _exchange(port: int, payload: bytes) -> bytes:
    # Generous bounds: a worker interpreter can take seconds to start on a loaded
    # 2-core machine (a CI run timed out at 5 s); a healthy run returns at once.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


@pytest.fixture
def reaper() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def _stop(proc: subprocess.Popen[str]) -> tuple[dict[str, int], str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.slow
def test_launcher_passes_sockets_as_systemd_does(
    scripts: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    http = socket.create_server(("127.0.0.1", 0))
    admin = socket.create_server(("127.0.0.1", 0))
    ports = [http.getsockname()[1], admin.getsockname()[1]]
    with http, admin:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(scripts / "launcher.py"),
                f"{http.fileno()},{admin.fileno()}",
                "http:admin",
                str(scripts / "server.py"),
            ],
            pass_fds=(http.fileno(), admin.fileno()),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reaper.append(proc)
    # Our copies are closed: the child alone holds the sockets now.
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    assert info == {
        "pid": proc.pid,  # LISTEN_PID was the launcher's pid, which exec kept
        "names": ["http", "admin"],
        "fds": [3, 4],
        "leftover": [],  # LISTEN_* unset after reading, like sd_listen_fds(1)
        "cloexec": [True, True],
        "ports": ports,
    }
    assert _exchange(ports[0], b"GET /") == f"http {proc.pid}\nGET /".encode()
    assert _exchange(ports[1], b"stats") == f"admin {proc.pid}\nstats".encode()
    final, _ = _stop(proc)
    assert final == {"accepted": 2, "open": 0}


@pytest.mark.slow
def test_launcher_with_another_pid_is_ignored(
    scripts: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    # LISTEN_PID names the launcher's parent: the child must not take the fd.
    launcher = LAUNCHER.replace("str(os.getpid())", "str(os.getppid())")
    (scripts / "launcher.py").write_text(launcher)
    with socket.create_server(("127.0.0.1", 0)) as sock:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(scripts / "launcher.py"),
                str(sock.fileno()),
                "x",
                str(scripts / "server.py"),
            ],
            pass_fds=(sock.fileno(),),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reaper.append(proc)
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
    assert info["names"] == [] and info["leftover"] == []
    _, err = _stop(proc)
    assert f"LISTEN_PID={os.getpid()} is not this process (pid {proc.pid})" in err


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"


@pytest.mark.slow
def test_real_systemd_socket_activate(scripts: Path, reaper: list[subprocess.Popen[str]]) -> None:
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        pytest.skip(
            f"{SOCKET_ACTIVATE} not installed (Debian package systemd); .ci/run installs it"
        )
    for _attempt in range(3):  # the free port could be taken between probe and bind
        port = free_port()
        proc = subprocess.Popen(
            [SOCKET_ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=echo"]
            + [f"-E{k}={v}" for k, v in _env().items() if k in ("PYTHONPATH", "PATH")]
            + [sys.executable, str(scripts / "server.py")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        reaper.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "Listening on 127.0.0.1:PORT as 3."
        if f"Listening on 127.0.0.1:{port} as 3." in line:
            break
    else:
        pytest.fail(f"systemd-socket-activate did not listen: {line!r}")
    # The service starts on the first connection (this one), as under systemd.
    reply = _exchange(port, b"activated")
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    assert info["pid"] == proc.pid and info["names"] == ["echo"] and info["fds"] == [3]
    assert info["leftover"] == [] and info["ports"] == [port]
    assert reply == f"echo {proc.pid}\nactivated".encode()
    assert _exchange(port, b"again") == f"echo {proc.pid}\nagain".encode()
    final, _ = _stop(proc)
    assert final == {"accepted": 2, "open": 0}


SUPERVISOR = """\
import logging, os, sys
import trionet

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(process)d %(name)s %(levelname)s %(message)s")

async def echo(conn):
    await conn.send_all(f"{os.getpid()}\\n".encode())
    while data := await conn.receive_some():
        await conn.send_all(data)

async def worker(ctx):
    await ctx.serve(trionet.NetProcessor(), echo)

if __name__ == "__main__":
    sys.exit(trionet.run_workers(worker, *trionet.inherited_listeners(), workers=2, grace=2))
"""


@pytest.mark.slow
def test_socket_activated_supervisor_shares_the_socket_with_its_workers(
    scripts: Path, reaper: list[subprocess.Popen[str]]
) -> None:
    # ATS's traffic_manager -> traffic_server hand-over, done by systemd: the
    # supervisor inherits fd 3 and passes it on to every worker it starts.
    (scripts / "supervisor.py").write_text(SUPERVISOR)
    with socket.create_server(("127.0.0.1", 0)) as sock:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(scripts / "launcher.py"),
                str(sock.fileno()),
                "web",
                str(scripts / "supervisor.py"),
            ],
            pass_fds=(sock.fileno(),),
            env=_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        reaper.append(proc)
        port = sock.getsockname()[1]
    # Served as soon as a worker is up; the connection waits in the queue until then.
    pid, _, echoed = _exchange(port, b"x").partition(b"\n")
    assert echoed == b"x" and int(pid) != proc.pid
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "inherited 1 listening socket(s): fd 3 (web)" in err
    assert f"starting 2 worker(s) on port(s) [{port}] (inherited socket)" in err
    assert err.count("exited with status 0") == 2, err
