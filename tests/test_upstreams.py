"""Several upstreams: the balancer and passive health (I/O-free, on explicit
times), then TcpProxy failing over between real loopback upstreams -- one
refusing, one blackholed (a listener whose backlog is full, so SYNs go
unanswered and the connect times out) and one good -- on trio's MockClock."""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

import trionet
from trionet._apps._upstreams import MAX_FAIL_BACKOFF, UpstreamPool

# ------------------------------------------------------------ the balancer
A, B, C = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


def labels(plan: list[object]) -> list[str]:
    return [t.label for t in plan]  # type: ignore[attr-defined]


def test_round_robin_rotates_the_first_choice() -> None:
    pool = UpstreamPool([A, B, C], "round-robin", 3, 10.0)
    firsts = [labels(pool.plan(0.0)) for _ in range(4)]
    # Each session starts at the next target, the others following as failover.
    assert firsts == [
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
        ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"],
        ["10.0.0.3:80", "10.0.0.1:80", "10.0.0.2:80"],
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"],
    ]


def test_least_conn_prefers_fewest_open_ties_in_turn() -> None:
    pool = UpstreamPool([A, B, C], "least-conn", 3, 10.0)
    a, b, c = pool.targets
    pool.connected(a)
    pool.connected(a)
    pool.connected(b)
    assert labels(pool.plan(0.0))[0] == "10.0.0.3:80"  # c: 0 open
    pool.connected(c)
    # b and c have 1 open, a 2: the tie goes by rotation, a comes last.
    first = [labels(pool.plan(0.0)) for _ in range(2)]
    assert {p[0] for p in first} == {"10.0.0.2:80", "10.0.0.3:80"}
    assert all(p[-1] == "10.0.0.1:80" for p in first)
    pool.closed(a)
    pool.closed(a)
    assert labels(pool.plan(0.0))[0] == "10.0.0.1:80"


def test_marked_down_after_max_fails_and_probed_after_backoff() -> None:
    pool = UpstreamPool([A, B], "round-robin", 3, 10.0)
    a, _ = pool.targets
    assert [pool.failed(a, t) for t in (1.0, 2.0, 3.0)] == [False, False, True]
    assert a.down and pool.statistics()[0].down and pool.statistics()[0].downs == 1
    # Skipped for the back-off, whatever the rotation says.
    assert [labels(pool.plan(12.9)) for _ in range(2)] == [["10.0.0.2:80"]] * 2
    # Due at 3 + 10: the next session probes it first, the others do not.
    assert labels(pool.plan(13.0)) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert labels(pool.plan(13.5)) == ["10.0.0.2:80"]
    # The probe fails: down again for twice as long.
    assert pool.failed(a, 13.1) is False
    assert a.backoff == 20.0
    assert labels(pool.plan(33.0)) == ["10.0.0.2:80"]
    assert labels(pool.plan(33.1))[0] == "10.0.0.1:80"
    # ...and the next probe succeeds: up, back-off forgotten.
    assert pool.connected(a) is True
    assert not a.down and a.backoff == 0.0 and a.consecutive_failures == 0
    assert pool.failed(a, 40.0) is False  # one failure is not max_fails


def test_backoff_growth_is_capped() -> None:
    pool = UpstreamPool([A], "round-robin", 1, 10.0)
    (a,) = pool.targets
    now = 0.0
    pool.failed(a, now)
    seen = []
    for _ in range(8):
        now = a.retry_at
        assert labels(pool.plan(now)) == ["10.0.0.1:80"]
        pool.failed(a, now)
        seen.append(a.backoff)
    assert seen == [20.0, 40.0, 80.0, 160.0, MAX_FAIL_BACKOFF, 300.0, 300.0, 300.0]


def test_success_resets_the_failure_run() -> None:
    pool = UpstreamPool([A], "round-robin", 3, 10.0)
    (a,) = pool.targets
    pool.failed(a, 1.0)
    pool.failed(a, 2.0)
    pool.connected(a)
    pool.closed(a)
    assert pool.failed(a, 3.0) is False and pool.failed(a, 4.0) is False
    assert pool.failed(a, 5.0) is True


def test_all_down_tries_all_least_recently_failed_first() -> None:
    pool = UpstreamPool([A, B, C], "round-robin", 1, 10.0)
    a, b, c = pool.targets
    pool.failed(b, 1.0)
    pool.failed(c, 2.0)
    pool.failed(a, 3.0)
    # Every target down, none due: not a refusal, all of them in order.
    assert labels(pool.plan(5.0)) == ["10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"]


# ---------------------------------------------------------- on the network
async def _echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


def _refusing_port() -> int:
    """A loopback port nothing listens on (bound, never listening: refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback listener whose accept queue is full: further SYNs are
    dropped, so a connect to it neither succeeds nor fails until its timeout."""
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(16):
            s = socket.socket()
            s.setblocking(False)
            fillers.append(s)
            if s.connect_ex(("127.0.0.1", port)) != errno.EINPROGRESS:
                continue  # connected at once: the queue had room
            # Not connected within 0.5 s (loopback answers in microseconds):
            # the queue is full and the SYN was dropped.
            _, writable, _ = select.select([], [s], [], 0.5)
            if not writable:
                break
        else:
            pytest.skip("could not fill a listen backlog on this kernel")
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def _session(port: int, payload: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        await stream.send_eof()
        got = b""
        while chunk := await stream.receive_some():
            got += chunk
        return got


async def test_failover_refused_blackholed_good(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.proxy")
    caplog.set_level(logging.INFO, logger="trionet.access")
    net = trionet.NetProcessor(access_log=True)
    with blackhole() as dark:
        async with trio.open_nursery() as nursery:
            good: trionet.Server = await nursery.start(
                net.serve, _echo, trionet.AcceptOptions(host="127.0.0.1")
            )
            targets = [
                ("127.0.0.1", _refusing_port()),
                ("127.0.0.1", dark),
                ("127.0.0.1", good.ports[0]),
            ]
            opts = trionet.ConnectOptions(connect_timeout=9.0)
            proxy = trionet.TcpProxy(net, targets, options=opts)
            front: trionet.Server = await nursery.start(
                net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1")
            )
            results = []
            for i in range(9):
                start = trio.current_time()
                results.append(await _session(front.ports[0], b"s%d" % i))
                # Within the one connect timeout, however the attempts went.
                assert trio.current_time() - start < 9.0
            front.shutdown(0)
            good.shutdown(0)
    assert results == [b"s%d" % i for i in range(9)]  # every session succeeded
    stats = proxy.statistics()
    refused, dark_stats, good_stats = stats.upstreams
    assert good_stats.sessions == 9 and good_stats.failures == 0 and not good_stats.down
    # Both bad targets were marked down after 3 failures each, then skipped.
    assert (refused.failures, refused.down, refused.sessions) == (3, True, 0)
    assert (dark_stats.failures, dark_stats.down, dark_stats.sessions) == (3, True, 0)
    assert stats.upstream_failures == 0 and stats.failovers == 6
    assert net.statistics().connect_timeouts == 3  # the blackholed attempts
    # The warning log: each bad target named with its error, once (the rest
    # of its failures within the 10 s rate limit are counted, not repeated).
    failovers = [
        r for r in caplog.records if r.levelno == logging.WARNING and hasattr(r, "upstream")
    ]
    assert sorted(r.upstream for r in failovers) == sorted([refused.target, dark_stats.target])  # type: ignore[attr-defined]
    assert all(isinstance(r.attempt, int) and r.error for r in failovers)  # type: ignore[attr-defined]
    dark_errors = [r.error for r in failovers if r.upstream == dark_stats.target]  # type: ignore[attr-defined]
    assert dark_errors == ["timed out"]
    # The session log: every failover, session by session (the target that
    # served it and how many were tried).
    sessions = [
        r for r in caplog.records if r.name == "trionet.access" and r.listen_port == front.ports[0]
    ]  # type: ignore[attr-defined]
    assert len(sessions) == 9
    assert all(r.upstream == good_stats.target and r.end == "eof" for r in sessions)  # type: ignore[attr-defined]
    assert sum(r.attempts - 1 for r in sessions) == 6  # type: ignore[attr-defined]
    assert any("attempts=3" in r.getMessage() for r in sessions)
    marked = [r.getMessage() for r in caplog.records if "marked down" in r.getMessage()]
    assert len(marked) == 2


async def test_round_robin_spreads_sessions_over_real_upstreams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        # Each upstream on its own processor, to count what it accepted.
        nets = [trionet.NetProcessor() for _ in range(3)]
        ups = [
            await nursery.start(n.serve, _echo, trionet.AcceptOptions(host="127.0.0.1"))
            for n in nets
        ]
        proxy = trionet.TcpProxy(net, [("127.0.0.1", u.ports[0]) for u in ups])
        front = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
        for i in range(9):
            assert await _session(front.ports[0], b"x%d" % i) == b"x%d" % i
        accepted = [n.statistics().total_accepts for n in nets]
        for server in (front, *ups):
            server.shutdown(0)
    assert accepted == [3, 3, 3]  # each upstream server saw 3 connections
    assert [u.sessions for u in proxy.statistics().upstreams] == [3, 3, 3]


async def test_least_conn_avoids_the_busy_upstream(autojump_clock: trio.testing.MockClock) -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        ups = [
            await nursery.start(net.serve, _echo, trionet.AcceptOptions(host="127.0.0.1"))
            for _ in range(2)
        ]
        targets = [("127.0.0.1", u.ports[0]) for u in ups]
        proxy = trionet.TcpProxy(net, targets, balance="least-conn")
        front = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
        # A long session holds the first upstream...
        held = await trio.open_tcp_stream("127.0.0.1", front.ports[0])
        await held.send_all(b"held")
        assert await held.receive_some() == b"held"
        assert [u.open for u in proxy.statistics().upstreams] == [1, 0]
        # ...so every short session meanwhile goes to the second one
        # (round-robin would have sent every other one to the first).
        for i in range(4):
            assert await _session(front.ports[0], b"q%d" % i) == b"q%d" % i
        assert [u.sessions for u in proxy.statistics().upstreams] == [1, 4]
        await held.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert [u.open for u in proxy.statistics().upstreams] == [0, 0]
        for server in (front, *ups):
            server.shutdown(0)


async def test_backoff_then_probe_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        good = await nursery.start(net.serve, _echo, trionet.AcceptOptions(host="127.0.0.1"))
        bad = ("127.0.0.1", _refusing_port())
        proxy = trionet.TcpProxy(
            net, [bad, ("127.0.0.1", good.ports[0])], max_fails=2, fail_backoff=10.0
        )
        front = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))

        async def failures_after_sessions(n: int) -> int:
            for _ in range(n):
                assert await _session(front.ports[0], b"ok") == b"ok"
            return proxy.statistics().upstreams[0].failures

        # Round-robin: sessions 1 and 3 start at the bad target (2 failures: down).
        assert await failures_after_sessions(4) == 2
        assert proxy.statistics().upstreams[0].down
        marked_at = trio.current_time()
        # Skipped for the whole back-off...
        assert await failures_after_sessions(6) == 2
        await trio.sleep_until(marked_at + 10.0)
        # ...then one session probes it (fails over), and it is skipped again
        # for twice as long.
        assert await failures_after_sessions(3) == 3
        await trio.sleep(19.0)
        assert await failures_after_sessions(2) == 3
        await trio.sleep(1.5)
        assert await failures_after_sessions(1) == 4
        assert proxy.statistics().upstream_failures == 0
        for server in (front, good):
            server.shutdown(0)


async def test_all_down_still_serves(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Two targets, both refused 3 times (down); one comes back at once: the
    # next session still tries them (all down: tried anyway) and succeeds.
    caplog.set_level(logging.INFO, logger="trionet.proxy")
    net = trionet.NetProcessor()
    port = _refusing_port()
    proxy = trionet.TcpProxy(net, [("127.0.0.1", port), ("127.0.0.1", _refusing_port())])
    async with trio.open_nursery() as nursery:
        front = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
        for _ in range(3):
            # Nothing sent (data left unread would make the close a reset).
            assert await _session(front.ports[0], b"") == b""
        assert [u.down for u in proxy.statistics().upstreams] == [True, True]
        lost = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(lost) == 3
        assert all("no upstream connection after 2 attempt(s): " in m for m in lost)
        revived = await nursery.start(
            net.serve, _echo, trionet.AcceptOptions(host="127.0.0.1", port=port)
        )
        assert await _session(front.ports[0], b"back") == b"back"
        stats = proxy.statistics()
        assert stats.upstreams[0].down is False and stats.upstreams[0].sessions == 1
        assert stats.upstream_failures == 3
        for server in (front, revived):
            server.shutdown(0)


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"host": [], "port": None}, ValueError, r"TcpProxy.host=\[\]: no upstream target"),
        ({"host": [("a", 1), ("a", 1)]}, ValueError, r"host\[1\]=\('a', 1\): the same target"),
        ({"host": [("a", 0)]}, ValueError, r"TcpProxy.host\[0\].port=0"),
        ({"host": [("a\x00b", 1)]}, ValueError, r"TcpProxy.host\[0\]='a\\x00b'"),
        ({"host": ["a:1"]}, TypeError, r"TcpProxy.host\[0\]='a:1': expected a \(host, port\)"),
        ({"host": [("a", 1)], "port": 80}, TypeError, r"TcpProxy.host=.*no separate port=80"),
        ({"host": "a", "port": None}, ValueError, r"TcpProxy.port=None"),
        ({"host": "a", "port": 1, "balance": "random"}, ValueError, r"balance='random'"),
        ({"host": "a", "port": 1, "max_fails": 0}, ValueError, r"max_fails=0"),
        ({"host": "a", "port": 1, "fail_backoff": 0}, ValueError, r"fail_backoff=0"),
    ],
)
def test_bad_targets_refused(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        trionet.TcpProxy(trionet.NetProcessor(), **kwargs)  # type: ignore[arg-type]
