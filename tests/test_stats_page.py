"""The stats page: /stats (JSON, ATS record names) and /metrics (Prometheus),
fetched with real HTTP clients (urllib/http.client in a thread, raw sockets)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

import h11
import pytest
import trio
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trionet
from trionet._core._stats import GAUGES, RECORD_NAMES
from trionet._core._stats_page import REQUEST_TIMEOUT, StatsCollector, metric_name


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


def fetch(
    port: int, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with urllib (run in a thread)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


async def get(port: int, path: str, method: str = "GET", **headers: str) -> Any:
    return await trio.to_thread.run_sync(lambda: fetch(port, path, method, **headers))


async def exchange(port: int, payload: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(payload)
    got = b""
    while len(got) < len(payload):
        got += await stream.receive_some()
    assert got == payload
    return stream


async def test_stats_json_reflects_real_traffic(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    server = await nursery.start(net.serve, echo, trionet.AcceptOptions(host="127.0.0.1"))
    page = await nursery.start(net.serve_stats, 0)
    # Three clients echo 10, 20 and 30 bytes; the first one then leaves.
    streams = [await exchange(server.ports[0], b"x" * n) for n in (10, 20, 30)]
    await streams[0].aclose()
    with trio.fail_after(5):
        while net.statistics().connections_currently_open != 2:
            await trio.sleep(0.001)

    status, headers, body = await get(page.ports[0], "/stats")
    assert status == 200
    assert headers["content-type"] == "application/json"
    records = json.loads(body)
    assert set(records) == set(RECORD_NAMES.values())
    assert records["proxy.process.tcp.total_accepts"] == 3
    assert records["proxy.process.net.connections_currently_open"] == 2
    assert records["proxy.process.net.accepts_currently_open"] == 1
    assert records["proxy.process.net.read_bytes"] == 60
    assert records["proxy.process.net.write_bytes"] == 60
    # The page's own connection is not counted in the processor it reports on.
    assert records == net.statistics().as_records()
    for s in streams[1:]:
        await s.aclose()
    server.shutdown(0)
    page.shutdown(0)


async def test_metrics_typed_counters_and_gauges(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    server = await nursery.start(net.serve, echo, trionet.AcceptOptions(host="127.0.0.1"))
    page = await nursery.start(net.serve_stats, 0)
    stream = await exchange(server.ports[0], b"hello")

    status, headers, body = await get(page.ports[0], "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE trionet_net_connections_currently_open gauge" in text
    assert "# TYPE trionet_net_read_bytes_total counter" in text
    # The ATS record name is in the HELP line.
    assert (
        "# HELP trionet_net_read_bytes_total Payload bytes received. "
        "(ATS record proxy.process.net.read_bytes)"
    ) in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(families) == len(RECORD_NAMES) + 1  # and trionet_build_info
    [info] = families["trionet_build_info"].samples
    assert (info.labels, info.value) == ({"version": trionet.__version__}, 1)
    for field in RECORD_NAMES:
        # prometheus-client drops a counter's "_total" (connects_total) and
        # appends it to the sample name.
        fam = families[metric_name(field).removesuffix("_total")]
        assert fam.type == ("gauge" if field in GAUGES else "counter"), field
    [sample] = families["trionet_net_connections_currently_open"].samples
    assert sample.value == 1
    [sample] = families["trionet_net_read_bytes"].samples
    assert (sample.name, sample.value) == ("trionet_net_read_bytes_total", 5)
    [sample] = families["trionet_tcp_total_accepts"].samples
    assert sample.value == 1
    [sample] = families["trionet_net_connects"].samples
    assert (sample.name, sample.value) == ("trionet_net_connects_total", 0)
    assert metric_name("tls_handshake_errors") == "trionet_ssl_handshake_errors"
    await stream.aclose()
    server.shutdown(0)
    page.shutdown(0)


async def test_metrics_openmetrics_when_asked(nursery: trio.Nursery) -> None:
    page = await nursery.start(trionet.NetProcessor().serve_stats, 0)
    accept = "application/openmetrics-text; version=1.0.0"
    status, headers, body = await get(page.ports[0], "/metrics", Accept=accept)
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    page.shutdown(0)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/stats/extra", 404),
        ("GET", "/nothing?x=1", 404),
        ("POST", "/stats", 405),
        ("DELETE", "/metrics", 405),
        ("GET", "/stats?pretty=1", 200),
    ],
)
async def test_status_codes(nursery: trio.Nursery, method: str, path: str, status: int) -> None:
    page = await nursery.start(trionet.NetProcessor().serve_stats, 0)
    got, headers, _body = await get(page.ports[0], path, method)
    assert got == status
    if status == 405:
        assert headers["allow"] == "GET, HEAD"
    page.shutdown(0)


async def test_head_and_keep_alive(nursery: trio.Nursery) -> None:
    """Two requests on one connection (http.client keeps it alive); HEAD has
    the GET's length and no body."""
    page = await nursery.start(trionet.NetProcessor().serve_stats, 0)

    def two_requests() -> list[tuple[int, str | None, bytes]]:
        c = http.client.HTTPConnection("127.0.0.1", page.ports[0], timeout=5)
        out = []
        try:
            for method in ("GET", "HEAD"):
                c.request(method, "/stats")
                r = c.getresponse()
                out.append((r.status, r.getheader("Content-Length"), r.read()))
        finally:
            c.close()
        return out

    (s1, len1, body1), (s2, len2, body2) = await trio.to_thread.run_sync(two_requests)
    assert (s1, s2) == (200, 200)
    assert len1 == len2 == str(len(body1))
    assert json.loads(body1)["proxy.process.net.connections_currently_open"] == 0
    assert body2 == b""
    page.shutdown(0)


async def raw_request(port: int, data: bytes) -> bytes:
    """Send raw bytes; read until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                out += chunk
    return out


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /stats HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /stats HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /stats HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ],
)
async def test_malformed_request_is_400(nursery: trio.Nursery, data: bytes) -> None:
    page = await nursery.start(trionet.NetProcessor().serve_stats, 0)
    reply = await raw_request(page.ports[0], data)
    status_line = reply.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 400 "
    assert b"bad request" in reply
    page.shutdown(0)


async def test_oversized_request_head_is_rejected(nursery: trio.Nursery) -> None:
    page = await nursery.start(trionet.NetProcessor().serve_stats, 0)
    data = b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    reply = await raw_request(page.ports[0], data)
    assert reply.split(b"\r\n", 1)[0] == b"HTTP/1.1 431 "
    page.shutdown(0)


async def test_silent_page_connection_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    """A connection that never sends a request is closed quietly (no 408:
    it asked nothing) at the request deadline."""
    async with trio.open_nursery() as nursery:
        page = await nursery.start(trionet.NetProcessor().serve_stats, 0)
        stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
        t0 = trio.current_time()
        assert await stream.receive_some() == b""  # closed by the server
        assert trio.current_time() - t0 == pytest.approx(REQUEST_TIMEOUT)
        await stream.aclose()
        page.shutdown(0)


async def test_binds_loopback_unless_told(nursery: trio.Nursery) -> None:
    net = trionet.NetProcessor()
    page = await nursery.start(net.serve_stats, 0)
    assert [lst.address[0] for lst in page.listeners] == ["127.0.0.1"]
    other = await nursery.start(
        trionet.serve_stats, net.statistics, trionet.AcceptOptions(host="::1")
    )
    assert [lst.address[0] for lst in other.listeners] == ["::1"]
    # A raw h11 client over IPv6 loopback.
    stream = await trio.open_tcp_stream("::1", other.ports[0])
    async with stream:
        client = h11.Connection(h11.CLIENT)
        req = h11.Request(method="GET", target="/stats", headers=[("Host", "x")])
        await stream.send_all(client.send(req) + client.send(h11.EndOfMessage()))
        events = []
        while not events or not isinstance(events[-1], h11.EndOfMessage):
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some())
            else:
                events.append(event)
        assert events[0].status_code == 200
        records = json.loads(b"".join(e.data for e in events if isinstance(e, h11.Data)))
        assert records["proxy.process.net.connections_currently_open"] == 0
    page.shutdown(0)
    other.shutdown(0)


def test_collector_in_an_application_registry() -> None:
    net = trionet.NetProcessor()
    registry = CollectorRegistry()
    registry.register(StatsCollector(net.statistics))
    text = generate_latest(registry).decode()
    assert "trionet_net_connections_currently_open 0.0" in text
    assert "trionet_tcp_total_accepts_total 0.0" in text
    # Registering twice is a clash the registry detects (describe() works).
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(StatsCollector(net.statistics))


def test_collector_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match=r"source=.* is not callable"):
        StatsCollector(trionet.NetProcessor().statistics())  # type: ignore[arg-type]
