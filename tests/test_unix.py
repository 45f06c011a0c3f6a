"""Unix domain sockets: ``AcceptOptions(path=...)`` and ``connect("unix:/path")``.

Everything in a temporary directory: listen, connect and echo through; the
socket file's permissions and owner; a stale file replaced, a live server's
path and a regular file refused (and left alone); the file removed at close
only if it is still ours; the limits, timeouts and statistics that apply and
the per-client limits that do not; a Linux abstract name; PROXY protocol from
HAProxy over a Unix socket; systemd-socket-activate with a Unix ListenStream;
and the CLI proxying tcp->unix and unix->tcp.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

import trionet
from trionet._inbound._listen import adopt_listener, check_listening_fd

from .running import Running, echo_roundtrip, env, running_upstream

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def serve_unix(
    nursery: trio.Nursery, net: trionet.NetProcessor, opts: trionet.AcceptOptions
) -> trionet.Server:
    return await net.start_server(nursery, echo, opts)


def stale_socket(path: Path) -> None:
    """A socket file nobody listens on (what a crashed server leaves)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


# --------------------------------------------------------- listen and connect
async def test_listen_connect_echo_and_cleanup(tmp_path: Path) -> None:
    path = tmp_path / "echo.sock"
    net = trionet.NetProcessor()
    seen: list[trionet.SocketAddress] = []

    async def handler(conn: trionet.Connection) -> None:
        seen.append(conn.remote_address)
        await echo(conn)

    opts = trionet.AcceptOptions(path=str(path), mode=0o600)
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, handler, opts)
        (listener,) = server.listeners
        assert (listener.path, listener.address, listener.port) == (str(path), str(path), 0)
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        conn = await net.connect(f"unix:{path}")
        assert conn.remote_address == str(path)
        await conn.send_all(b"over a unix socket")
        assert await conn.receive_some() == b"over a unix socket"
        stats = net.statistics()
        assert (stats.total_accepts, stats.connects_total) == (1, 1)
        assert stats.connections_currently_open == 2
        await conn.aclose()
        assert seen == [""]  # an unnamed client socket: a str, not a tuple
        server.shutdown(0)
    assert not path.exists()  # removed at close
    stats = net.statistics()
    assert stats.connections_currently_open == 0
    assert stats.read_bytes == stats.write_bytes == 36  # 18 each way, counted on both ends


async def test_stale_socket_file_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.server")
    path = tmp_path / "stale.sock"
    stale_socket(path)
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await serve_unix(nursery, net, trionet.AcceptOptions(path=str(path)))
        async with await net.connect(f"unix:{path}") as conn:
            await conn.send_all(b"x")
            assert await conn.receive_some() == b"x"
        server.shutdown(0)
    assert f"removed stale socket file {path}" in caplog.text


async def test_a_live_servers_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen(1)
        with pytest.raises(OSError) as info:
            await trionet.NetProcessor().serve(echo, trionet.AcceptOptions(path=str(path)))
        assert info.value.errno == errno.EADDRINUSE
        assert f"cannot listen on unix:{path}: a server is listening on it" in str(info.value)
        # The live server's socket was not touched: it still accepts.
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
            accepted, _ = live.accept()
            accepted.close()


@pytest.mark.parametrize("kind", ["regular file", "directory", "symlink to a socket"])
async def test_a_path_that_is_not_a_socket_is_never_removed(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data"
    if kind == "regular file":
        path.write_bytes(b"precious")
    elif kind == "directory":
        path.mkdir()
    else:
        stale_socket(tmp_path / "target.sock")
        path.symlink_to(tmp_path / "target.sock")
    with pytest.raises(OSError) as info:
        await trionet.NetProcessor().serve(echo, trionet.AcceptOptions(path=str(path)))
    assert info.value.errno == errno.EEXIST
    assert f"unix:{path}: the path exists and is not a socket (not removed)" in str(info.value)
    assert os.path.lexists(path)
    if kind == "regular file":
        assert path.read_bytes() == b"precious"


async def test_file_replaced_meanwhile_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "moved.sock"
    async with trio.open_nursery() as nursery:
        server = await serve_unix(
            nursery, trionet.NetProcessor(), trionet.AcceptOptions(path=str(path))
        )
        # Someone else took the path over (a new server after removing ours).
        path.unlink()
        stale_socket(path)
        inode = os.lstat(path).st_ino
        server.shutdown(0)
    assert os.lstat(path).st_ino == inode  # theirs stays


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
async def test_owner_and_group_by_name(tmp_path: Path) -> None:
    import grp
    import pwd

    user = pwd.getpwnam("nobody")
    group = grp.getgrgid(user.pw_gid)
    path = tmp_path / "owned.sock"
    opts = trionet.AcceptOptions(path=str(path), owner="nobody", group=group.gr_name, mode=0o660)
    assert (opts.owner, opts.group) == (user.pw_uid, group.gr_gid)
    async with trio.open_nursery() as nursery:
        server = await serve_unix(nursery, trionet.NetProcessor(), opts)
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            user.pw_uid,
            group.gr_gid,
            0o660,
        )
        server.shutdown(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"path": "/tmp/a.sock", "host": "127.0.0.1"},
            "AcceptOptions.host='127.0.0.1': cannot be combined with path='/tmp/a.sock'",
        ),
        ({"path": "/tmp/a.sock", "port": 80}, "AcceptOptions.port=80: cannot be combined"),
        (
            {"path": "/tmp/a.sock", "localhost_only": True},
            "AcceptOptions.localhost_only=True: cannot",
        ),
        ({"path": "/tmp/a.sock", "fd": 3}, "AcceptOptions.fd=3: cannot be combined"),
        ({"path": "/tmp/a.sock", "reuse_port": True}, "AcceptOptions.reuse_port=True: cannot"),
        ({"path": "/tmp/" + "x" * 200}, "bytes long, more than the 107"),
        ({"path": ""}, "AcceptOptions.path='': an empty path"),
        ({"path": "/tmp/a\x00b"}, "a NUL character"),
        ({"path": "/tmp/a\nb"}, "a control character, '\\n'"),
        ({"path": "/tmp/\ud800"}, "not encodable as a file name"),
        ({"path": b"/tmp/a"}, "AcceptOptions.path=b'/tmp/a': must be a str"),
        ({"mode": 0o600}, "AcceptOptions.mode=384: needs path"),
        ({"owner": "root"}, "AcceptOptions.owner='root': needs path"),
        (
            {"path": "/tmp/a.sock", "mode": 0o1777},
            "AcceptOptions.mode=0o1777: must be permission bits",
        ),
        ({"path": "/tmp/a.sock", "mode": "0600"}, "AcceptOptions.mode='0600': must be permission"),
        (
            {"path": "/tmp/a.sock", "owner": "no-such-user-x"},
            "owner='no-such-user-x': no such user",
        ),
        (
            {"path": "/tmp/a.sock", "group": "no-such-group-x"},
            "group='no-such-group-x': no such group",
        ),
        ({"path": "/tmp/a.sock", "owner": -1}, "AcceptOptions.owner=-1: must be"),
        ({"path": "@abstract", "mode": 0o600}, "an abstract name ('@abstract') has no file"),
    ],
)
def test_bad_unix_options_are_named(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        trionet.AcceptOptions(**kwargs)  # type: ignore[arg-type]
    assert message in str(info.value)


# ------------------------------------------- what applies to a Unix listener
async def test_limits_timeouts_and_no_per_client_limit(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "limits.sock"
    # The per-client limits would allow 1 each; a Unix client has no address,
    # so they do not apply: only max_connections (3 here) holds.
    net = trionet.NetProcessor(
        max_connections=3,
        throttle="close",
        per_client_max_connections=1,
        per_client_max_accept_rate=1,
    )
    opts = trionet.AcceptOptions(path=str(path), inactivity_timeout=5)
    async with trio.open_nursery() as nursery:
        server = await serve_unix(nursery, net, opts)
        clients = [await trio.open_unix_socket(str(path)) for _ in range(4)]
        for i, client in enumerate(clients[:3]):
            await client.send_all(b"%d" % i)
            assert await client.receive_some() == b"%d" % i
        assert await clients[3].receive_some() == b""  # over max_connections: closed
        start = trio.current_time()
        assert await clients[0].receive_some() == b""  # idle: the inactivity timeout
        assert trio.current_time() - start == pytest.approx(5.0)
        stats = net.statistics()
        assert stats.connections_throttled_in == 1
        assert stats.per_client_connections_throttled_in == 0
        assert stats.connections_rate_limited_in == 0
        assert stats.inactivity_timeouts == 3
        for client in clients:
            await client.aclose()
        server.shutdown(0)
    assert net.statistics().connections_currently_open == 0


async def test_processor_rate_limit_applies(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "rate.sock"
    net = trionet.NetProcessor(throttle="close", max_accept_rate=1, accept_burst=2)

    async def hello(conn: trionet.Connection) -> None:
        await conn.send_all(b"hi")

    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, hello, trionet.AcceptOptions(path=str(path)))
        got = []
        for _ in range(3):
            async with await trio.open_unix_socket(str(path)) as client:
                got.append(await client.receive_some())
        assert got == [b"hi", b"hi", b""]
        assert net.statistics().connections_rate_limited_in == 1
        server.shutdown(0)


async def test_proxy_protocol_header_on_a_unix_listener(tmp_path: Path) -> None:
    path = tmp_path / "pp.sock"
    seen: list[trionet.SocketAddress] = []

    async def handler(conn: trionet.Connection) -> None:
        seen.append(conn.remote_address)
        await conn.send_all(b"ok")

    # The default trusted networks are loopback; a Unix peer is trusted anyway.
    opts = trionet.AcceptOptions(path=str(path), proxy_protocol=True)
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, handler, opts)
        async with await trio.open_unix_socket(str(path)) as client:
            await client.send_all(b"PROXY TCP4 192.0.2.7 192.0.2.1 40000 443\r\n")
            assert await client.receive_some() == b"ok"
        server.shutdown(0)
    assert seen == [("192.0.2.7", 40000)]
    assert net.statistics().proxy_protocol_errors == 0


@pytest.mark.slow
async def test_haproxy_send_proxy_v2_to_a_unix_socket(tmp_path: Path) -> None:
    """HAProxy (``server s1 /path send-proxy-v2``) in front of a trionet Unix
    listener: the handler sees the TCP client's own address."""
    from .test_haproxy import HAPROXY, Seen, _client, _listen, haproxy

    if HAPROXY is None:
        pytest.skip("haproxy not installed (Debian: apt-get install -y haproxy; .ci/run does)")
    path = tmp_path / "backend.sock"
    seen = Seen()
    net = trionet.NetProcessor()
    opts = trionet.AcceptOptions(path=str(path), proxy_protocol=True)
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, seen, opts)
        frontend = _listen("127.0.0.1")
        address = frontend.getsockname()
        async with haproxy(tmp_path, {"unix": ([frontend], f"{path} send-proxy-v2")}):
            me = await _client((address[0], address[1]), b"via-unix", "127.0.0.3")
        server.shutdown(0)
    remote, local, peer, _tlvs, _tls = seen.by_token[b"via-unix"]
    assert remote == (me[0], me[1]) and me[0] == "127.0.0.3"
    assert local == (address[0], address[1])  # the frontend the client reached
    assert peer == ""  # the socket's own peer: haproxy's unnamed Unix socket
    assert net.statistics().proxy_protocol_errors == 0


# ---------------------------------------------------------------- connect
async def test_connect_errors_are_named_and_counted(tmp_path: Path) -> None:
    net = trionet.NetProcessor()
    missing = tmp_path / "missing.sock"
    with pytest.raises(trionet.ConnectError) as info:
        await net.connect(f"unix:{missing}")
    assert info.value.errno == errno.ENOENT
    assert str(info.value).endswith(f": unix:{missing}")
    stale_socket(tmp_path / "stale.sock")
    with pytest.raises(trionet.ConnectError) as refused:
        await net.connect(f"unix:{tmp_path / 'stale.sock'}")
    assert refused.value.errno == errno.ECONNREFUSED
    stats = net.statistics()
    assert (stats.connects_total, stats.connect_failures) == (2, 2)
    assert stats.connections_currently_open == 0
    with pytest.raises(ValueError, match=r"port=80: a Unix socket .* has no port"):
        await net.connect("unix:/run/x.sock", 80)
    opts = trionet.ConnectOptions(local_address="127.0.0.1")
    with pytest.raises(ValueError, match=r"local_address='127\.0\.0\.1': does not apply to unix:"):
        await net.connect("unix:/run/x.sock", 0, opts)
    with pytest.raises(ValueError, match="not a Unix socket path: an empty path"):
        await net.connect("unix:")


@pytest.mark.skipif(sys.platform != "linux", reason="abstract names are Linux's")
async def test_abstract_name(tmp_path: Path) -> None:
    name = f"@trionet-test-{os.getpid()}"
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await serve_unix(nursery, net, trionet.AcceptOptions(path=name))
        assert server.listeners[0].path == name
        async with await net.connect(f"unix:{name}") as conn:
            await conn.send_all(b"abstract")
            assert await conn.receive_some() == b"abstract"
        server.shutdown(0)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------- inherited sockets
def test_inherited_unix_listener_is_adopted_and_its_file_kept(tmp_path: Path) -> None:
    path = tmp_path / "inherited.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(4)
    check_listening_fd(sock.fileno())  # AF_UNIX is accepted
    listener = adopt_listener(sock.fileno(), trionet.AcceptOptions(fd=sock.fileno()))
    sock.detach()
    assert (listener.path, listener.port) == (str(path), 0)
    listener.close()
    assert path.exists()  # the opener's file, not ours to remove


SOCKET_ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
ACTIVATED_SERVER = """
import json, sys, trio, trionet

async def echo(conn):
    while data := await conn.receive_some():
        await conn.send_all(data)

async def main():
    net = trionet.NetProcessor()
    listeners = trionet.inherited_listeners()
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, echo, *listeners)
        print(json.dumps([l.path for l in server.listeners]), flush=True)
        await trionet.stop_on_signals(server, grace=1)
    print(json.dumps({"accepted": net.statistics().total_accepts}), flush=True)

trio.run(main)
"""


@pytest.mark.slow
def test_systemd_socket_activate_with_a_unix_listen_stream(tmp_path: Path) -> None:
    if not os.access(SOCKET_ACTIVATE, os.X_OK):
        pytest.skip(
            f"{SOCKET_ACTIVATE} not installed (Debian package systemd); .ci/run installs it"
        )
    path = tmp_path / "activated.sock"
    script = tmp_path / "server.py"
    script.write_text(ACTIVATED_SERVER)
    environ = {k: v for k, v in env().items() if not k.startswith("LISTEN_")}
    proc = subprocess.Popen(
        [SOCKET_ACTIVATE, "-l", str(path)]
        + [f"-E{k}={v}" for k, v in environ.items() if k in ("PYTHONPATH", "PATH")]
        + [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        line = proc.stderr.readline()
        assert f"Listening on {path} as 3." in line, line
        with socket.socket(socket.AF_UNIX) as client:  # starts the service
            client.settimeout(15)
            client.connect(str(path))
            assert proc.stdout.readline().strip() == f'["{path}"]'
            client.sendall(b"activated")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"activated"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert out.strip().splitlines()[-1] == '{"accepted": 1}'
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert path.exists()  # systemd-socket-activate's file: trionet left it


# --------------------------------------------------------------- the CLI
def unix_roundtrip(path: Path, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    return got


def test_cli_proxy_tcp_to_unix_to_tcp(tmp_path: Path) -> None:
    """client -tcp-> proxy A -unix-> proxy B -tcp-> upstream: both directions
    of the CLI's Unix support in one chain."""
    b_sock = tmp_path / "b.sock"
    with running_upstream() as upstream:
        target = f"127.0.0.1:{upstream.server_address[1]}"
        b_argv = ["proxy", "--listen", f"unix:{b_sock}", "--upstream", target]
        with Running("-m", "trionet", *b_argv, "--stats-port", "0") as b:
            b.expect(rf"listening on unix:{b_sock}, forwarding to {target}$")
            b_stats = int(b.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
            st = os.lstat(b_sock)
            assert stat.S_ISSOCK(st.st_mode)
            assert unix_roundtrip(b_sock, b"unix in") == b"got 7 bytes"
            a_argv = ["proxy", "--listen", "0", "--upstream", f"unix:{b_sock}"]
            with Running("-m", "trionet", *a_argv) as a:
                port = int(
                    a.expect(rf"listening on 127\.0\.0\.1:(\d+), forwarding to unix:{b_sock}$")[1]
                )
                assert echo_roundtrip(port, b"tcp, unix, tcp") == b"got 14 bytes"
                status, out, err = a.stop()
            assert status == 0, err
            assert "stopped: 1 sessions (0 upstream failures)" in out
            from .test_cli import fetch_stats

            records = fetch_stats(b_stats)
            status, out, err = b.stop()
        assert status == 0, err
        assert upstream.requests == [b"unix in", b"tcp, unix, tcp"]
    assert records["proxy.process.tcp.total_accepts"] == 2
    assert records["proxy.process.net.connections_currently_open"] == 0
    assert not b_sock.exists()  # removed when B stopped


def test_cli_echo_on_a_unix_socket_and_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trionet._apps._cli import main

    path = tmp_path / "echo.sock"
    with Running("-m", "trionet", "echo", "--port", f"unix:{path}") as run:
        run.expect(rf"trionet echo: listening on unix:{path}$")
        assert unix_roundtrip(path, b"hello") == b"hello"
        status, out, err = run.stop()
    assert status == 0, err
    assert "stopped: 1 connections accepted" in out
    for argv, message in [
        (
            ["echo", "--port", "unix:"],
            "argument --port: 'unix:': expected PORT or unix:/PATH (an empty path)",
        ),
        (
            ["proxy", "--listen", "0", "--upstream", "unix:"],
            "argument --upstream: 'unix:': expected HOST:PORT or unix:/PATH (an empty path)",
        ),
        (
            ["echo", "--port", f"unix:{path}", "--workers", "2"],
            f"argument --port: 'unix:{path}': one process serves a Unix socket",
        ),
    ]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


async def test_howto_proxy_unix_snippets(tmp_path: Path) -> None:
    from .test_docs import load_snippet

    snippet = load_snippet("howto_proxy")
    front, back = tmp_path / "front.sock", tmp_path / "back.sock"
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        upstream = await serve_unix(nursery, net, trionet.AcceptOptions(path=str(back)))
        proxy = snippet.unix_upstream(net, str(back))
        server = await net.start_server(nursery, proxy, snippet.unix_listener(str(front)))
        assert stat.S_IMODE(os.lstat(front).st_mode) == 0o660
        async with await trio.open_unix_socket(str(front)) as client:
            await client.send_all(b"unix to unix")
            await client.send_eof()
            assert await client.receive_some() == b"unix to unix"
            assert await client.receive_some() == b""
        server.shutdown(0)
        upstream.shutdown(0)
    assert proxy.statistics().sessions == 1 and proxy.statistics().upstream_failures == 0


async def test_workers_share_one_unix_listening_socket(tmp_path: Path) -> None:
    """run_workers' plan for a Unix socket: one listening socket passed to
    every worker, whatever the sharing mode asked (no SO_REUSEPORT group)."""
    from trionet._apps._workers._sockets import plan_listeners

    path = tmp_path / "workers.sock"
    spec = trionet.AcceptOptions(path=str(path), mode=0o600, inactivity_timeout=7.0)
    plan = await plan_listeners([spec], "reuseport")
    try:
        [opts] = plan.listen
        [sock] = plan.held
        assert sock.family == socket.AF_UNIX and sock.getsockname() == str(path)
        assert opts.fd == sock.fileno() and plan.pass_fds == [sock.fileno()]
        assert opts.path is None and opts.inactivity_timeout == 7.0
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    finally:
        plan.close()
