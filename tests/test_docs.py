"""The documentation: it builds with warnings as errors and every reference
resolved (nitpicky), every public name is in the API reference, every snippet
it includes is a file under docs/snippets/ or trionet/examples/ that exists,
and the snippets do what the pages say (run here against real loopback
sockets)."""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing

import trionet
import trionet.iocore

from .running import (
    ROOT,
    Running,
    connect_when_up,
    echo_roundtrip,
    env,
    free_port,
    needs_source_tree,
    wait_until_listening,
)

DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
EXAMPLES = ROOT / "trionet" / "examples"
SPHINX = [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html"]


def load_snippet(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"snippet_{name}", SNIPPETS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.rst"))


# ------------------------------------------------------------------ building
@pytest.mark.slow
@needs_source_tree
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    """-W -n: a warning, or a reference that resolves nowhere, fails the build.
    Python and trio names link to their documentation (local inventories,
    docs/_inv/: no network at build time)."""
    build = subprocess.run(
        [*SPHINX, DOCS, tmp_path],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr + build.stdout
    assert build.stderr == ""
    index = (tmp_path / "index.html").read_text()
    assert "trionet" in index
    reference = (tmp_path / "reference.html").read_text()
    assert 'id="trionet.NetProcessor.serve"' in reference
    # Read the Docs' theme, its content column widened for 100-column code.
    assert "sphinx_rtd_theme" in index or "wy-nav-content" in index
    assert (tmp_path / "_static" / "styles.css").is_file()
    # intersphinx: trio's and Python's names are links to their pages.
    trio_docs = "https://trio.readthedocs.io/en/stable/"
    assert f'href="{trio_docs}reference-io.html#trio.abc.HalfCloseableStream"' in reference
    assert 'href="https://docs.python.org/3.11/library/ssl.html#ssl.SSLContext"' in reference
    # A class users are given, not one they build: no constructor parameters.
    connection = reference.split('id="trionet.Connection"', 1)[1].split('id="trionet.TLSInfo"')[0]
    assert "conn_id" not in connection and "_Owner" not in connection
    # The pages the README links to, and the changelog from CHANGELOG.md.
    for page in ("install", "examples", "changelog"):
        assert (tmp_path / f"{page}.html").is_file(), page
    changelog = (tmp_path / "changelog.html").read_text()
    assert "Unreleased" in changelog and "0.1.0" in changelog
    # Connection's stream methods are plain functions returning a coroutine (one
    # frame per call); the reference shows them as the async methods they are.
    for method in ("receive_some", "send_all", "send_eof", "wait_send_all_might_not_block"):
        signature = re.search(
            rf'<dt class="sig sig-object py" id="trionet\.Connection\.{method}">(.*?)</dt>',
            reference,
            re.S,
        )
        assert signature is not None, method
        assert ">await<" in signature[1], (method, signature[1])
    assert "Coroutine" not in reference


def public_names(module: ModuleType) -> set[str]:
    return {name for name in dir(module) if not name.startswith("_")} - {"annotations"}


@pytest.mark.parametrize(
    ("module", "page"), [(trionet, "reference.rst"), (trionet.iocore, "iocore.rst")]
)
def test_every_public_name_is_in_the_reference(module: ModuleType, page: str) -> None:
    text = (DOCS / page).read_text()
    documented = set(re.findall(r"^\.\. auto(?:class|function|exception|data):: (\w+)", text, re.M))
    missing = public_names(module) - documented - {"iocore", "examples"}
    assert not missing, f"add to docs/{page}: {sorted(missing)}"


@needs_source_tree
def test_included_files_exist_and_are_tested() -> None:
    """literalinclude only from files this suite runs: docs/snippets/ (run
    below) or trionet/examples/ (run by tests/test_examples.py and friends)."""
    included = []
    for page in pages():
        for target in re.findall(r"\.\. literalinclude:: (\S+)", page.read_text()):
            path = (page.parent / target).resolve()
            assert path.is_file(), f"{page.name}: {target} does not exist"
            assert path.parent in (SNIPPETS, EXAMPLES), f"{page.name}: {target}"
            included.append(path)
    assert included
    for snippet in SNIPPETS.glob("*.py"):
        assert snippet.stem in SNIPPET_TESTS, f"{snippet.name} has no test in test_docs.py"


# ------------------------------------------------------------------ snippets
async def roundtrip(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        got = b""
        while chunk := await stream.receive_some():
            got += chunk
    return got


async def test_tutorial_echo() -> None:
    snippet = load_snippet("tutorial_echo")
    port = free_port()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snippet.main, port)
        (await connect_when_up(port)).socket.close()
        assert await roundtrip(port, b"hello, trionet") == b"hello, trionet"
        nursery.cancel_scope.cancel()


async def test_tutorial_limits(autojump_clock: trio.testing.MockClock) -> None:
    snippet = load_snippet("tutorial_limits")
    net: trionet.NetProcessor = snippet.make_processor()
    assert net.max_connections == 1000
    opts = snippet.accept_options(0)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, snippet.echo, opts)
        port = server.ports[0]
        # Ten connections from one address are served; the eleventh is closed.
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(11)]
        assert await streams[10].receive_some() == b""
        assert net.statistics().per_client_connections_throttled_in == 1
        # The others echo; then, silent, they are closed after exactly 30 s.
        await streams[0].send_all(b"ping")
        assert await streams[0].receive_some() == b"ping"
        start = trio.current_time()
        assert await streams[1].receive_some() == b""
        assert trio.current_time() - start == pytest.approx(30.0, abs=0.01)
        await trio.testing.wait_all_tasks_blocked()
        stats = net.statistics()
        assert (stats.inactivity_timeouts, stats.connections_currently_open) == (10, 0)
        for s in streams:
            await s.aclose()
        server.shutdown(0)


async def test_tutorial_shutdown(capsys: pytest.CaptureFixture[str]) -> None:
    snippet = load_snippet("tutorial_shutdown")
    port = free_port()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snippet.main, port, 5.0)
        client = await connect_when_up(port)
        await client.send_all(b"before")
        assert await client.receive_some() == b"before"
        await trio.testing.wait_all_tasks_blocked()
        os.kill(os.getpid(), signal.SIGTERM)
        # The port closes at once...
        with trio.fail_after(5):
            while True:
                try:
                    (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                except OSError:
                    break
                await trio.sleep(0.01)
        # ...while the open connection is still served until it ends.
        await client.send_all(b"after")
        assert await client.receive_some() == b"after"
        await client.aclose()
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"listening on port {port}"
    assert out.splitlines()[-1].startswith("stopped after ")


async def served(
    nursery: trio.Nursery, net: trionet.NetProcessor, handler: Any, *specs: Any
) -> trionet.Server:
    server: trionet.Server = await nursery.start(
        net.serve, handler, *(specs or (trionet.AcceptOptions(host="127.0.0.1"),))
    )
    return server


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def test_howto_throttling(autojump_clock: trio.testing.MockClock) -> None:
    snippet = load_snippet("howto_throttling")
    assert snippet.pausing().throttle_mode == "pause"
    assert snippet.pausing().max_connections == 1000
    closing = snippet.closing()
    assert (closing.throttle_mode, closing.max_connections) == ("close", 1000)
    # Per-client limit with exempt networks: 20 from one address, the 21st closed.
    net = snippet.per_client()
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, echo)
        port = server.ports[0]
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(21)]
        assert await streams[20].receive_some() == b""
        await streams[19].send_all(b"ok")
        assert await streams[19].receive_some() == b"ok"
        assert net.statistics().per_client_connections_throttled_in == 1
        for s in streams:
            await s.aclose()
        server.shutdown(0)
    # The backdoor port still serves when the processor is full.
    full = trionet.NetProcessor(max_connections=1, throttle="close")
    async with trio.open_nursery() as nursery:
        public = await served(nursery, full, echo)
        backdoor = await served(nursery, full, echo, snippet.health_check_port(0))
        first = await trio.open_tcp_stream("127.0.0.1", public.ports[0])
        await first.send_all(b"1")
        assert await first.receive_some() == b"1"
        turned_away = await trio.open_tcp_stream("127.0.0.1", public.ports[0])
        assert await turned_away.receive_some() == b""
        admin = await trio.open_tcp_stream("127.0.0.1", backdoor.ports[0])
        await admin.send_all(b"health?")
        assert await admin.receive_some() == b"health?"
        assert full.statistics().connections_throttled_in == 1
        for s in (first, turned_away, admin):
            await s.aclose()
        public.shutdown(0)
        backdoor.shutdown(0)


async def test_howto_timeouts(autojump_clock: trio.testing.MockClock) -> None:
    snippet = load_snippet("howto_timeouts")
    net = trionet.NetProcessor(max_idle_connections=2)
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, snippet.keep_alive)
        port = server.ports[0]
        a, b = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()
        await a.send_all(b"hello")
        assert await a.receive_some() == b"HELLO"  # a is idle again, newer than b
        await trio.testing.wait_all_tasks_blocked()
        assert net.statistics().idle_connections == 2
        c = await trio.open_tcp_stream("127.0.0.1", port)
        await trio.testing.wait_all_tasks_blocked()
        # Three idle connections, two allowed: the one idle longest (b) goes.
        assert net.statistics().keep_alive_evictions == 1
        assert await b.receive_some() == b""
        # The others are closed by the keep-alive timeout, exactly 10 s later.
        start = trio.current_time()
        assert await a.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(snippet.KEEP_ALIVE_TIMEOUT, abs=0.01)
        assert await c.receive_some() == b""
        await trio.testing.wait_all_tasks_blocked()
        stats = net.statistics()
        assert (stats.inactivity_timeouts, stats.connections_currently_open) == (2, 0)
        for s in (a, b, c):
            await s.aclose()
        server.shutdown(0)
    assert snippet.processor().statistics().keep_alive_evictions == 0
    # with_deadline: a busy connection still ends at its active timeout.
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, snippet.with_deadline)
        stream = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        start = trio.current_time()
        with trio.fail_after(4000):
            while True:
                try:
                    await stream.send_all(b"tick")
                    if not await stream.receive_some():
                        break
                except trio.BrokenResourceError:
                    break
                await trio.sleep(10)
        assert trio.current_time() - start == pytest.approx(3600, abs=10.01)
        assert net.statistics().active_timeouts == 1
        await stream.aclose()
        server.shutdown(0)


def fetch(port: int, path: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        body: bytes = resp.read()
    return body


async def test_howto_statistics(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import prometheus_client

    snippet = load_snippet("howto_statistics")
    port, stats_port = free_port(), free_port()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snippet.main, port, stats_port)
        (await connect_when_up(stats_port)).socket.close()
        assert await roundtrip(port, b"12345") == b"12345"
        records = json.loads(await trio.to_thread.run_sync(fetch, stats_port, "/stats"))
        assert records["proxy.process.net.read_bytes"] == 5
        metrics = await trio.to_thread.run_sync(fetch, stats_port, "/metrics")
        assert b"trionet_net_write_bytes_total 5.0" in metrics
        nursery.cancel_scope.cancel()
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, echo)
        assert await roundtrip(server.ports[0], b"abc") == b"abc"
        await trio.testing.wait_all_tasks_blocked()
        snippet.print_summary(net)
        server.shutdown(0)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0 open, 1 accepted"
    assert "proxy.process.net.read_bytes = 3" in out
    snippet.export_with_my_metrics(net)
    try:
        text = prometheus_client.generate_latest().decode()
        assert "trionet_net_read_bytes_total 3.0" in text
    finally:
        for collector in list(prometheus_client.REGISTRY._collector_to_names):
            if isinstance(collector, trionet.StatsCollector):
                prometheus_client.REGISTRY.unregister(collector)


def test_command_lines_in_the_docs_parse() -> None:
    from trionet._apps._cli_args import build_parser

    lines = [
        line.split("$ ", 1)[1]
        for page in pages()
        for line in page.read_text().splitlines()
        if line.strip().startswith("$ trionet ")
    ]
    assert len(lines) >= 2
    for line in lines:
        build_parser().parse_args(shlex.split(line)[1:])


def test_example_command_lines_in_the_docs_parse() -> None:
    """Every ``python -m trionet.examples.NAME ...`` command line the docs
    show names an example that exists, with arguments it accepts."""
    lines = [
        line.strip().removeprefix("$ ").removeprefix("python -m ")
        for page in pages()
        for line in page.read_text().splitlines()
        if line.strip().removeprefix("$ ").startswith("python -m trionet.examples.")
    ]
    assert len(lines) >= 5
    for line in lines:
        module, *args = shlex.split(line.removesuffix("&"))
        example = importlib.import_module(module)
        example.parse_args(args)


async def test_tutorial_client(capsys: pytest.CaptureFixture[str]) -> None:
    snippet = load_snippet("tutorial_client")
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, echo)
        assert await snippet.main("127.0.0.1", server.ports[0]) == 0
        assert capsys.readouterr().out == "hello, trionet\n"
        server.shutdown(0)
    # Nobody listening: the error names the address, status 1.
    port = free_port()
    assert await snippet.main("127.0.0.1", port) == 1
    assert capsys.readouterr().err.startswith("could not connect: ")
    assert capsys.readouterr().err == ""


async def test_howto_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    snippet = load_snippet("howto_connecting")
    opts = snippet.connect_options()
    assert (opts.connect_timeout, opts.resolver) == (5, snippet.RESOLVER)

    async def greet(conn: trionet.Connection) -> None:
        await conn.send_all(b"220 hello")

    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, greet)
        port = server.ports[0]
        # "localhost" goes through the caching resolver: one lookup for two connects.
        assert await snippet.fetch_greeting(net, "localhost", port) == b"220 hello"
        assert await snippet.fetch_greeting(net, "localhost", port) == b"220 hello"
        assert snippet.RESOLVER.misses == 1 and snippet.RESOLVER.hits >= 1
        # A refused port: None, and the message ends with the address.
        dead = free_port()
        assert await snippet.fetch_greeting(net, "127.0.0.1", dead) is None
        assert f": 127.0.0.1:{dead} {errno.ECONNREFUSED}" in capsys.readouterr().out
        # Racing two addresses: the listening one wins; the loser leaks nothing.
        assert await snippet.first_to_answer(net, port, ["127.0.0.1", "::1"]) in (
            "127.0.0.1",
            "::1",
        )
        await trio.testing.wait_all_tasks_blocked()
        server.shutdown(0)
    with trio.fail_after(5):
        while net.statistics().connections_currently_open:
            await trio.sleep(0.001)


async def test_howto_connecting_timeout(
    autojump_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    snippet = load_snippet("howto_connecting")

    class Stuck:
        async def resolve(self, host: str, port: int, family: int) -> list[Any]:
            await trio.sleep_forever()
            return []

    snippet.RESOLVER.resolver = Stuck()
    net = trionet.NetProcessor()
    assert await snippet.fetch_greeting(net, "stuck.example", 80) is None
    assert capsys.readouterr().out == "connection timed out after 5000 ms: stuck.example:80\n"
    assert trio.current_time() == pytest.approx(5.0)


async def test_howto_tls(tmp_path: Path) -> None:
    import ssl

    import trustme

    snippet = load_snippet("howto_tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    opts = snippet.tls_options(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"), 0)
    assert opts.tls_handshake_timeout == 5
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, snippet.hello, opts)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        client_ctx.set_alpn_protocols(["http/1.1"])
        tcp = await trio.open_tcp_stream("127.0.0.1", server.ports[0])
        tls = trio.SSLStream(tcp, client_ctx, server_hostname="localhost")
        async with tls:
            line = await tls.receive_some()
        version = line.decode().split()[0]
        assert version in ("TLSv1.2", "TLSv1.3")
        assert line.decode().split()[1:] == ["http/1.1", "localhost"]
        ca.cert_pem.write_to_path(tmp_path / "ca.pem")
        greeting = await snippet.fetch_greeting(net, server.ports[0], str(tmp_path / "ca.pem"))
        assert greeting.decode().split()[1:] == ["http/1.1", "localhost"]
        assert net.statistics().connects_total == 1
        server.shutdown(0)


async def test_howto_proxy(nursery: trio.Nursery) -> None:
    snippet = load_snippet("howto_proxy")
    got: list[bytes] = []

    async def upstream(conn: trionet.Connection) -> None:
        while data := await conn.receive_some():
            got.append(data)
        await conn.send_all(b"bye")

    up_net = trionet.NetProcessor()
    up = await served(nursery, up_net, upstream)
    port = free_port()
    nursery.start_soon(snippet.main, port, ("127.0.0.1", up.ports[0]))
    (await connect_when_up(port)).socket.close()
    assert await roundtrip(port, b"via TcpProxy") == b"bye"
    # The hand-written variant tags the session first.
    net = trionet.NetProcessor()
    tagging = snippet.make_tagging_proxy(net, "127.0.0.1", up.ports[0])
    proxy = await served(nursery, net, tagging)
    got.clear()
    assert await roundtrip(proxy.ports[0], b"payload") == b"bye"
    assert b"".join(got) == b"client 127.0.0.1\npayload"
    # Upstream down: the client is closed, nothing raised in the handler.
    down = await served(nursery, net, snippet.make_tagging_proxy(net, "127.0.0.1", free_port()))
    assert await roundtrip(down.ports[0], b"") == b""
    assert net.statistics().handler_errors == 0

    # Several backends: a refusing one, and one that expects the PROXY header
    # and says whether the address it reports is the header's (the client's
    # port, not the proxy's socket).
    async def who(conn: trionet.Connection) -> None:
        relayed = conn.remote_address != conn.peer_address
        await conn.send_all(b"relayed" if relayed else b"direct")

    pp = trionet.AcceptOptions(host="127.0.0.1", proxy_protocol=True)
    backend = await served(nursery, trionet.NetProcessor(), who, pp)
    targets = [("127.0.0.1", free_port()), ("127.0.0.1", backend.ports[0])]
    failover = snippet.make_failover_proxy(net, targets)
    front = await served(nursery, net, failover)
    answers = [await roundtrip(front.ports[0], b"") for _ in range(2)]
    assert answers == [b"relayed", b"relayed"]
    assert failover.statistics().upstreams[1].sessions == 2


@pytest.mark.slow
def test_deploy_workers() -> None:
    port = free_port()
    code = f"import deploy_workers; raise SystemExit(deploy_workers.main({port}, 2))"
    with Running("-c", f"import sys; sys.path.insert(0, {str(SNIPPETS)!r}); {code}") as run:
        ids = sorted(run.expect(r"worker (\d) of 2 serving", 60)[1] for _ in range(2))
        assert ids == ["0", "1"]
        # The snippet prints before ctx.serve() has bound its socket: wait
        # (bounded) until a worker listens, then every round trip must work.
        wait_until_listening(port)
        for i in range(4):
            assert echo_roundtrip(port, b"n%d" % i) == b"n%d" % i
        status, _out, err = run.stop(signal.SIGTERM, timeout=30)
    assert status == 0, err


def test_deploy_systemd() -> None:
    """Launched the way systemd launches a socket-activated service: the
    listening socket at fd 3, LISTEN_FDS=1 and LISTEN_PID = the service's pid."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        fd = listener.fileno()
        script = SNIPPETS / "deploy_systemd.py"
        # What systemd does between fork and exec, in a tiny launcher:
        launcher = (
            f"import os, sys; os.dup2({fd}, 3); os.environ['LISTEN_FDS'] = '1'; "
            "os.environ['LISTEN_PID'] = str(os.getpid()); "
            f"os.execv(sys.executable, [sys.executable, {str(script)!r}])"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher],
            pass_fds=(fd,),
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        header = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"
        assert echo_roundtrip(port, header + b"activated") == b"activated"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as bare:
            bare.sendall(b"no header\r\n")
            bare.shutdown(socket.SHUT_WR)
            with contextlib.suppress(ConnectionResetError):
                assert bare.recv(100) == b""  # not echoed: no PROXY header
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == [f"serving on port {port}", "client 203.0.113.7 port 51000"]


async def test_howto_ecosystem_listeners(autojump_clock: trio.testing.MockClock) -> None:
    snippet = load_snippet("howto_ecosystem")
    net = trionet.NetProcessor()
    port = free_port()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snippet.serve_with_trio, net, port)
        idle = await connect_when_up(port)
        start = trio.current_time()
        assert await idle.receive_some() == b""  # the 30 s inactivity timeout
        assert trio.current_time() - start == pytest.approx(30)
        await idle.aclose()
        # echo() was cancelled quietly: trio.serve_listeners still serves.
        assert await roundtrip(port, b"after the timeout") == b"after the timeout"
        stats = net.statistics()
        assert stats.inactivity_timeouts == 1 and stats.total_accepts == 2
        nursery.cancel_scope.cancel()


async def websocket_roundtrip(port: int, messages: list[str | bytes]) -> list[str | bytes]:
    import trio_websocket

    got: list[str | bytes] = []
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
        for message in messages:
            await ws.send_message(message)
            got.append(await ws.get_message())
    return got


async def test_howto_ecosystem_websockets() -> None:
    import trio_websocket

    snippet = load_snippet("howto_ecosystem")
    net = trionet.NetProcessor(max_connections=10)
    port = free_port()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(snippet.serve_websockets, net, port)
        # No bare TCP probe to see it is up: trio-websocket would hold a
        # connection that never sends a request for its 60 s connect_timeout.
        with trio.fail_after(10):
            while True:
                try:
                    got = await websocket_roundtrip(port, ["hi", b"\x00\xff"])
                    break
                except trio_websocket.HandshakeError:  # not listening yet
                    await trio.sleep(0.01)
        assert got == ["hi", b"\x00\xff"]
        server = await served(nursery, net, snippet.websocket_handler)
        assert await websocket_roundtrip(server.ports[0], ["in a handler"]) == ["in a handler"]
        with trio.fail_after(10):
            while net.statistics().connections_currently_open:
                await trio.sleep(0.01)
        stats = net.statistics()
        assert stats.total_accepts == 2 and stats.handler_errors == 0
        nursery.cancel_scope.cancel()


async def test_howto_ecosystem_http() -> None:
    import h11

    snippet = load_snippet("howto_ecosystem")
    net = trionet.NetProcessor(max_idle_connections=1)
    async with trio.open_nursery() as nursery:
        server = await served(nursery, net, snippet.http_handler)
        port = server.ports[0]

        async def request(stream: trio.SocketStream, http: h11.Connection, close: bool) -> bytes:
            headers = [("host", "localhost")] + ([("connection", "close")] if close else [])
            await stream.send_all(http.send(h11.Request(method="GET", target="/", headers=headers)))
            await stream.send_all(http.send(h11.EndOfMessage()))
            body = b""
            while True:
                event = http.next_event()
                if event is h11.NEED_DATA:
                    http.receive_data(await stream.receive_some())
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    return body

        # Two requests on one kept-alive connection, then one asking to close.
        first = await trio.open_tcp_stream("127.0.0.1", port)
        http = h11.Connection(h11.CLIENT)
        for close in (False, False, True):
            assert await request(first, http, close) == b"hello from trionet\n"
            if not close:
                http.start_next_cycle()
        assert await first.receive_some() == b""  # the server closed it, as asked
        await first.aclose()
        # Idle between requests, so evictable: a second idle client evicts the first.
        a = await trio.open_tcp_stream("127.0.0.1", port)
        http_a = h11.Connection(h11.CLIENT)
        assert await request(a, http_a, False) == b"hello from trionet\n"
        b = await trio.open_tcp_stream("127.0.0.1", port)
        assert await request(b, h11.Connection(h11.CLIENT), False) == b"hello from trionet\n"
        assert await a.receive_some() == b""  # evicted
        assert net.statistics().keep_alive_evictions == 1
        # A malformed request closes the connection without a handler error.
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(b"NOT HTTP\r\n\r\n")
        assert await bad.receive_some() == b""
        for stream in (a, b, bad):
            await stream.aclose()
        assert net.statistics().handler_errors == 0
        server.shutdown(0)


SNIPPET_TESTS: dict[str, Callable[..., Any]] = {
    "tutorial_echo": test_tutorial_echo,
    "tutorial_limits": test_tutorial_limits,
    "tutorial_shutdown": test_tutorial_shutdown,
    "howto_throttling": test_howto_throttling,
    "howto_timeouts": test_howto_timeouts,
    "howto_statistics": test_howto_statistics,
    "tutorial_client": test_tutorial_client,
    "howto_connecting": test_howto_connecting,
    "howto_tls": test_howto_tls,
    "howto_proxy": test_howto_proxy,
    "deploy_workers": test_deploy_workers,
    "deploy_systemd": test_deploy_systemd,
    "howto_ecosystem": test_howto_ecosystem_listeners,
}
