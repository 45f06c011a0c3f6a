"""Per-target statistics of a TcpProxy on the stats page: labelled
``upstream="host:port"`` series in ``/metrics`` (parsed with
prometheus-client's parsers), flat ``proxy.process.tcp_proxy.upstream.
<host:port>.*`` records in ``/stats``, from the library and from the CLI."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from contextlib import ExitStack
from typing import Any

import pytest
import trio
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

import trionet
from trionet._apps._tcp_proxy import ProxyStatistics
from trionet._apps._upstreams import UpstreamStatistics
from trionet._apps._workers._shared import LABEL_BYTES, MAX_TARGETS, FleetMemory, WorkerSlot
from trionet._core._stats import Reading, Statistic
from trionet._core._stats_page import Readiness, _Page

from .running import Running, echo_roundtrip
from .test_upstreams import _refusing_port

UPSTREAM = "trionet_tcp_proxy_upstream_"
# (trionet_tcp_proxy_upstream_failures and _timeouts are the proxy's totals.)
PER_TARGET = ("sessions", "connect_failures", "sessions_open", "down", "downs")
RECORD = "proxy.process.tcp_proxy.upstream."


def http_get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
    return body.decode()


def per_target(text: str) -> dict[str, dict[str, tuple[str, float]]]:
    """``/metrics`` text -> family name -> upstream label -> (type, value),
    for the per-target families; asserts that no family name repeats."""
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), names
    found: dict[str, dict[str, tuple[str, float]]] = {}
    for family in families:
        if family.name.removeprefix(UPSTREAM) in PER_TARGET:
            series = found.setdefault(family.name.removeprefix(UPSTREAM), {})
            for sample in family.samples:
                assert set(sample.labels) == {"upstream"}, sample
                series[sample.labels["upstream"]] = (family.type, sample.value)
    return found


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def roundtrip(port: int, payload: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        got += await stream.receive_some()
    assert got == payload
    return stream


async def test_page_shows_each_target_after_failover(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    good = await nursery.start(net.serve, echo, trionet.AcceptOptions(host="127.0.0.1"))
    refused = f"127.0.0.1:{_refusing_port()}"
    good_label = f"127.0.0.1:{good.ports[0]}"
    targets = [("127.0.0.1", int(refused.rsplit(":")[1])), ("127.0.0.1", good.ports[0])]
    # max_fails=1: the first refusal marks the refused target down (for the
    # rest of the test), so later sessions go straight to the good one.
    proxy = trionet.TcpProxy(net, targets, max_fails=1, fail_backoff=300)
    front = await nursery.start(net.serve, proxy, trionet.AcceptOptions(host="127.0.0.1"))
    page = await nursery.start(partial_serve_stats(net, proxy), 0)
    for i in range(3):
        stream = await roundtrip(front.ports[0], b"closed %d" % i)
        await stream.aclose()
    async with await roundtrip(front.ports[0], b"held open"):
        await check_page(net, proxy, page.ports[0], refused, good_label)
    for server in (front, good, page):
        server.shutdown(0)


async def check_page(
    net: trionet.NetProcessor, proxy: trionet.TcpProxy, port: int, refused: str, good_label: str
) -> None:
    """The page, with one session (to the good target) held open."""
    with trio.fail_after(5):
        # The closed sessions' ends are counted: only the held one is open.
        while (
            proxy.statistics().upstreams[1].open != 1
            or net.statistics().connections_currently_open != 3
        ):
            await trio.sleep(0.001)

    text = await trio.to_thread.run_sync(http_get, port, "/metrics")
    got = per_target(text)
    assert got == {
        "sessions": {refused: ("counter", 0), good_label: ("counter", 4)},
        "connect_failures": {refused: ("counter", 1), good_label: ("counter", 0)},
        "sessions_open": {refused: ("gauge", 0), good_label: ("gauge", 1)},
        "down": {refused: ("gauge", 1), good_label: ("gauge", 0)},
        "downs": {refused: ("counter", 1), good_label: ("counter", 0)},
    }
    assert f'{UPSTREAM}sessions_total{{upstream="{good_label}"}} 4.0' in text
    assert (
        f"# HELP {UPSTREAM}down 1 while this upstream target is marked down by passive "
        "health, else 0 (a fleet's total: the workers that marked it down). "
        f"(ATS record {RECORD}down)"
    ) in text
    # The proxy's own totals are still there, unlabelled.
    assert "trionet_tcp_proxy_failovers_total 1.0" in text
    assert "trionet_tcp_proxy_upstream_failures_total 0.0" in text

    records = json.loads(await trio.to_thread.run_sync(http_get, port, "/stats"))
    mine = {k: v for k, v in records.items() if k.startswith(RECORD)}
    assert mine == {
        f"{RECORD}{refused}.sessions": 0,
        f"{RECORD}{refused}.connect_failures": 1,
        f"{RECORD}{refused}.sessions_open": 0,
        f"{RECORD}{refused}.down": 1,
        f"{RECORD}{refused}.downs": 1,
        f"{RECORD}{good_label}.sessions": 4,
        f"{RECORD}{good_label}.connect_failures": 0,
        f"{RECORD}{good_label}.sessions_open": 1,
        f"{RECORD}{good_label}.down": 0,
        f"{RECORD}{good_label}.downs": 0,
    }
    assert records["proxy.process.tcp_proxy.sessions"] == 4
    assert records["proxy.process.net.connections_currently_open"] == 3  # held: 2, good: 1


def partial_serve_stats(net: trionet.NetProcessor, proxy: trionet.TcpProxy) -> Any:
    async def serve(port: int, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        await net.serve_stats(port, extra=[proxy.readings], task_status=task_status)

    return serve


def test_one_target_is_labelled_too() -> None:
    net = trionet.NetProcessor()
    proxy = trionet.TcpProxy(net, "127.0.0.1", 8080)
    labelled = [r for r in proxy.readings() if r.labels]
    assert [(r.record, r.value) for r in labelled] == [
        (f"{RECORD}127.0.0.1:8080.{name}", 0)
        for name in ("sessions", "connect_failures", "sessions_open", "down", "downs")
    ]
    assert {r.labels for r in labelled} == {(("upstream", "127.0.0.1:8080"),)}


# ------------------------------------------------------------ Reading.labels
STAT = Statistic("proxy.process.demo.hits", "Demo hits.")
GAUGE = Statistic("proxy.process.demo.level", "Demo level.", gauge=True)


def test_labelled_record_names() -> None:
    assert Reading(STAT, 1).record == "proxy.process.demo.hits"
    two = Reading(STAT, 1, labels=(("zone", "eu"), ("upstream", "[::1]:80")))
    assert two.record == "proxy.process.demo.eu.[::1]:80.hits"
    # Backwards compatible: positional (statistic, value, workers) still work.
    assert Reading(STAT, 3, ((0, 1), (1, 2))).labels == ()


@pytest.mark.parametrize("name", ["worker", "__x", "1a", "a-b", ""])
def test_bad_label_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"Reading.labels: '{name}' of proxy.process.demo.hits"):
        Reading(STAT, 1, labels=((name, "v"),))


def test_repeated_label_is_refused() -> None:
    with pytest.raises(ValueError, match="a label repeats"):
        Reading(STAT, 1, labels=(("a", "1"), ("a", "2")))


def test_labels_and_workers_compose_in_one_family() -> None:
    # A fleet's reading with labels: the labelled total and per-worker series.
    readings = [
        Reading(STAT, 5, ((0, 2), (1, 3)), labels=(("upstream", "a:1"),)),
        Reading(GAUGE, 7),
        Reading(STAT, 4, ((0, 4), (1, 0)), labels=(("upstream", "b:2"),)),
    ]
    page = _Page(lambda: readings, Readiness())
    status, _ctype, body = page.respond(b"GET", "/metrics", "")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    hits = families["trionet_demo_hits"]
    assert hits.type == "counter"
    assert [(s.labels, s.value) for s in hits.samples] == [
        ({"upstream": "a:1"}, 5),
        ({"upstream": "a:1", "worker": "0"}, 2),
        ({"upstream": "a:1", "worker": "1"}, 3),
        ({"upstream": "b:2"}, 4),
        ({"upstream": "b:2", "worker": "0"}, 4),
        ({"upstream": "b:2", "worker": "1"}, 0),
    ]
    assert [(s.labels, s.value) for s in families["trionet_demo_level"].samples] == [({}, 7)]
    # OpenMetrics (a stricter format: a family name at most once) parses too.
    status, ctype, body = page.respond(b"GET", "/metrics", "application/openmetrics-text")
    assert ctype.startswith(b"application/openmetrics-text")
    om = {f.name: f for f in openmetrics_families(body.decode())}
    assert len(om["trionet_demo_hits"].samples) == 6
    status, _ctype, body = page.respond(b"GET", "/stats", "")
    assert json.loads(body) == {
        "proxy.process.demo.a:1.hits": 5,
        "proxy.process.demo.level": 7,
        "proxy.process.demo.b:2.hits": 4,
    }


# ---------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_proxy_page_shows_targets() -> None:
    with Running("-m", "trionet", "echo", "--port", "0") as upstream:
        port = int(upstream.expect(r"trionet echo: listening on 127\.0\.0\.1:(\d+)")[1])
        good = f"127.0.0.1:{port}"
        refused = f"127.0.0.1:{_refusing_port()}"
        argv = ["proxy", "--listen", "0", "--upstream", refused, "--upstream", good]
        argv += ["--max-fails", "1", "--fail-backoff", "300", "--stats-port", "0"]
        with Running("-m", "trionet", *argv) as proxy:
            front = int(proxy.expect(r"trionet proxy: listening on 127\.0\.0\.1:(\d+)")[1])
            page = int(proxy.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats")[1])
            for i in range(3):
                assert echo_roundtrip(front, b"hop %d" % i) == b"hop %d" % i
            got = per_target(http_get(page, "/metrics"))
            records = json.loads(http_get(page, "/stats"))
            status, _out, err = proxy.stop()
        upstream.stop()
    assert status == 0, err
    assert got["sessions"] == {refused: ("counter", 0), good: ("counter", 3)}
    assert got["connect_failures"] == {refused: ("counter", 1), good: ("counter", 0)}
    assert got["down"] == {refused: ("gauge", 1), good: ("gauge", 0)}
    assert got["downs"] == {refused: ("counter", 1), good: ("counter", 0)}
    assert records[f"{RECORD}{good}.sessions"] == 3
    assert records[f"{RECORD}{refused}.down"] == 1
    assert records[f"{RECORD}{refused}.connect_failures"] == 1


# -------------------------------------------------------------------- fleet
def _fleet_targets(fleet: FleetMemory) -> dict[str, dict[str, tuple[int, tuple[Any, ...]]]]:
    """record -> (total, per worker) of the fleet's per-target readings."""
    return {r.record: (r.value, r.workers) for r in fleet.readings() if r.labels}


def _proxy(*targets: UpstreamStatistics) -> ProxyStatistics:
    return ProxyStatistics(sessions=sum(t.sessions for t in targets), upstreams=targets)


def test_fleet_sums_targets_by_label_and_keeps_retired_counts() -> None:
    fleet = FleetMemory(4)
    with ExitStack() as stack:
        stack.callback(fleet.close)
        slots = []
        for wid in (0, 1):
            slot = WorkerSlot(fleet.fd, fleet.capacity, fleet.claim(wid))
            stack.callback(slot.close)
            slots.append(slot)
        slots[0].publish(
            trionet.NetStatistics(),
            _proxy(UpstreamStatistics("a:1", 0, 2, 0, True, 1), UpstreamStatistics("b:2", 5, 0, 1)),
        )
        slots[1].publish(
            trionet.NetStatistics(),
            _proxy(
                UpstreamStatistics("a:1", 1, 3, 0, False, 1), UpstreamStatistics("b:2", 7, 0, 2)
            ),
        )
        got = _fleet_targets(fleet)
        assert got[f"{RECORD}a:1.sessions"] == (1, ((0, 0), (1, 1)))
        assert got[f"{RECORD}a:1.connect_failures"] == (5, ((0, 2), (1, 3)))
        assert got[f"{RECORD}a:1.down"] == (1, ((0, 1), (1, 0)))  # one worker has it down
        assert got[f"{RECORD}a:1.downs"] == (2, ((0, 1), (1, 1)))
        assert got[f"{RECORD}b:2.sessions"] == (12, ((0, 5), (1, 7)))
        assert got[f"{RECORD}b:2.sessions_open"] == (3, ((0, 1), (1, 2)))
        assert len(got) == 10
        # Worker 0 exits: its counters stay in the totals, its gauges go.
        [slot0] = [s for s, w in fleet.live().items() if w == 0]
        fleet.retire(slot0)
        got = _fleet_targets(fleet)
        assert got[f"{RECORD}a:1.connect_failures"] == (5, ((1, 3),))
        assert got[f"{RECORD}a:1.down"] == (0, ((1, 0),))
        assert got[f"{RECORD}b:2.sessions"] == (12, ((1, 7),))
        assert got[f"{RECORD}b:2.sessions_open"] == (2, ((1, 2),))
        # Published again with new values: overwritten, label unchanged.
        slots[1].publish(
            trionet.NetStatistics(),
            _proxy(UpstreamStatistics("a:1", 4), UpstreamStatistics("b:2", 9)),
        )
        got = _fleet_targets(fleet)
        assert got[f"{RECORD}a:1.sessions"] == (4, ((1, 4),))
        assert got[f"{RECORD}b:2.sessions"] == (14, ((1, 9),))


def test_fleet_publishes_long_labels_and_many_targets_within_bounds() -> None:
    fleet = FleetMemory(2)
    with ExitStack() as stack:
        stack.callback(fleet.close)
        slot = WorkerSlot(fleet.fd, fleet.capacity, fleet.claim(0))
        stack.callback(slot.close)
        host = "h" * 253
        many = [UpstreamStatistics(f"{host}:{p}", sessions=p) for p in range(1, MAX_TARGETS + 3)]
        slot.publish(trionet.NetStatistics(), _proxy(*many))
        sessions = {
            r.labels[0][1]: r.value
            for r in fleet.readings()
            if r.labels and r.statistic.record.endswith(".sessions")
        }
        # The first MAX_TARGETS targets, whole labels (a 253-byte host fits).
        assert len(f"{host}:65535".encode()) <= LABEL_BYTES
        assert sessions == {f"{host}:{p}": p for p in range(1, MAX_TARGETS + 1)}


@pytest.mark.slow
def test_cli_fleet_page_shows_targets() -> None:
    with Running("-m", "trionet", "echo", "--port", "0") as upstream:
        port = int(upstream.expect(r"trionet echo: listening on 127\.0\.0\.1:(\d+)")[1])
        good = f"127.0.0.1:{port}"
        refused = f"127.0.0.1:{_refusing_port()}"
        argv = ["proxy", "--listen", "0", "--upstream", refused, "--upstream", good]
        argv += ["--max-fails", "1", "--fail-backoff", "300"]
        argv += ["--workers", "2", "--stats-port", "0", "--grace", "2"]
        with Running("-m", "trionet", *argv) as proxy:
            front = int(proxy.expect(r"listening on 127\.0\.0\.1:(\d+)")[1])
            page = int(proxy.expect(r"statistics on http://127\.0\.0\.1:(\d+)/stats", 60)[1])
            for i in range(6):
                assert echo_roundtrip(front, b"hop %d" % i) == b"hop %d" % i
            # Workers publish every 0.1 s: wait for all six sessions.
            deadline = time.monotonic() + 20
            while (records := json.loads(http_get(page, "/stats")))[f"{RECORD}{good}.sessions"] < 6:
                assert time.monotonic() < deadline, records
                time.sleep(0.05)
            text = http_get(page, "/metrics")
            status, _out, err = proxy.stop(signal.SIGTERM, timeout=30)
        upstream.stop()
    assert status == 0, err
    assert records[f"{RECORD}{refused}.sessions"] == 0
    # Each worker has its own passive health: a worker that tried the
    # refused target marked it down (max_fails=1); one or both did.
    failures = records[f"{RECORD}{refused}.connect_failures"]
    assert 1 <= failures <= 2 and records[f"{RECORD}{refused}.downs"] == failures
    assert records[f"{RECORD}{refused}.down"] == failures
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sessions = {
        (s.labels["upstream"], s.labels.get("worker", "all")): s.value
        for s in families[UPSTREAM + "sessions"].samples
    }
    assert sessions[(good, "all")] == 6 == sessions[(good, "0")] + sessions[(good, "1")]
    assert sessions[(refused, "all")] == 0
