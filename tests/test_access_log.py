"""The session log (``NetProcessor(access_log=True)``, logger ``trionet.access``):
one record per closed connection, for every kind of ending, with the real
client behind a PROXY header, the upstream of a proxy session, and nothing
at all when it is off. In-process, with caplog; time under MockClock."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import trionet
from trionet import AcceptOptions, ConnectOptions, NetProcessor, TcpProxy
from trionet._core._access_log import SESSION_ENDS, address_text, session_end

from .conftest import recv_exactly, start_server, tcp_client, wait_for
from .test_haproxy import HAPROXY, haproxy
from .test_haproxy import _client as haproxy_client
from .test_haproxy import _listen as haproxy_listen

ACCESS = "trionet.access"
LOCAL = AcceptOptions(host="127.0.0.1")


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> Callable[[], list[logging.LogRecord]]:
    caplog.set_level(logging.INFO, logger=ACCESS)

    def records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == ACCESS]

    return records


Records = Callable[[], list[logging.LogRecord]]


async def one_record(records: Records) -> logging.LogRecord:
    """The one record written (waiting up to 20 s, virtual or real)."""
    for _ in range(2000):
        if records():
            break
        await trio.sleep(0.01)
    await trio.sleep(0.05)  # a second record, if one were written, is there now
    [record] = records()
    return record


def fields(record: logging.LogRecord) -> dict[str, object]:
    names = ("client", "listen_port", "connection", "duration", "bytes_in", "bytes_out", "end")
    return {name: getattr(record, name) for name in names}


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def closed_on_us(client: trio.SocketStream) -> bool:
    """Did the server close (FIN, or RST when our bytes were left unread)?"""
    try:
        return await client.receive_some() == b""
    except trio.BrokenResourceError:
        return True


def reset(stream: trio.SocketStream) -> None:
    """Close with a RST (SO_LINGER 0)."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


# ------------------------------------------------------------ ordinary ends
async def test_eof_record_has_every_field(
    nursery: trio.Nursery, access: Records, autojump_clock: trio.testing.MockClock
) -> None:
    net = NetProcessor(access_log=True)
    server = await start_server(nursery, net, echo)
    client = await tcp_client(server.ports[0])
    await client.send_all(b"hello")
    assert await recv_exactly(client, 5) == b"hello"
    await trio.sleep(1.5)
    await client.send_eof()
    assert await closed_on_us(client)
    record = await one_record(access)
    local_port = client.socket.getsockname()[1]
    assert fields(record) == {
        "client": f"127.0.0.1:{local_port}",
        "listen_port": server.ports[0],
        "connection": 1,
        "duration": pytest.approx(1.5, abs=0.01),
        "bytes_in": 5,
        "bytes_out": 5,
        "end": "eof",
    }
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        f"127.0.0.1:{local_port} -> :{server.ports[0]} #1 eof "
        f"{record.__dict__['duration']:.3f}s in=5 out=5"
    )
    await client.aclose()


async def test_reset_by_the_client(nursery: trio.Nursery, access: Records) -> None:
    net = NetProcessor(access_log=True)
    server = await start_server(nursery, net, echo)
    client = await tcp_client(server.ports[0])
    await client.send_all(b"abc")
    assert await recv_exactly(client, 3) == b"abc"
    reset(client)
    record = await one_record(access)
    assert (record.__dict__["end"], record.__dict__["bytes_in"]) == ("reset", 3)


@pytest.mark.parametrize(
    ("options", "end", "duration"),
    [
        ({"inactivity_timeout": 2.0}, "inactivity", 2.0),
        ({"active_timeout": 3.0}, "active", 3.0),
    ],
)
async def test_timeouts(
    nursery: trio.Nursery,
    access: Records,
    autojump_clock: trio.testing.MockClock,
    options: dict[str, float],
    end: str,
    duration: float,
) -> None:
    net = NetProcessor(access_log=True)
    server = await start_server(nursery, net, echo, AcceptOptions(host="127.0.0.1", **options))
    client = await tcp_client(server.ports[0])
    await client.send_all(b"x")
    if end == "active":  # busy all along (every 0.5 s): an active timeout fires anyway
        with contextlib.suppress(trio.BrokenResourceError):  # closed: FIN or RST
            while await recv_exactly(client, 1) != b"":
                await trio.sleep(0.5)
                await client.send_all(b"x")
    record = await one_record(access)
    assert record.__dict__["end"] == end
    assert record.__dict__["duration"] == pytest.approx(duration, abs=1e-6)
    await client.aclose()


async def test_evicted(nursery: trio.Nursery, access: Records) -> None:
    async def idle_then_wait(conn: trionet.Connection) -> None:
        conn.idle = True  # a keep-alive connection between requests
        await conn.receive_some()

    net = NetProcessor(access_log=True, max_idle_connections=1)
    server = await start_server(nursery, net, idle_then_wait)
    first = await tcp_client(server.ports[0])
    await one_record_or_none(access)
    second = await tcp_client(server.ports[0])  # the second idle one evicts the first
    record = await one_record(access)
    assert record.__dict__["end"] == "evicted" and record.__dict__["connection"] == 1
    assert await first.receive_some() == b""
    await first.aclose()
    await second.aclose()


async def one_record_or_none(records: Records) -> None:
    await trio.sleep(0.05)
    assert records() == []


async def test_throttled_at_accept(nursery: trio.Nursery, access: Records) -> None:
    net = NetProcessor(access_log=True, max_connections=1, throttle="close")
    server = await start_server(nursery, net, echo)
    held = await tcp_client(server.ports[0])
    await held.send_all(b"1")
    assert await recv_exactly(held, 1) == b"1"
    refused = await tcp_client(server.ports[0])
    assert await closed_on_us(refused)
    record = await one_record(access)
    assert fields(record) == {
        "client": f"127.0.0.1:{refused.socket.getsockname()[1]}",
        "listen_port": server.ports[0],
        "connection": None,
        "duration": 0.0,
        "bytes_in": 0,
        "bytes_out": 0,
        "end": "throttled",
    }
    assert " #- throttled " in record.getMessage()
    await refused.aclose()
    await held.aclose()


async def test_per_client_limit_refusal(nursery: trio.Nursery, access: Records) -> None:
    net = NetProcessor(access_log=True, per_client_max_connections=1)
    server = await start_server(nursery, net, echo)
    held = await tcp_client(server.ports[0])
    await held.send_all(b"1")
    assert await recv_exactly(held, 1) == b"1"
    refused = await tcp_client(server.ports[0])
    assert await closed_on_us(refused)
    record = await one_record(access)
    assert record.__dict__["end"] == "throttled"
    await refused.aclose()
    await held.aclose()


async def test_handler_error(
    nursery: trio.Nursery, access: Records, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(conn: trionet.Connection) -> None:
        await conn.receive_some()
        raise ValueError("a bug")

    net = NetProcessor(access_log=True)
    server = await start_server(nursery, net, broken)
    client = await tcp_client(server.ports[0])
    await client.send_all(b"go")
    assert await closed_on_us(client)
    record = await one_record(access)
    assert (record.__dict__["end"], record.__dict__["bytes_in"]) == ("handler_error", 2)
    await client.aclose()


async def test_shutdown_cuts_a_session(
    access: Records, autojump_clock: trio.testing.MockClock
) -> None:
    net = NetProcessor(access_log=True)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, echo)
        client = await tcp_client(server.ports[0])
        await client.send_all(b"x")
        assert await recv_exactly(client, 1) == b"x"
        server.shutdown(grace=2)
    record = await one_record(access)
    assert record.__dict__["end"] == "shutdown"
    assert record.__dict__["duration"] == pytest.approx(2.0, abs=0.01)
    await client.aclose()


async def test_serve_cancelled(access: Records) -> None:
    net = NetProcessor(access_log=True)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, echo)
        client = await tcp_client(server.ports[0])
        await client.send_all(b"x")
        assert await recv_exactly(client, 1) == b"x"
        nursery.cancel_scope.cancel()
    record = await one_record(access)
    assert record.__dict__["end"] == "cancelled"
    await client.aclose()


async def test_bad_proxy_header_is_a_failed_handshake(
    nursery: trio.Nursery, access: Records
) -> None:
    net = NetProcessor(access_log=True)
    opts = AcceptOptions(host="127.0.0.1", proxy_protocol=True)
    server = await start_server(nursery, net, echo, opts)
    client = await tcp_client(server.ports[0])
    await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
    assert await closed_on_us(client)
    record = await one_record(access)
    assert record.__dict__["end"] == "handshake_failed"
    await client.aclose()


async def test_the_proxy_header_names_the_client(nursery: trio.Nursery, access: Records) -> None:
    net = NetProcessor(access_log=True)
    opts = AcceptOptions(host="127.0.0.1", proxy_protocol=True)
    server = await start_server(nursery, net, echo, opts)
    client = await tcp_client(server.ports[0])
    await client.send_all(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nhi")
    assert await recv_exactly(client, 2) == b"hi"
    await client.send_eof()
    assert await closed_on_us(client)
    record = await one_record(access)
    assert record.__dict__["client"] == "203.0.113.7:51000"
    assert record.__dict__["end"] == "eof"
    assert record.getMessage().startswith("203.0.113.7:51000 -> :")
    await client.aclose()


async def test_relayed_client_over_its_limit_is_throttled(
    nursery: trio.Nursery, access: Records
) -> None:
    net = NetProcessor(access_log=True, per_client_max_connections=1)
    opts = AcceptOptions(host="127.0.0.1", proxy_protocol=True)
    server = await start_server(nursery, net, echo, opts)
    header = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"
    held = await tcp_client(server.ports[0])
    await held.send_all(header + b"1")
    assert await recv_exactly(held, 1) == b"1"
    second = await tcp_client(server.ports[0])
    await second.send_all(header.replace(b"51000", b"51001"))
    assert await closed_on_us(second)
    record = await one_record(access)
    assert (record.__dict__["client"], record.__dict__["end"]) == ("203.0.113.7:51001", "throttled")
    await second.aclose()
    await held.aclose()


# ----------------------------------------------------------- proxy sessions
async def start_proxy(
    nursery: trio.Nursery, net: NetProcessor, port: int, options: ConnectOptions | None = None
) -> trionet.Server:
    return await start_server(nursery, net, TcpProxy(net, "127.0.0.1", port, options))


async def test_proxy_session_names_its_upstream(nursery: trio.Nursery, access: Records) -> None:
    upstream = await start_server(nursery, NetProcessor(), echo)
    net = NetProcessor(access_log=True)
    proxy = await start_proxy(nursery, net, upstream.ports[0])
    client = await tcp_client(proxy.ports[0])
    await client.send_all(b"through")
    assert await recv_exactly(client, 7) == b"through"
    await client.send_eof()
    assert await closed_on_us(client)
    record = await one_record(access)  # one per session: the upstream side is not logged
    assert record.__dict__["end"] == "eof"
    assert record.__dict__["upstream"] == f"127.0.0.1:{upstream.ports[0]}"
    assert (record.__dict__["bytes_in"], record.__dict__["bytes_out"]) == (7, 7)
    assert record.getMessage().endswith(f" upstream=127.0.0.1:{upstream.ports[0]}")
    await client.aclose()


async def test_proxy_upstream_refused(nursery: trio.Nursery, access: Records) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    net = NetProcessor(access_log=True)
    proxy = await start_proxy(nursery, net, port)
    client = await tcp_client(proxy.ports[0])
    assert await closed_on_us(client)
    record = await one_record(access)
    assert (record.__dict__["end"], record.__dict__["upstream"]) == (
        "upstream_failed",
        f"127.0.0.1:{port}",
    )
    await client.aclose()


class Blackhole:
    """A resolver that never answers: the connect times out."""

    async def resolve(self, host: str, port: int, family: int) -> list[object]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_proxy_upstream_timeout(
    nursery: trio.Nursery, access: Records, autojump_clock: trio.testing.MockClock
) -> None:
    net = NetProcessor(access_log=True)
    options = ConnectOptions(connect_timeout=4, resolver=Blackhole())  # type: ignore[arg-type]
    proxy = await start_server(nursery, net, TcpProxy(net, "upstream.invalid", 80, options))
    client = await tcp_client(proxy.ports[0])
    assert await closed_on_us(client)
    record = await one_record(access)
    assert (record.__dict__["end"], record.__dict__["upstream"]) == (
        "upstream_timeout",
        "upstream.invalid:80",
    )
    assert record.__dict__["duration"] == pytest.approx(4.0, abs=0.01)
    await client.aclose()


async def test_proxy_reset_by_the_upstream(nursery: trio.Nursery, access: Records) -> None:
    async def resetting(conn: trionet.Connection) -> None:
        await conn.receive_some()
        conn.abort()  # RST to the proxy: the client must see a reset too

    upstream = await start_server(nursery, NetProcessor(), resetting)
    net = NetProcessor(access_log=True)
    proxy = await start_proxy(nursery, net, upstream.ports[0])
    client = await tcp_client(proxy.ports[0])
    await client.send_all(b"x")
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    record = await one_record(access)
    assert record.__dict__["end"] == "reset"
    await client.aclose()


async def test_proxy_upstream_side_inactivity(
    nursery: trio.Nursery, access: Records, autojump_clock: trio.testing.MockClock
) -> None:
    async def silent(conn: trionet.Connection) -> None:
        await trio.sleep_forever()

    upstream = await start_server(nursery, NetProcessor(), silent)
    net = NetProcessor(access_log=True)
    proxy = await start_proxy(nursery, net, upstream.ports[0], ConnectOptions(inactivity_timeout=3))
    client = await tcp_client(proxy.ports[0])
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    record = await one_record(access)
    assert record.__dict__["end"] == "inactivity"
    assert record.__dict__["duration"] == pytest.approx(3.0, abs=0.01)
    await client.aclose()


# ----------------------------------------------------------- off, and notes
async def test_off_by_default_writes_nothing(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    net = NetProcessor()
    assert net.access_log is False
    server = await start_server(nursery, net, echo)
    client = await tcp_client(server.ports[0])
    await client.send_all(b"x")
    assert await recv_exactly(client, 1) == b"x"
    await client.aclose()
    await wait_for(lambda: net.statistics().connections_currently_open == 0)
    assert [r for r in caplog.records if r.name == ACCESS] == []


async def test_every_end_is_judged_from_one_place(nursery: trio.Nursery) -> None:
    # session_end's precedence: a handler error, then the handler's note, then
    # the connection's timeout, then how the task ended, then reset or EOF.
    net = NetProcessor(access_log=True)
    ends: list[str] = []

    async def record(conn: trionet.Connection) -> None:
        ends.append(session_end(conn, "returned"))
        conn.note_session("upstream_failed", upstream="x:1")
        ends.append(session_end(conn, "shutdown"))
        ends.append(session_end(conn, "handler_error"))

    server = await start_server(nursery, net, record)
    client = await tcp_client(server.ports[0])
    assert await client.receive_some() == b""
    assert ends == ["eof", "upstream_failed", "handler_error"]
    assert set(ends) <= set(SESSION_ENDS)
    await client.aclose()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.note_session("finished"), "end='finished': must be one of eof, reset"),
        (lambda c: c.note_session(client="me"), "client=...: reserved"),
        (lambda c: c.note_session(msg="x"), "msg=...: reserved"),
    ],
)
async def test_note_session_refuses_bad_values(
    nursery: trio.Nursery, call: Callable[[trionet.Connection], Awaitable[None]], message: str
) -> None:
    errors: list[str] = []

    async def handler(conn: trionet.Connection) -> None:
        try:
            call(conn)
        except ValueError as exc:
            errors.append(str(exc))

    server = await start_server(nursery, NetProcessor(access_log=True), handler)
    client = await tcp_client(server.ports[0])
    assert await client.receive_some() == b""
    assert len(errors) == 1 and errors[0].startswith(message)
    await client.aclose()


def test_access_log_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="access_log='yes'"):
        NetProcessor(access_log="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("203.0.113.7", 51000), "203.0.113.7:51000"),
        (("::1", 80, 0, 0), "[::1]:80"),
        ("/run/trionet.sock", "/run/trionet.sock"),  # a Unix socket's peer
        ("", "unix"),  # an unnamed one
        (b"/run/x\xff", "/run/x\\xff"),
    ],
)
def test_address_text(address: object, text: str) -> None:
    assert address_text(address) == text  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (.ci/run installs it)")
async def test_behind_haproxy_the_record_names_the_real_client(
    tmp_path: Path, access: Records
) -> None:
    # The real HAProxy sends a v2 header for a client on 127.0.0.2; the record
    # names that client and port, not HAProxy's own socket (127.0.0.1).
    net = NetProcessor(access_log=True)
    frontend = haproxy_listen("127.0.0.1")
    async with trio.open_nursery() as nursery:
        opts = AcceptOptions(host="127.0.0.1", proxy_protocol=True)
        server = await start_server(nursery, net, echo_token, opts)
        backend = f"127.0.0.1:{server.ports[0]} send-proxy-v2"
        async with haproxy(tmp_path, {"fe": ([frontend], backend)}):
            me = await haproxy_client(frontend.getsockname(), b"token", "127.0.0.2")
            record = await one_record(access)
        server.shutdown(0)
    assert record.__dict__["client"] == f"127.0.0.2:{me[1]}"
    assert record.__dict__["end"] == "eof" and record.__dict__["bytes_in"] == 5
    assert record.__dict__["listen_port"] == server.ports[0]


async def echo_token(conn: trionet.Connection) -> None:
    await conn.send_all(b"ok:" + await conn.receive_some())
    await conn.receive_some()  # until HAProxy passes on the client's close
