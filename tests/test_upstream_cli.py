"""The proxy's upstream side from the command line and with TLS: several
``--upstream`` with failover, ``--send-proxy``, ``--upstream-tls`` (trustme
certificates: a good one, a wrong name, an unknown CA), and the usage errors
of those flags."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import pytest
import trio
import trustme

import trionet
from trionet._apps._cli import main, parse

from .running import Running, echo_roundtrip
from .test_upstreams import _refusing_port, _session


# ------------------------------------------------------------- usage errors
def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


PROXY = ["proxy", "--listen", "0", "--upstream", "127.0.0.1:80"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--upstream-ca", "ca.pem"], "argument --upstream-ca: needs --upstream-tls"),
        (["--upstream-sni", "a.example"], "argument --upstream-sni: needs --upstream-tls"),
        (["--upstream-alpn", "h2"], "argument --upstream-alpn: needs --upstream-tls"),
        (
            ["--upstream-tls", "--upstream-ca", "/nonexistent/ca.pem"],
            "argument --upstream-ca: '/nonexistent/ca.pem': no such file",
        ),
        (
            ["--upstream-tls", "--upstream-alpn", "h2,,http/1.1"],
            "argument --upstream-alpn: 'h2,,http/1.1': expected protocol names",
        ),
        (
            ["--upstream-tls", "--upstream-sni", "a b"],
            "argument --upstream-sni: 'a b': expected a host name",
        ),
        (["--send-proxy", "v3"], "argument --send-proxy: invalid choice: 'v3'"),
        (["--balance", "random"], "argument --balance: invalid choice: 'random'"),
        (["--max-fails", "0"], "argument --max-fails: '0': must be at least 1"),
        (["--fail-backoff", "0"], "argument --fail-backoff: '0': must be a positive number"),
        (["--upstream", "127.0.0.1:80"], "argument --upstream: '127.0.0.1:80': given twice"),
    ],
)
def test_upstream_usage_errors(
    capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert message in usage_error(capsys, *PROXY, *extra)


def test_options_reach_the_proxy(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    argv = [*PROXY, "--upstream", "[::1]:81", "--balance", "least-conn", "--max-fails", "5"]
    argv += ["--fail-backoff", "2.5", "--send-proxy", "v2", "--upstream-tls"]
    argv += ["--upstream-ca", str(tmp_path / "ca.pem"), "--upstream-sni", "app.example"]
    argv += ["--upstream-alpn", "h2,http/1.1"]
    _, plan = parse(argv)
    proxy = plan.proxy
    assert proxy is not None
    assert proxy.targets == (("127.0.0.1", 80), ("::1", 81))
    assert repr(proxy) == "<trionet.TcpProxy to 127.0.0.1:80, [::1]:81 (least-conn)>"
    assert plan.suffix == ", forwarding to 127.0.0.1:80, [::1]:81 (least-conn) over TLS"
    opts = proxy.options
    assert opts is not None and opts.ssl_context is not None
    assert opts.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert opts.ssl_context.check_hostname
    # Only the given CA is trusted, not the system's.
    assert len(opts.ssl_context.get_ca_certs()) == 1
    assert (opts.server_hostname, opts.alpn_protocols) == ("app.example", ("h2", "http/1.1"))
    assert opts.send_proxy_protocol == 2
    assert (proxy.balance, proxy.max_fails, proxy.fail_backoff) == ("least-conn", 5, 2.5)
    # Without the flags: no TLS, no header, round-robin.
    _, plain = parse(PROXY)
    assert plain.proxy is not None and plain.proxy.options is not None
    assert plain.proxy.options.ssl_context is None
    assert plain.proxy.options.send_proxy_protocol is None
    assert plain.proxy.balance == "round-robin"


# -------------------------------------------------- upstream TLS (library)
@pytest.fixture(scope="module")
def upstream_ca() -> trustme.CA:
    return trustme.CA()


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("upstream.test", "127.0.0.1").configure_cert(ctx)
    return ctx


async def _echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


@pytest.mark.parametrize(
    ("trusted", "name", "reason"),
    [
        ("same", "upstream.test", None),
        ("same", "wrong.test", "Hostname mismatch"),
        ("other", "upstream.test", "unable to get local issuer certificate"),
    ],
)
async def test_upstream_tls_verification(
    upstream_ca: trustme.CA,
    caplog: pytest.LogCaptureFixture,
    trusted: str,
    name: str,
    reason: str | None,
) -> None:
    client_ctx = ssl.create_default_context()
    (upstream_ca if trusted == "same" else trustme.CA()).configure_trust(client_ctx)
    net, upstream_net = trionet.NetProcessor(), trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        up = await nursery.start(
            upstream_net.serve,
            _echo,
            trionet.AcceptOptions(host="127.0.0.1", ssl_context=_server_context(upstream_ca)),
        )
        opts = trionet.ConnectOptions(ssl_context=client_ctx, server_hostname=name)
        proxy = trionet.TcpProxy(net, "127.0.0.1", up.ports[0], opts)
        front = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
        with trio.fail_after(10):
            if reason is None:
                # No half-close: an EOF towards a TLS upstream waits for its end.
                stream = await trio.open_tcp_stream("127.0.0.1", front.ports[0])
                async with stream:
                    await stream.send_all(b"over tls")
                    got = await stream.receive_some()
            else:
                got = await _session(front.ports[0], b"")
        for server in (front, up):
            server.shutdown(0)
    stats = proxy.statistics()
    if reason is None:
        assert got == b"over tls"
        assert stats.upstream_failures == 0 and stats.upstreams[0].sessions == 1
        return
    assert got == b""  # the client is closed
    # Counted: the session, the target, the processor's handshake errors...
    assert stats.upstream_failures == 1 and stats.upstreams[0].failures == 1
    assert net.statistics().tls_handshake_errors == 1
    # ...and logged, naming the host and the reason.
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    message = warning.getMessage()
    assert f"TLS handshake failed for {name}" in message
    assert reason in message and "127.0.0.1:" in message
    assert warning.upstream == f"127.0.0.1:{up.ports[0]}"  # type: ignore[attr-defined]


# ------------------------------------------------------ the command, for real
@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory, upstream_ca: trustme.CA) -> Path:
    d = tmp_path_factory.mktemp("upstream-tls")
    cert = upstream_ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(d / "key.pem")
    cert.private_key_and_cert_chain_pem.write_to_path(d / "chain.pem")
    upstream_ca.cert_pem.write_to_path(d / "ca.pem")
    return d


def _tls_echo_server(d: Path) -> Running:
    argv = ["echo", "--port", "0", "--tls-cert", str(d / "chain.pem"), "--tls-key"]
    return Running("-m", "trionet", *argv, str(d / "key.pem"))


def _port_of(run: Running, command: str) -> int:
    return int(run.expect(rf"trionet {command}: listening on 127\.0\.0\.1:(\d+)")[1])


@pytest.mark.slow
def test_cli_upstream_tls_good_and_wrong_name(tls_files: Path) -> None:
    with _tls_echo_server(tls_files) as upstream:
        target = f"127.0.0.1:{_port_of(upstream, 'echo')}"
        tls = ["--upstream-tls", "--upstream-ca", str(tls_files / "ca.pem")]
        argv = ["proxy", "--listen", "0", "--upstream", target, *tls]
        with Running("-m", "trionet", *argv) as good:
            line = good.expect(r"listening on 127\.0\.0\.1:(\d+), forwarding to (.*)$")
            assert line[2] == f"{target} over TLS"
            # No half-close: an EOF towards a TLS upstream waits for its end.
            with socket.create_connection(("127.0.0.1", int(line[1])), timeout=10) as client:
                client.sendall(b"verified")
                assert client.recv(100) == b"verified"
            status, out, err = good.stop()
        assert status == 0, err
        assert "1 sessions (0 upstream failures)" in out
        with Running("-m", "trionet", *argv, "--upstream-sni", "wrong.example") as bad:
            port = _port_of(bad, "proxy")
            assert echo_roundtrip(port, b"") == b""  # closed: no upstream
            status, out, err = bad.stop()
        assert status == 0, err
        assert "1 sessions (1 upstream failures)" in out
        # The log line names the server name, the reason and the upstream.
        assert "TLS handshake failed for wrong.example" in err
        assert "Hostname mismatch" in err and target in err
        upstream.stop()


@pytest.mark.slow
def test_cli_failover_and_send_proxy() -> None:
    # An upstream expecting PROXY headers (trionet echo --proxy-protocol closes
    # a connection without one) behind a refused one: every session gets
    # through, the refused upstream is logged as a failover.
    with Running("-m", "trionet", "echo", "--port", "0", "--proxy-protocol") as upstream:
        good = f"127.0.0.1:{_port_of(upstream, 'echo')}"
        refused = f"127.0.0.1:{_refusing_port()}"
        argv = ["proxy", "--listen", "0", "--upstream", refused, "--upstream", good]
        argv += ["--send-proxy", "v2", "--connect-timeout", "5"]
        with Running("-m", "trionet", *argv) as proxy:
            line = proxy.expect(r"listening on 127\.0\.0\.1:(\d+), forwarding to (.*)$")
            assert line[2] == f"{refused}, {good} (round-robin)"
            for i in range(4):
                assert echo_roundtrip(int(line[1]), b"hop %d" % i) == b"hop %d" % i
            status, out, err = proxy.stop()
        upstream.stop()
    assert status == 0, err
    assert "4 sessions (0 upstream failures)" in out
    # Round-robin starts at the refused one every other session: 2 failovers.
    # The refused target's warning once (its second failure within 10 s is
    # counted, not repeated); both failovers in the session log.
    assert err.count(f"upstream {refused}: refused (") == 1, err
    assert "attempt=1" in err
    assert err.count(f"upstream={good} attempts=2") == 2, err
