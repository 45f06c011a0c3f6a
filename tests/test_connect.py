"""NetProcessor.connect: resolution fast path, happy eyeballs, connect timeout,
errors naming the address, cancellation at every stage, outbound throttle.

All networking is on loopback. A handshake that never completes is made with a
listening socket whose accept queue is full (backlog 0 plus one queued
connection): the kernel then drops further SYNs, so a connect stays in
SYN_SENT until we give up. Timing uses the autojump MockClock.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio

import trionet
from trionet._base._errors import ENET_THROTTLING
from trionet._outbound import _eyeballs
from trionet._processor import table_of


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def stalled_listener() -> Iterator[int]:
    """A 127.0.0.1 port where connects never complete: listen(0) accepts one
    queued connection, which we make, so the kernel drops every later SYN."""
    lst = socket.socket()
    filler = socket.socket()
    try:
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        filler.settimeout(2.0)
        filler.connect(lst.getsockname())
        yield lst.getsockname()[1]
    finally:
        filler.close()
        lst.close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A 127.0.0.1 port that is bound but not listening: connect gets ECONNREFUSED."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
    finally:
        s.close()


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def start_echo(nursery: trio.Nursery, host: str = "127.0.0.1") -> int:
    """An echo server on its own processor (so it does not share our counts)."""
    server_net = trionet.NetProcessor()
    opts = trionet.AcceptOptions(host=host)
    server: trionet.Server = await nursery.start(server_net.serve, echo, opts)
    return server.ports[0]


class RecordingResolver:
    """Answers from a table and records every call."""

    def __init__(self, table: dict[str, list[tuple[int, Any]]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int, int]] = []

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        self.calls.append((host, port, family))
        await trio.lowlevel.checkpoint()
        return self.table[host]


class SlowResolver:
    """Never answers (until cancelled)."""

    def __init__(self) -> None:
        self.started = trio.Event()

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        self.started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class FailingResolver:
    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        await trio.lowlevel.checkpoint()
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def v4(port: int) -> tuple[int, Any]:
    return (socket.AF_INET, ("127.0.0.1", port))


def assert_nothing_open(net: trionet.NetProcessor, fds_before: int) -> None:
    assert open_fds() == fds_before
    assert net.statistics().connections_currently_open == 0
    assert table_of(net).throttle.open == 0


# ------------------------------------------------------------------ basics
async def test_connect_ip_literal_round_trip() -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        conn = await net.connect("127.0.0.1", port)
        assert conn.inbound is False
        assert conn.remote_address == ("127.0.0.1", port)
        assert conn.local_address[0] == "127.0.0.1"
        assert net.statistics().connections_currently_open == 1
        await conn.send_all(b"hello, trionet")
        got = b""
        while len(got) < 14:
            got += await conn.receive_some()
        assert got == b"hello, trionet"
        await conn.aclose()
        stats = net.statistics()
        assert stats.connections_currently_open == 0
        assert (stats.connects_total, stats.connect_failures, stats.connect_timeouts) == (1, 0, 0)
        assert (stats.write_bytes, stats.read_bytes) == (14, 14)
        nursery.cancel_scope.cancel()


async def test_connect_ipv6_literal_bracketed_or_not() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        try:
            port = await start_echo(nursery, "::1")
        except OSError as exc:
            pytest.skip(f"cannot bind ::1: {exc}")
        for host in ("::1", "[::1]"):
            async with await net.connect(host, port) as conn:
                assert conn.remote_address[:2] == ("::1", port)
                await conn.send_all(b"v6")
                assert await conn.receive_some() == b"v6"
        nursery.cancel_scope.cancel()
    assert net.statistics().connects_total == 2


async def test_ip_literal_never_calls_the_resolver() -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        resolver = RecordingResolver({"echo.test": [v4(port)]})
        opts = trionet.ConnectOptions(resolver=resolver)
        async with await net.connect("127.0.0.1", port, opts):
            pass
        assert resolver.calls == []
        async with await net.connect("echo.test", port, opts) as conn:
            assert conn.remote_address == ("127.0.0.1", port)
        assert resolver.calls == [("echo.test", port, 0)]
        nursery.cancel_scope.cancel()


async def test_resolver_is_asked_for_the_requested_family() -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        resolver = RecordingResolver({"echo.test": [(socket.AF_INET6, ("::1", 1, 0, 0)), v4(port)]})
        opts = trionet.ConnectOptions(resolver=resolver, family=socket.AF_INET)
        async with await net.connect("echo.test", port, opts) as conn:
            # the AF_INET6 answer is filtered out even though the resolver gave it
            assert conn.remote_address == ("127.0.0.1", port)
        assert resolver.calls == [("echo.test", port, socket.AF_INET)]
        nursery.cancel_scope.cancel()


async def test_refused_names_the_address_and_keeps_errno() -> None:
    net = trionet.NetProcessor()
    fds = open_fds()
    with refused_port() as port, pytest.raises(trionet.ConnectError) as info:
        await net.connect("127.0.0.1", port)
    err = info.value
    assert isinstance(err, OSError)
    assert err.errno == errno.ECONNREFUSED
    assert isinstance(err.__cause__, ConnectionRefusedError)
    assert str(err) == f"Connection refused: 127.0.0.1:{port}"
    stats = net.statistics()
    assert (stats.connects_total, stats.connect_failures, stats.connect_timeouts) == (1, 1, 0)
    assert_nothing_open(net, fds)


async def test_refused_via_name_names_the_name() -> None:
    net = trionet.NetProcessor()
    with refused_port() as port:
        resolver = RecordingResolver({"db.internal": [v4(port)]})
        with pytest.raises(trionet.ConnectError, match=rf": db\.internal:{port}$") as info:
            await net.connect("db.internal", port, trionet.ConnectOptions(resolver=resolver))
    assert info.value.errno == errno.ECONNREFUSED


async def test_resolve_error_is_chained_to_gaierror() -> None:
    net = trionet.NetProcessor()
    opts = trionet.ConnectOptions(resolver=FailingResolver())
    with pytest.raises(trionet.ResolveError) as info:
        await net.connect("nosuch.test", 80, opts)
    assert isinstance(info.value, trionet.ConnectError)
    assert isinstance(info.value.__cause__, socket.gaierror)
    assert info.value.errno == socket.EAI_NONAME
    assert str(info.value) == "cannot resolve (Name or service not known): nosuch.test:80"
    assert net.statistics().connect_failures == 1


async def test_resolver_with_no_usable_address() -> None:
    net = trionet.NetProcessor()
    opts = trionet.ConnectOptions(resolver=RecordingResolver({"empty.test": []}))
    with pytest.raises(trionet.ResolveError, match=r"^no usable address found: empty\.test:80$"):
        await net.connect("empty.test", 80, opts)


async def test_resolver_returning_garbage_is_a_type_error() -> None:
    net = trionet.NetProcessor()
    opts = trionet.ConnectOptions(resolver=RecordingResolver({"bad.test": [("1.2.3.4", 80)]}))
    with pytest.raises(TypeError, match=r"\('1\.2\.3\.4', 80\)"):
        await net.connect("bad.test", 80, opts)
    assert table_of(net).throttle.open == 0


@pytest.mark.parametrize(
    "item",
    [
        (socket.AF_INET, ("127.0.0.1", "80")),  # a str port
        (socket.AF_INET, ("127.0.0.1", 80, 0, 0)),  # an IPv6 shape for IPv4
        (socket.AF_INET6, ("::1", 80, 0, 0, 0)),  # too long
        (socket.AF_INET6, (b"::1", 80)),  # bytes host
        (socket.AF_UNIX, ("/tmp/x", 0)),
    ],
)
async def test_resolver_answers_must_be_socket_addresses(item: tuple[int, Any]) -> None:
    net = trionet.NetProcessor()
    opts = trionet.ConnectOptions(resolver=RecordingResolver({"bad.test": [item]}))
    with pytest.raises(TypeError, match=r"returned .* for 'bad\.test': expected \(AF_INET"):
        await net.connect("bad.test", 80, opts)
    assert table_of(net).throttle.open == 0


async def test_a_short_ipv6_answer_is_completed() -> None:
    """A resolver may leave flowinfo and scope out of an IPv6 address;
    remote_address then still has getpeername()'s four fields."""
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await net.start_server(
            nursery, lambda conn: trio.lowlevel.checkpoint(), trionet.AcceptOptions(host="::1")
        )
        port = server.ports[0]
        resolver = RecordingResolver({"six.test": [(socket.AF_INET6, ("::1", port))]})
        conn = await net.connect("six.test", port, trionet.ConnectOptions(resolver=resolver))
        assert conn.remote_address == ("::1", port, 0, 0)
        await conn.aclose()
        server.shutdown(0)


# ---------------------------------------------------------- connect timeout
async def test_connect_timeout_message_and_exact_time(autojump_clock: trio.abc.Clock) -> None:
    net = trionet.NetProcessor()
    with stalled_listener() as port:
        fds = open_fds()
        resolver = RecordingResolver({"example.com": [v4(port)]})
        opts = trionet.ConnectOptions(connect_timeout=5.0, resolver=resolver)
        start = trio.current_time()
        with pytest.raises(trionet.ConnectTimeoutError) as info:
            await net.connect("example.com", 80, opts)
        assert trio.current_time() - start == pytest.approx(5.0)
        assert_nothing_open(net, fds)
    err = info.value
    assert str(err) == "connection timed out after 5000 ms: example.com:80"
    assert isinstance(err, TimeoutError)
    assert isinstance(err, trionet.ConnectError)
    assert err.errno == errno.ETIMEDOUT
    stats = net.statistics()
    assert (stats.connects_total, stats.connect_failures, stats.connect_timeouts) == (1, 0, 1)


async def test_connect_timeout_covers_resolution(autojump_clock: trio.abc.Clock) -> None:
    net = trionet.NetProcessor()
    fds = open_fds()
    opts = trionet.ConnectOptions(connect_timeout=0.25, resolver=SlowResolver())
    start = trio.current_time()
    with pytest.raises(trionet.ConnectTimeoutError) as info:
        await net.connect("slow.test", 443, opts)
    assert trio.current_time() - start == pytest.approx(0.25)
    assert str(info.value) == "connection timed out after 250 ms: slow.test:443"
    assert_nothing_open(net, fds)


# ----------------------------------------------------------- cancellation
async def test_cancel_during_resolution_leaks_nothing(autojump_clock: trio.abc.Clock) -> None:
    net = trionet.NetProcessor()
    fds = open_fds()
    resolver = SlowResolver()
    opts = trionet.ConnectOptions(resolver=resolver, connect_timeout=None)
    with trio.move_on_after(3.0) as scope:
        await net.connect("slow.test", 80, opts)
    assert scope.cancelled_caught and resolver.started.is_set()
    assert_nothing_open(net, fds)
    stats = net.statistics()
    assert (stats.connects_total, stats.connect_failures, stats.connect_timeouts) == (1, 0, 0)


async def test_cancel_mid_handshake_closes_the_socket(autojump_clock: trio.abc.Clock) -> None:
    net = trionet.NetProcessor()
    with stalled_listener() as port:
        fds = open_fds()
        opened: list[trio.socket.SocketType] = []

        def factory(family: int) -> trio.socket.SocketType:
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            opened.append(sock)
            return sock

        opts = trionet.ConnectOptions(connect_timeout=None, socket_factory=factory)
        with trio.move_on_after(7.0) as scope:
            await net.connect("127.0.0.1", port, opts)
        assert scope.cancelled_caught
        assert len(opened) == 1 and opened[0].fileno() == -1  # it was opened and closed
        assert_nothing_open(net, fds)


# --------------------------------------------------------------- throttle
async def test_outbound_connections_count_toward_max_connections() -> None:
    net = trionet.NetProcessor(max_connections=2)
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        first = await net.connect("127.0.0.1", port)
        second = await net.connect("127.0.0.1", port)
        with pytest.raises(trionet.ThrottledError) as info:
            await net.connect("127.0.0.1", port)
        assert info.value.errno == ENET_THROTTLING
        assert str(info.value) == (
            f"too many connections (2 open), not connecting: 127.0.0.1:{port}"
        )
        stats = net.statistics()
        assert stats.connections_throttled_out == 1
        assert stats.connections_currently_open == 2
        assert stats.connects_total == 2  # the throttled call is not an attempt
        await first.aclose()
        third = await net.connect("127.0.0.1", port)  # the freed slot is usable
        assert net.statistics().connections_currently_open == 2
        await second.aclose()
        await third.aclose()
        assert net.statistics().connections_currently_open == 0
        nursery.cancel_scope.cancel()


async def test_pending_connect_holds_a_slot(autojump_clock: trio.abc.Clock) -> None:
    net = trionet.NetProcessor(max_connections=1)
    resolver = SlowResolver()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net.connect, "slow.test", 80, trionet.ConnectOptions(resolver=resolver))
        await resolver.started.wait()
        with pytest.raises(trionet.ThrottledError):
            await net.connect("127.0.0.1", 80)
        nursery.cancel_scope.cancel()
    assert table_of(net).throttle.open == 0
    assert net.statistics().connections_throttled_out == 1


# ------------------------------------------------------------ connection
async def test_timeouts_from_options_and_processor_default() -> None:
    net = trionet.NetProcessor(default_inactivity_timeout=300.0)
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        opts = trionet.ConnectOptions(inactivity_timeout=10.0, active_timeout=60.0)
        async with await net.connect("127.0.0.1", port, opts) as conn:
            assert conn.inactivity_timeout == 10.0
            assert conn.active_timeout == pytest.approx(60.0, abs=1.0)
        async with await net.connect("127.0.0.1", port) as conn:
            assert conn.inactivity_timeout == 300.0
            assert conn.active_timeout is None
        assert net.statistics().default_inactivity_timeout_applied == 1
        nursery.cancel_scope.cancel()


async def test_inactivity_timeout_ends_an_outbound_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        conn = await net.connect("127.0.0.1", port, trionet.ConnectOptions(inactivity_timeout=2.0))
        start = trio.current_time()
        with conn.enforce_timeouts():
            await conn.receive_some()  # the echo server sends nothing unasked
        assert trio.current_time() - start == pytest.approx(2.0)
        assert conn.timed_out == "inactivity" and conn.closed
        stats = net.statistics()
        assert (stats.inactivity_timeouts, stats.connections_currently_open) == (1, 0)
        nursery.cancel_scope.cancel()


async def test_local_address_and_port_are_bound() -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        opts = trionet.ConnectOptions(local_address="127.0.0.1")
        async with await net.connect("127.0.0.1", port, opts) as conn:
            assert conn.local_address[0] == "127.0.0.1"
        with socket.socket() as probe:  # find a free local port to bind
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
        opts = trionet.ConnectOptions(local_address="127.0.0.1", local_port=local_port)
        async with await net.connect("127.0.0.1", port, opts) as conn:
            assert conn.local_address == ("127.0.0.1", local_port)
        nursery.cancel_scope.cancel()


async def test_bind_failure_is_a_connect_error() -> None:
    net = trionet.NetProcessor()
    fds = open_fds()
    with socket.socket() as taken, refused_port() as port:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        opts = trionet.ConnectOptions(local_address="127.0.0.1", local_port=taken.getsockname()[1])
        fds = open_fds()
        with pytest.raises(trionet.ConnectError) as info:
            await net.connect("127.0.0.1", port, opts)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f"Address already in use: 127.0.0.1:{port}"
        assert_nothing_open(net, fds)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("host", "port", "options", "exc", "match"),
    [
        ("", 80, None, TypeError, "host=''"),
        (b"x", 80, None, TypeError, "host=b'x'"),
        ("h", "80", None, TypeError, "port='80'"),
        ("h", True, None, TypeError, "port=True"),
        ("h", 0, None, ValueError, "port=0"),
        ("h", 65536, None, ValueError, "port=65536"),
        ("h", 80, {"connect_timeout": 1}, TypeError, "options="),
        ("::1", 80, trionet.ConnectOptions(family=socket.AF_INET), ValueError, "host='::1'"),
        (
            "127.0.0.1",
            80,
            trionet.ConnectOptions(local_address="::1"),
            ValueError,
            "host='127.0.0.1' is not an address of the family AF_INET6 that "
            "ConnectOptions.local_address='::1' asks for",
        ),
    ],
)
async def test_bad_arguments(host: Any, port: Any, options: Any, exc: type, match: str) -> None:
    net = trionet.NetProcessor()
    with pytest.raises(exc, match=match):
        await net.connect(host, port, options)
    assert table_of(net).throttle.open == 0


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), 10**400])
def test_connect_timeout_must_be_positive_and_finite(timeout: float) -> None:
    with pytest.raises(ValueError, match=f"ConnectOptions.connect_timeout={timeout!r}"):
        trionet.ConnectOptions(connect_timeout=timeout)


def test_family_and_local_address_must_agree_at_construction() -> None:
    with pytest.raises(ValueError) as info:
        trionet.ConnectOptions(family=socket.AF_INET6, local_address="127.0.0.1")
    assert "ConnectOptions.family=<AddressFamily.AF_INET6: 10>" in str(info.value)
    assert "local_address='127.0.0.1'" in str(info.value)


# ---------------------------------------------------------- happy eyeballs
A6 = (socket.AF_INET6, ("2001:db8::1", 80, 0, 0))
B6 = (socket.AF_INET6, ("2001:db8::2", 80, 0, 0))
A4 = (socket.AF_INET, ("192.0.2.1", 80))
B4 = (socket.AF_INET, ("192.0.2.2", 80))


class FakeNet:
    """A fake connect layer: each sockaddr has a scripted outcome
    (seconds until it connects, or until it fails with an errno, or never)."""

    def __init__(self, script: dict[Any, tuple[float, int | None]]) -> None:
        self.script = script
        self.opened: list[FakeSocket] = []
        self.log: list[tuple[float, str, str]] = []

    def factory(self, family: int) -> FakeSocket:
        sock = FakeSocket(self, family)
        self.opened.append(sock)
        return sock


class FakeSocket:
    def __init__(self, net: FakeNet, family: int) -> None:
        self.net = net
        self.family = family
        self.closed = False
        self.target: str | None = None

    async def connect(self, sockaddr: Any) -> None:
        self.target = sockaddr[0]
        self.net.log.append((trio.current_time(), "start", sockaddr[0]))
        after, code = self.net.script.get(sockaddr[0], (float("inf"), None))
        await trio.sleep(after)
        if code is not None:
            self.net.log.append((trio.current_time(), "fail", sockaddr[0]))
            raise OSError(code, os.strerror(code))
        self.net.log.append((trio.current_time(), "up", sockaddr[0]))

    def close(self) -> None:
        self.closed = True


async def no_prepare(sock: Any) -> None:
    await trio.lowlevel.checkpoint()


async def race(fake: FakeNet, addresses: list[Any], delay: float | None = 0.25) -> Any:
    return await _eyeballs.happy_eyeballs(
        addresses,
        target="dual.test:80",
        delay=delay,
        prepare=no_prepare,
        socket_factory=fake.factory,
    )


def test_interleave_alternates_families_starting_with_the_first() -> None:
    assert _eyeballs.interleave([A6, B6, A4, B4]) == [A6, A4, B6, B4]
    assert _eyeballs.interleave([A4, A6, B6]) == [A4, A6, B6]
    assert _eyeballs.interleave([A4, B4, A4]) == [A4, B4]  # duplicates dropped
    assert _eyeballs.interleave([]) == []


async def test_attempts_are_staggered_and_first_success_wins(
    autojump_clock: trio.abc.Clock,
) -> None:
    # A6 and A4 hang; B6 (third in RFC 8305 order) connects 0.1 s after it starts.
    fake = FakeNet({"2001:db8::2": (0.1, None)})
    sock, address = await race(fake, [A6, B6, A4, B4])
    assert address == B6 and sock.target == "2001:db8::2"
    assert fake.log == [
        (0.0, "start", "2001:db8::1"),
        (0.25, "start", "192.0.2.1"),
        (0.5, "start", "2001:db8::2"),
        (pytest.approx(0.6), "up", "2001:db8::2"),
    ]
    # B4 never started (the race was over at 0.6 < 0.75); the losers are closed.
    assert len(fake.opened) == 3
    assert [s.closed for s in fake.opened] == [True, True, False]


async def test_a_failure_starts_the_next_attempt_at_once(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeNet({"2001:db8::1": (0.05, errno.ENETUNREACH), "192.0.2.1": (0.03, None)})
    _, address = await race(fake, [A6, A4])
    assert address == A4
    assert fake.log == [
        (0.0, "start", "2001:db8::1"),
        (pytest.approx(0.05), "fail", "2001:db8::1"),
        (pytest.approx(0.05), "start", "192.0.2.1"),  # not at 0.25
        (pytest.approx(0.08), "up", "192.0.2.1"),
    ]
    assert [s.closed for s in fake.opened] == [True, False]


async def test_delay_none_tries_one_address_at_a_time(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeNet({"2001:db8::1": (3.0, errno.ETIMEDOUT), "192.0.2.1": (1.0, None)})
    _, address = await race(fake, [A6, A4], delay=None)
    assert address == A4
    assert [(t, what) for t, what, _ in fake.log] == [
        (0.0, "start"),
        (3.0, "fail"),
        (3.0, "start"),
        (4.0, "up"),
    ]


async def test_delay_zero_starts_everything_at_once(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeNet({"192.0.2.2": (0.5, None)})
    _, address = await race(fake, [A6, B6, A4, B4], delay=0)
    assert address == B4
    assert [t for t, what, _ in fake.log if what == "start"] == [0.0] * 4
    assert [s.closed for s in fake.opened] == [True, True, True, False]


async def test_all_attempts_fail(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeNet(
        {
            "2001:db8::1": (0.1, errno.ENETUNREACH),
            "192.0.2.1": (0.1, errno.ECONNREFUSED),
        }
    )
    with pytest.raises(trionet.ConnectError) as info:
        await race(fake, [A6, A4])
    err = info.value
    assert str(err) == (
        "all 2 attempts failed ([2001:db8::1]:80: Network is unreachable; "
        "192.0.2.1:80: Connection refused): dual.test:80"
    )
    assert err.errno == errno.ENETUNREACH  # errnos differ: the first attempt's
    assert isinstance(err.__cause__, ExceptionGroup)
    assert [e.errno for e in err.__cause__.exceptions] == [errno.ENETUNREACH, errno.ECONNREFUSED]
    assert all(s.closed for s in fake.opened)


async def test_cancel_between_attempts_closes_every_socket(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = FakeNet({})  # every attempt hangs
    with trio.move_on_after(0.6):
        await race(fake, [A6, B6, A4, B4])
    assert [t for t, _, _ in fake.log] == [0.0, 0.25, 0.5]
    assert len(fake.opened) == 3 and all(s.closed for s in fake.opened)


async def test_cancel_right_after_a_win_closes_the_winner(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeNet({"2001:db8::1": (1.0, None)})
    with trio.move_on_after(1.0):  # the deadline and the success coincide
        await race(fake, [A6])
    assert all(s.closed for s in fake.opened)


async def test_real_sockets_a_stalled_address_loses_to_the_next(
    autojump_clock: trio.abc.Clock,
) -> None:
    net = trionet.NetProcessor()
    opened: list[trio.socket.SocketType] = []

    winner_fd: list[int] = []

    def factory(family: int) -> trio.socket.SocketType:
        opened.append(trio.socket.socket(family, socket.SOCK_STREAM))
        winner_fd[:] = [opened[-1].fileno()]
        return opened[-1]

    fds = open_fds()
    async with trio.open_nursery() as nursery:
        good = await start_echo(nursery)
        with stalled_listener() as stalled:
            resolver = RecordingResolver({"two.test": [v4(stalled), v4(good)]})
            start = trio.current_time()
            opts = trionet.ConnectOptions(
                resolver=resolver, happy_eyeballs_delay=0.25, socket_factory=factory
            )
            conn = await net.connect("two.test", good, opts)
            assert trio.current_time() - start == pytest.approx(0.25)
            assert conn.remote_address == ("127.0.0.1", good)
            assert len(opened) == 2
            assert opened[0].fileno() == -1  # the stalled attempt was closed
            # The winner's descriptor became the connection's (its trio object
            # handed it over: the connection's I/O runs on the stdlib socket).
            assert opened[1].fileno() == -1 and conn.socket.fileno() == winner_fd[0]
            await conn.send_all(b"x")
            assert await conn.receive_some() == b"x"
            await conn.aclose()
        nursery.cancel_scope.cancel()
    assert_nothing_open(net, fds)


async def test_unsupported_option_stops_the_race_and_closes_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = FakeNet({})  # the first attempt hangs
    calls = 0

    async def prepare(sock: Any) -> None:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        if calls == 2:
            raise trionet.UnsupportedOptionError("SocketOptions.mark: this platform has no SO_MARK")

    with pytest.raises(trionet.UnsupportedOptionError, match="SO_MARK"):
        await _eyeballs.happy_eyeballs(
            [A6, A4], target="x:80", delay=0.25, prepare=prepare, socket_factory=fake.factory
        )
    assert len(fake.opened) == 2 and all(s.closed for s in fake.opened)


async def test_a_failed_connect_wakes_a_paused_accept_loop() -> None:
    # max_connections=1 and a connect() in progress holds the only slot, so the
    # server's accept loop pauses; when the connect ends, the loop resumes.
    net = trionet.NetProcessor(max_connections=1)
    handled = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        handled.set()

    resolver = SlowResolver()
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(
            net.serve, handler, trionet.AcceptOptions(host="127.0.0.1")
        )
        pending = trio.CancelScope()

        async def pending_connect() -> None:
            with pending:
                await net.connect("slow.test", 80, trionet.ConnectOptions(resolver=resolver))

        nursery.start_soon(pending_connect)
        await resolver.started.wait()
        with socket.create_connection(("127.0.0.1", server.ports[0]), timeout=2.0):
            await trio.sleep(0.05)
            assert not handled.is_set()  # paused: the slot is the connect's
            pending.cancel()
            with trio.fail_after(5):
                await handled.wait()
        assert net.statistics().total_accepts == 1
        nursery.cancel_scope.cancel()


async def test_nothing_is_read_until_the_caller_reads() -> None:
    async def greeter(conn: trionet.Connection) -> None:
        await conn.send_all(b"220 hello\r\n")
        await conn.receive_some()

    server_net = trionet.NetProcessor()
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            server_net.serve, greeter, trionet.AcceptOptions(host="127.0.0.1")
        )
        async with await net.connect("127.0.0.1", server.ports[0]) as conn:
            await trio.sleep(0.05)  # the greeting is in our receive buffer by now
            assert (conn.bytes_received, net.statistics().calls_to_read) == (0, 0)
            assert await conn.receive_some() == b"220 hello\r\n"
            assert net.statistics().calls_to_read == 1
        nursery.cancel_scope.cancel()


async def test_connect_timeout_covers_every_attempt(autojump_clock: trio.abc.Clock) -> None:
    net = trionet.NetProcessor()
    opened: list[trio.socket.SocketType] = []

    def factory(family: int) -> trio.socket.SocketType:
        opened.append(trio.socket.socket(family, socket.SOCK_STREAM))
        return opened[-1]

    with stalled_listener() as one, stalled_listener() as two:
        fds = open_fds()
        resolver = RecordingResolver({"stuck.test": [v4(one), v4(two)]})
        opts = trionet.ConnectOptions(
            resolver=resolver, connect_timeout=1.0, socket_factory=factory
        )
        start = trio.current_time()
        with pytest.raises(
            trionet.ConnectTimeoutError, match=r"^connection timed out after 1000 ms"
        ):
            await net.connect("stuck.test", 80, opts)
        assert trio.current_time() - start == pytest.approx(1.0)
        assert len(opened) == 2 and all(s.fileno() == -1 for s in opened)
        assert_nothing_open(net, fds)


async def test_localhost_with_the_default_resolver() -> None:
    # "localhost" may resolve to ::1 and 127.0.0.1; the server is on 127.0.0.1
    # only, so a ::1 attempt is refused and the race moves on.
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        port = await start_echo(nursery)
        async with await net.connect("localhost", port) as conn:
            assert conn.remote_address == ("127.0.0.1", port)
            await conn.send_all(b"ok")
            assert await conn.receive_some() == b"ok"
        nursery.cancel_scope.cancel()
    assert net.statistics().connect_failures == 0
