"""The command's logging (trionet._apps._logging): text and JSON lines with
each record's structured fields; the proxy's upstream failures at WARNING,
rate-limited; and the real command (a subprocess, workers too) writing JSON
lines that parse, with the session log on by default."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator

import pytest
import trio
import trustme

import trionet
from trionet import AcceptOptions, ConnectOptions, NetProcessor, TcpProxy
from trionet._apps._logging import JsonFormatter, TextFormatter, configure_logging
from trionet._base._ratelog import RateLimitedLog

from .conftest import start_server, tcp_client, wait_for
from .running import Running, echo_roundtrip

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def make_record(msg: str, args: object = (), **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("trionet.proxy", logging.WARNING, __file__, 1, msg, None, None)
    record.args = args  # type: ignore[assignment]
    record.__dict__.update(extra)
    return record


# --------------------------------------------------------------- formatters
def test_text_renders_the_structured_fields() -> None:
    record = make_record(
        "upstream %s down", ("10.0.0.5:80",), upstream="10.0.0.5:80", error="timed out", n=3
    )
    line = TextFormatter().format(record)
    assert re.fullmatch(
        TIME + r" WARNING trionet\.proxy: upstream 10\.0\.0\.5:80 down "
        r'upstream=10\.0\.0\.5:80 error="timed out" n=3',
        line,
    ), line


def test_text_does_not_repeat_fields_the_message_shows() -> None:
    fields = {"client": "203.0.113.7:51000", "end": "eof"}
    record = make_record("%(client)s %(end)s", fields, **fields, upstream="u:1")
    line = TextFormatter().format(record)
    assert line.endswith(": 203.0.113.7:51000 eof upstream=u:1"), line


def test_text_quotes_what_would_split_a_line() -> None:
    record = make_record("x", detail='a "b"\nc', key="a=b")
    assert TextFormatter().format(record).endswith(r' detail="a \"b\"\nc" key="a=b"')


def test_text_keeps_a_record_on_one_line() -> None:
    record = make_record("bad header %r then %s", (b"x", "two\nINFO fake: line\x1b[2J"))
    line = TextFormatter().format(record)
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith(r"bad header b'x' then two\nINFO fake: line\x1b[2J")


def test_text_adds_the_traceback_and_fixed_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record("failed")
        record.exc_info = sys.exc_info()
    text = TextFormatter({"worker": 2}).format(record)
    first, *rest = text.splitlines()
    assert first.endswith("trionet.proxy: failed worker=2")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "ValueError: boom"


def test_json_is_one_object_per_line_with_every_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = make_record(
            "two\nlines %s", ("x",), upstream="u:1", port=80, time="mine", obj=object()
        )
        record.exc_info = sys.exc_info()
    line = JsonFormatter({"worker": 1}).format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert re.fullmatch(TIME, out.pop("time"))
    assert out.pop("exc_info").endswith("ValueError: boom")
    assert out.pop("obj").startswith("<object object at ")  # str() of what JSON cannot hold
    assert out == {
        "level": "WARNING",
        "logger": "trionet.proxy",
        "message": "two\nlines x",
        "upstream": "u:1",
        "port": 80,
        "field_time": "mine",  # never overwrites the record's own keys
        "worker": 1,
    }


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_configure_replaces_only_its_own_handler(root_logging: logging.Logger) -> None:
    before = list(root_logging.handlers)
    first, second = io.StringIO(), io.StringIO()
    configure_logging("debug", "json", stream=first)
    configure_logging("warning", "text", stream=second)
    ours = [h for h in root_logging.handlers if h not in before]
    assert len(ours) == 1 and root_logging.handlers[: len(before)] == before
    assert root_logging.level == logging.WARNING
    logging.getLogger("trionet.test").info("not shown")
    logging.getLogger("trionet.test").warning("shown %d", 1, extra={"k": "v"})
    assert first.getvalue() == ""
    assert re.fullmatch(TIME + r" WARNING trionet\.test: shown 1 k=v\n", second.getvalue())


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [
        ("verbose", "text", "log level 'verbose': must be one of debug, info, warning, error"),
        ("info", "xml", "log format 'xml': must be one of text, json"),
    ],
)
def test_configure_names_a_bad_setting(level: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        configure_logging(level, fmt)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_rate_limited_log_counts_the_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trionet.test")
    log = RateLimitedLog(3600, logging.getLogger("trionet.test"))
    for i in range(4):
        log(logging.WARNING, "failure %d", i, extra={"upstream": "u:1"})
    log.interval = 0
    log(logging.WARNING, "failure %d", 4, extra={"upstream": "u:1"})
    assert [r.getMessage() for r in caplog.records] == [
        "failure 0",
        "failure 4 (3 similar messages suppressed)",
    ]
    assert [r.__dict__.get("suppressed") for r in caplog.records] == [None, 3]


# ---------------------------------------------------- the proxy's failures
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Resolver:
    """Fails like getaddrinfo for an unknown name, or never answers."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang

    async def resolve(self, host: str, port: int, family: int) -> list[object]:
        if self.hang:
            await trio.sleep_forever()
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def proxied_failures(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    proxy: TcpProxy,
    sessions: int = 1,
) -> list[logging.LogRecord]:
    caplog.set_level(logging.INFO, logger="trionet.proxy")
    server = await start_server(nursery, proxy.net, proxy)
    sessions += proxy.statistics().upstream_failures
    for _ in range(sessions - proxy.statistics().upstream_failures):
        client = await tcp_client(server.ports[0])
        assert await client.receive_some() == b""  # closed once the connect failed
        await client.aclose()
    await wait_for(lambda: proxy.statistics().upstream_failures == sessions)
    # The connect-failure warnings (not "marked down", also a WARNING).
    return [r for r in caplog.records if r.levelno == logging.WARNING and hasattr(r, "error")]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.parametrize("kind", ["refused", "unresolvable", "timed out", "TLS verification"])
async def test_upstream_failure_is_a_warning_naming_it(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    autojump_clock: trio.testing.MockClock,
    ca: trustme.CA,
    kind: str,
) -> None:
    net = NetProcessor()
    host, port, options = "127.0.0.1", closed_port(), ConnectOptions(connect_timeout=5)
    if kind in ("unresolvable", "timed out"):
        host = "upstream.invalid"
        options = ConnectOptions(connect_timeout=5, resolver=Resolver(kind == "timed out"))  # type: ignore[arg-type]
    elif kind == "TLS verification":
        # A TLS upstream whose certificate this proxy's context does not trust.
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost").configure_cert(server_ctx)
        tls_up = await start_server(
            nursery, NetProcessor(), _drain, AcceptOptions(host="127.0.0.1", ssl_context=server_ctx)
        )
        port = tls_up.ports[0]
        options = ConnectOptions(
            connect_timeout=5,
            ssl_context=ssl.create_default_context(),  # the system CAs: not ours
            server_hostname="localhost",
        )
    proxy = TcpProxy(net, host, port, options)
    [warning] = await proxied_failures(nursery, caplog, proxy)
    upstream = f"{host}:{port}"
    assert warning.name == "trionet.proxy"
    assert (warning.__dict__["upstream"], warning.__dict__["error"]) == (upstream, kind)
    assert warning.getMessage().startswith(f"upstream {upstream}: {kind} (")
    assert warning.__dict__["detail"] in warning.getMessage()


async def _drain(conn: trionet.Connection) -> None:
    while await conn.receive_some():
        pass


async def test_upstream_failures_are_rate_limited(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TcpProxy(NetProcessor(), "127.0.0.1", closed_port())
    assert len(await proxied_failures(nursery, caplog, proxy, sessions=3)) == 1
    for log in proxy._failure_logs.values():  # one per target
        log.interval = 0  # the interval has passed
    warnings = await proxied_failures(nursery, caplog, proxy, sessions=1)
    assert len(warnings) == 2
    assert "(2 similar messages suppressed)" in warnings[1].getMessage()
    assert warnings[1].__dict__["suppressed"] == 2


# ------------------------------------------------------ the real command
def json_lines(stderr: str) -> list[dict[str, object]]:
    """Every stderr line, parsed (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in stderr.splitlines()]


def test_the_command_logs_json_lines() -> None:
    dead = closed_port()
    argv = ["proxy", "--listen", "0", "--upstream", f"127.0.0.1:{dead}", "--log-format", "json"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            assert client.recv(10) == b""  # no upstream: closed
        status, _out, err = run.stop(signal.SIGTERM)
    assert status == 0, err
    records = json_lines(err)
    [warning] = [r for r in records if r["logger"] == "trionet.proxy" and r["level"] == "WARNING"]
    assert warning["error"] == "refused"
    assert warning["upstream"] == f"127.0.0.1:{dead}"
    [session] = [r for r in records if r["logger"] == "trionet.access"]
    assert session["end"] == "upstream_failed" and session["upstream"] == f"127.0.0.1:{dead}"
    assert session["listen_port"] == port and session["bytes_in"] == 0
    assert str(session["client"]).startswith("127.0.0.1:")
    for record in records:
        assert re.fullmatch(TIME, str(record["time"]))


@pytest.mark.parametrize(
    ("flags", "loggers"),
    [
        (["--log-level", "warning"], set()),  # the session log is INFO
        (["--no-access-log"], set()),
        ([], {"trionet.access"}),
    ],
)
def test_level_and_no_access_log(flags: list[str], loggers: set[str]) -> None:
    argv = ["echo", "--port", "0", "--log-format", "json", *flags]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        assert echo_roundtrip(port, b"hi") == b"hi"
        status, _out, err = run.stop()
    assert status == 0, err
    assert {str(r["logger"]) for r in json_lines(err)} == loggers


@pytest.mark.slow
def test_workers_log_in_the_same_format() -> None:
    argv = ["echo", "--port", "0", "--workers", "2", "--log-format", "json", "--grace", "2"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)")[1])
        for i in range(4):
            _echo_when_serving(port, b"w%d" % i)
        status, _out, err = run.stop(signal.SIGTERM, timeout=30)
    assert status == 0, err
    records = json_lines(err)  # the supervisor's and the workers' lines: all JSON
    sessions = [r for r in records if r["logger"] == "trionet.access"]
    assert len(sessions) >= 4 and {r["worker"] for r in sessions} <= {0, 1}
    assert any(r["logger"] == "trionet.workers" and "worker" not in r for r in records)


def _echo_when_serving(port: int, payload: bytes) -> None:
    for _ in range(600):  # a worker may not listen yet: at most 30 s
        try:
            if echo_roundtrip(port, payload) == payload:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"nothing echoes on port {port}")
