"""Connection-rate limits: the token buckets alone (exact numbers), then
through the accept loop on MockClock, then once on the real clock."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import urllib.request

import pytest
import trio
import trio.testing

import trionet
from trionet._apps._cli import main, parse
from trionet._core._rate import AcceptRate, TokenBucket
from trionet._processor import accept_policy_of

from .conftest import start_server
from .running import Running, echo_roundtrip


# ------------------------------------------------------------------ buckets
def test_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(50.0, 200, now=0.0)
    assert [bucket.take(0.0) for _ in range(201)] == [True] * 200 + [False]
    assert bucket.delay(0.0) == pytest.approx(0.02)
    assert not bucket.take(0.019)
    assert bucket.take(0.02) and not bucket.take(0.02)
    # One second later: exactly 50 more, not 51.
    assert sum(bucket.take(1.02) for _ in range(60)) == 50
    # Idle for a minute: the bucket holds its burst, no more.
    assert sum(bucket.take(61.0) for _ in range(1000)) == 200


def test_bucket_fractional_rate_and_clock_going_back() -> None:
    bucket = TokenBucket(0.5, 1, now=10.0)
    assert bucket.take(10.0) and not bucket.take(10.0)
    assert bucket.delay(11.0) == pytest.approx(1.0)
    assert not bucket.take(9.0)  # an earlier time adds nothing
    assert bucket.take(12.0)


def test_refusal_takes_no_token() -> None:
    rate = AcceptRate(rate=1.0, burst=1, per_client_rate=0.1, per_client_burst=1)
    assert rate.admit("192.0.2.1", 0.0) is None
    assert rate.admit("192.0.2.2", 0.0) == "rate"  # the processor's bucket is empty
    # 192.0.2.2's own bucket was not spent by the refused attempt.
    assert rate.admit("192.0.2.2", 1.0) is None
    assert rate.admit("192.0.2.2", 2.0) == "client rate"
    # ... nor the processor's by that refusal: it is there for another client.
    assert rate.admit("192.0.2.3", 2.0) is None


def test_per_client_isolation_and_one_identity() -> None:
    rate = AcceptRate(rate=None, burst=1, per_client_rate=2.0, per_client_burst=3)
    assert [rate.admit("192.0.2.1", 0.0) for _ in range(4)] == [None] * 3 + ["client rate"]
    assert rate.admit("::ffff:192.0.2.1", 0.0) == "client rate"  # the same client
    assert [rate.admit("192.0.2.9", 0.0) for _ in range(3)] == [None] * 3
    assert rate.admit(None, 0.0) is None  # no address (Unix socket): no client bucket
    assert rate.pause_for(0.0) == 0.0  # no processor-wide limit
    assert rate.admit("192.0.2.1", 0.5) is None  # 2/s: one token after 0.5 s


def test_exempt_networks_get_no_bucket() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8")]
    rate = AcceptRate(rate=None, burst=1, per_client_rate=1.0, per_client_burst=1, exempt=nets)
    assert all(rate.admit("10.1.2.3", 0.0) is None for _ in range(100))
    assert rate.buckets == {}
    assert rate.admit("192.0.2.1", 0.0) is None
    assert rate.admit("192.0.2.1", 0.0) == "client rate"


def test_client_table_is_bounded() -> None:
    rate = AcceptRate(rate=None, burst=1, per_client_rate=1.0, per_client_burst=2, max_clients=64)
    # A hostile population: 10,000 addresses, each limited (bucket not full).
    for i in range(10_000):
        assert rate.admit(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", 0.0) is None
        assert len(rate.buckets) <= 64
    # Buckets that refilled are dropped before limited ones.
    rate = AcceptRate(rate=None, burst=1, per_client_rate=1.0, per_client_burst=1, max_clients=4)
    rate.admit("192.0.2.1", 0.0)  # oldest, but full again by t=5
    for host in ("192.0.2.2", "192.0.2.3", "192.0.2.4"):
        rate.admit(host, 4.5)
    rate.admit("192.0.2.5", 5.0)
    assert set(rate.buckets) == {"192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"}
    assert rate.admit("192.0.2.4", 5.0) == "client rate"  # still limited: kept


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_accept_rate": 0}, "NetProcessor.max_accept_rate=0: must be a positive"),
        ({"max_accept_rate": -1.0}, "max_accept_rate=-1.0"),
        ({"max_accept_rate": math.inf}, "max_accept_rate=inf"),
        ({"max_accept_rate": math.nan}, "max_accept_rate=nan"),
        ({"max_accept_rate": True}, "max_accept_rate=True"),
        ({"max_accept_rate": "100"}, "max_accept_rate='100'"),
        ({"max_accept_rate": 10**400}, "max_accept_rate=1000"),
        ({"max_accept_rate": 5, "accept_burst": 0}, "accept_burst=0: must be >= 1"),
        ({"max_accept_rate": 5, "accept_burst": 2.5}, "accept_burst=2.5: must be an int"),
        ({"accept_burst": 10}, "accept_burst=10: needs max_accept_rate"),
        ({"per_client_max_accept_rate": 0.0}, "per_client_max_accept_rate=0.0"),
        ({"per_client_accept_burst": 3}, "per_client_accept_burst=3: needs per_client_max"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        trionet.NetProcessor(**kwargs)  # type: ignore[arg-type]
    assert needle in str(info.value)


def test_settings_read_back() -> None:
    net = trionet.NetProcessor(max_accept_rate=2.5, per_client_max_accept_rate=1)
    assert (net.max_accept_rate, net.per_client_max_accept_rate) == (2.5, 1.0)
    assert trionet.NetProcessor().max_accept_rate is None


# ------------------------------------------------- through the accept loop
async def _hello(conn: trionet.Connection) -> None:
    await conn.send_all(b"hi")


async def _outcome(port: int, source: str | None = None) -> bytes:
    """Connect (from ``source`` if given) and return what the server sent:
    b"hi" if admitted, b"" if closed at once."""
    sock = trio.socket.socket()
    if source is not None:
        await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    async with trio.SocketStream(sock) as stream:
        return await stream.receive_some(2)


async def test_close_mode_burst_then_rate(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trionet.access")
    caplog.set_level(logging.DEBUG, logger="trionet.server")  # last: the handler's level
    net = trionet.NetProcessor(
        throttle="close", max_accept_rate=10, accept_burst=5, access_log=True
    )
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, _hello)
        port = server.ports[0]
        assert [await _outcome(port) for _ in range(8)] == [b"hi"] * 5 + [b""] * 3
        await trio.sleep(0.1)  # one token
        assert [await _outcome(port) for _ in range(2)] == [b"hi", b""]
        stats = net.statistics()
        assert (stats.total_accepts, stats.connections_rate_limited_in) == (6, 4)
        assert "proxy.process.net.connections_rate_limited_in" in stats.as_records()
        server.shutdown(0)
    assert "rate limit reached for 127.0.0.1, closing" in caplog.text
    # The session log: one rate_limited record per refused client (no
    # connection behind it), one eof record per served one.
    ends = [r.end for r in caplog.records if r.name == "trionet.access"]  # type: ignore[attr-defined]
    assert sorted(ends) == ["eof"] * 6 + ["rate_limited"] * 4


async def test_pause_mode_holds_clients_in_the_backlog(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = trionet.NetProcessor(max_accept_rate=10, accept_burst=2)
    admitted: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        admitted.append(trio.current_time())
        await conn.send_all(b"hi")

    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, handler)
        start = trio.current_time()
        results: list[bytes] = []

        async def client() -> None:
            results.append(await _outcome(server.ports[0]))

        async with trio.open_nursery() as clients:
            for _ in range(5):
                clients.start_soon(client)
        assert results == [b"hi"] * 5  # every client served, none closed
        offsets = [round(t - start, 6) for t in admitted]
        assert offsets == [0.0, 0.0, 0.1, 0.2, 0.3]
        assert net.statistics().connections_rate_limited_in == 0
        server.shutdown(0)


async def test_per_client_rate_isolates_clients(autojump_clock: trio.testing.MockClock) -> None:
    # "pause" is the default mode: the per-client excess is still closed.
    net = trionet.NetProcessor(per_client_max_accept_rate=1, per_client_accept_burst=2)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, _hello)
        port = server.ports[0]
        noisy = [await _outcome(port, "127.0.0.1") for _ in range(4)]
        quiet = [await _outcome(port, "127.0.0.2") for _ in range(2)]
        assert noisy == [b"hi", b"hi", b"", b""]
        assert quiet == [b"hi", b"hi"]
        assert net.statistics().connections_rate_limited_in == 2
        server.shutdown(0)


async def test_exempt_networks_and_backdoor_bypass(autojump_clock: trio.testing.MockClock) -> None:
    net = trionet.NetProcessor(
        throttle="close",
        max_accept_rate=1,
        per_client_max_accept_rate=1,
        per_client_exempt=["127.0.0.2/32"],
    )
    async with trio.open_nursery() as nursery:
        public = await start_server(nursery, net, _hello)
        backdoor_opts = trionet.AcceptOptions(host="127.0.0.1", backdoor=True)
        backdoor = await start_server(nursery, net, _hello, backdoor_opts)
        # 127.0.0.2 is exempt from the per-client rate, not from the processor's.
        assert await _outcome(public.ports[0], "127.0.0.2") == b"hi"
        assert await _outcome(public.ports[0], "127.0.0.2") == b""
        await trio.sleep(1)
        assert await _outcome(public.ports[0], "127.0.0.2") == b"hi"
        # The backdoor port takes no token and is refused none.
        assert [await _outcome(backdoor.ports[0]) for _ in range(5)] == [b"hi"] * 5
        assert net.statistics().connections_rate_limited_in == 1
        public.shutdown(0)
        backdoor.shutdown(0)


# ---------------------------------------------------------- the real clock
# A burst of 200 against 50/s. Bounds are generous: the machine is shared.
BURST, RATE = 200, 50


async def test_real_clock_close_mode_admits_burst_plus_rate() -> None:
    net = trionet.NetProcessor(throttle="close", max_accept_rate=RATE, accept_burst=BURST)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, _hello)
        start = trio.current_time()
        outcomes = [await _outcome(server.ports[0]) for _ in range(300)]
        elapsed = trio.current_time() - start
        admitted = outcomes.count(b"hi")
        assert admitted + outcomes.count(b"") == 300
        # At least the burst; at most the burst plus what the rate refilled.
        assert BURST <= admitted <= BURST + math.ceil(RATE * elapsed) + 1, (admitted, elapsed)
        stats = net.statistics()
        assert stats.connections_rate_limited_in == 300 - admitted
        if elapsed < 1.5:  # the normal case here: the limit visibly refused clients
            assert admitted < 300
        server.shutdown(0)


async def test_real_clock_pause_mode_serves_everyone_at_the_rate() -> None:
    net = trionet.NetProcessor(max_accept_rate=RATE, accept_burst=BURST)
    admitted: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        admitted.append(trio.current_time())
        await conn.send_all(b"hi")

    total = BURST + RATE  # the burst, then one second at the rate
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, handler)
        start = trio.current_time()
        results: list[bytes] = []

        async def client() -> None:
            results.append(await _outcome(server.ports[0]))

        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for _ in range(total):
                    clients.start_soon(client)
        assert results == [b"hi"] * total
        assert net.statistics().connections_rate_limited_in == 0
        offsets = sorted(t - start for t in admitted)
        # The last 50 needed the refill: none before ~1 s (less 10 % slack).
        assert offsets[-1] >= 0.9 * RATE / RATE, offsets[-1]
        # And however slow the clients were, at most burst + rate * t by time t.
        for i, t in enumerate(offsets):
            assert i + 1 <= BURST + RATE * t + 1, (i, t)
        server.shutdown(0)


# ------------------------------------------------------------------ the CLI
def test_cli_flags_reach_the_processor() -> None:
    argv = ["echo", "--max-accept-rate", "2.5", "--accept-burst", "7"]
    argv += ["--per-client-max-accept-rate", "1", "--per-client-accept-burst", "3"]
    _args, plan = parse(argv)
    rate = accept_policy_of(plan.processor).rate
    assert rate is not None and rate.overall is not None
    assert (rate.overall.rate, rate.overall.burst) == (2.5, 7)
    assert (rate.client_rate, rate.client_burst) == (1.0, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-accept-rate", "0"], "argument --max-accept-rate: '0': must be a positive"),
        (["--max-accept-rate", "fast"], "argument --max-accept-rate: 'fast': expected conn"),
        (["--max-accept-rate", "inf"], "argument --max-accept-rate: 'inf': must be a positive"),
        (["--accept-burst", "5"], "argument --accept-burst: needs --max-accept-rate"),
        (
            ["--max-accept-rate", "5", "--accept-burst", "0"],
            "argument --accept-burst: '0': must be at least 1",
        ),
        (
            ["--per-client-accept-burst", "5"],
            "argument --per-client-accept-burst: needs --per-client-max-accept-rate",
        ),
        (
            ["--per-client-max-accept-rate", "-2"],
            "argument --per-client-max-accept-rate: '-2': must be a positive",
        ),
    ],
)
def test_cli_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["echo", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_rate_limit_is_counted_on_the_stats_page() -> None:
    argv = ["echo", "--port", "0", "--stats-port", "0", "--throttle", "close"]
    argv += ["--max-accept-rate", "0.01", "--accept-burst", "2"]
    with Running("-m", "trionet", *argv) as run:
        port = int(run.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
        stats_port = int(run.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
        assert echo_roundtrip(port, b"one") == b"one"
        assert echo_roundtrip(port, b"two") == b"two"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
            assert third.recv(10) == b""  # no token: accepted and closed
        url = f"http://127.0.0.1:{stats_port}"
        with urllib.request.urlopen(f"{url}/stats", timeout=10) as resp:
            records = json.loads(resp.read())
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        status, _out, err = run.stop()
    assert status == 0, err
    assert records["proxy.process.net.connections_rate_limited_in"] == 1
    assert records["proxy.process.tcp.total_accepts"] == 2
    line = next(
        x for x in metrics.splitlines() if "connections_rate_limited_in" in x and x[0] != "#"
    )
    assert line.endswith(" 1.0"), line


async def test_howto_rate_limited_snippet(autojump_clock: trio.testing.MockClock) -> None:
    from .test_docs import load_snippet

    net = load_snippet("howto_throttling").rate_limited()
    assert (net.max_accept_rate, net.per_client_max_accept_rate) == (100.0, 5.0)
    async with trio.open_nursery() as nursery:
        server = await start_server(nursery, net, _hello)
        # 10 at once from one client, the 11th closed; the office is exempt.
        outcomes = [await _outcome(server.ports[0]) for _ in range(11)]
        assert outcomes == [b"hi"] * 10 + [b""]
        assert net.statistics().connections_rate_limited_in == 1
        server.shutdown(0)
