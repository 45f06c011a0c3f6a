"""The stats page under a hostile network: slow and silent connection floods,
malformed requests, and hypothesis over request bytes and header values.

Everything runs over real loopback sockets. Time-dependent tests use trio's
MockClock (autojump): "answered within a second" is measured on the virtual
clock, where every timeout and every attacker's pause counts in full but
nothing is lost to a busy CI machine.
"""

from __future__ import annotations

import itertools
import logging
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import trionet
from trionet._core._stats import RECORD_NAMES
from trionet._core._stats_page import (
    KEEP_ALIVE_TIMEOUT,
    REQUEST_TIMEOUT,
    STATS_MAX_WAITING,
)

from .conftest import open_fds

# A response's status line as h11 writes it: the (empty) reason and the real
# CRLF. An error body can quote the request, but only as a repr, so this never
# matches inside a body.
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) \r\n")
ERROR_STATUSES = {400, 404, 405, 408, 413, 431}


def page_stats(page: trionet.Server) -> trionet.NetStatistics:
    """The page's own processor (its connections, not the ones it reports)."""
    return page.processor.statistics()


async def start_page(nursery: trio.Nursery) -> trionet.Server:
    server: trionet.Server = await nursery.start(trionet.NetProcessor().serve_stats, 0)
    return server


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    out = b""
    with suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some():
            out += chunk
    return out


async def get(
    port: int, target: str = "/stats", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request with an h11 client over a fresh connection (MockClock-safe:
    no threads)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        client = h11.Connection(h11.CLIENT)
        head = [("Host", "x"), *headers.items()]
        req = h11.Request(method="GET", target=target, headers=head)
        await stream.send_all(client.send(req) + client.send(h11.EndOfMessage()))
        response: h11.Response | None = None
        body = b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some())
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert response is not None
    fields = {k.decode(): v.decode() for k, v in response.headers}
    return response.status_code, fields, body


async def receive_more(stream: trio.SocketStream) -> bytes:
    chunk = await stream.receive_some()
    assert chunk, "closed before a complete response"
    return chunk


async def read_response(stream: trio.SocketStream) -> bytes:
    """Exactly one response (head and Content-Length body) off ``stream``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += await receive_more(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    while len(body) < length:
        body += await receive_more(stream)
    assert len(body) == length
    return head + b"\r\n\r\n" + body


async def wait_drained(page: trionet.Server) -> None:
    """The page's own gauges return to 0 (every slot released)."""
    with trio.fail_after(30):
        while True:
            stats = page_stats(page)
            if stats.connections_currently_open == 0 and stats.idle_connections == 0:
                return
            await trio.sleep(0.01)


def tracebacks(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.ERROR or r.exc_info]


# ------------------------------------------------------- slow and silent floods
async def test_slowloris_flood_does_not_lock_out_a_good_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """70 clients each trickle one header line per second (and reconnect when
    cut off, as an attacker would); a good client arriving in the middle of it
    is answered within a second, and the attackers hold at most
    STATS_MAX_WAITING slots."""
    async with trio.open_nursery() as nursery:
        page = await start_page(nursery)
        port = page.ports[0]
        cut_off = 0

        async def loris() -> None:
            nonlocal cut_off
            while True:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    await stream.send_all(b"GET /stats HTTP/1.1\r\n")
                    for n in range(1000):
                        await trio.sleep(1)
                        await stream.send_all(b"X-Line-%d: x\r\n" % n)
                except trio.BrokenResourceError:
                    cut_off += 1
                finally:
                    await stream.aclose()

        async with trio.open_nursery() as attack:
            for _ in range(70):
                attack.start_soon(loris)
            await trio.sleep(3.5)  # every attacker has sent 3 or 4 lines
            assert page_stats(page).connections_currently_open <= STATS_MAX_WAITING
            t0 = trio.current_time()
            with trio.fail_after(1):
                status, _, body = await get(port)
            assert status == 200
            assert b"proxy.process.net.connections_currently_open" in body
            assert trio.current_time() - t0 < 1
            # Still answered while the attack goes on (head deadlines have cut
            # the first wave by now; the attackers reconnected).
            await trio.sleep(REQUEST_TIMEOUT + 5)
            with trio.fail_after(1):
                status, _, _ = await get(port)
            assert status == 200
            assert page_stats(page).connections_currently_open <= STATS_MAX_WAITING + 1
            attack.cancel_scope.cancel()
        stats = page_stats(page)
        assert stats.keep_alive_evictions >= 70 - STATS_MAX_WAITING
        assert cut_off >= 70  # the first wave hit the head deadline
        await wait_drained(page)
        page.shutdown(0)


async def test_the_oldest_waiting_connection_is_evicted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With STATS_MAX_WAITING connections owing a request, a new one evicts
    the one that has waited longest -- at once, not at a deadline -- and
    nothing else; a connection being answered is never evicted."""
    async with trio.open_nursery() as nursery:
        page = await start_page(nursery)
        port = page.ports[0]
        waiting = []
        for _ in range(STATS_MAX_WAITING):
            waiting.append(await trio.open_tcp_stream("127.0.0.1", port))
            await trio.sleep(0.01)  # distinct ages
        assert page_stats(page).idle_connections == STATS_MAX_WAITING
        t0 = trio.current_time()
        newest = await trio.open_tcp_stream("127.0.0.1", port)
        assert await waiting[0].receive_some() == b""  # evicted: closed, no reply
        assert trio.current_time() - t0 < 0.1
        with trio.move_on_after(1) as still_open:
            await waiting[1].receive_some()
        assert still_open.cancelled_caught
        stats = page_stats(page)
        assert stats.keep_alive_evictions == 1
        assert stats.connections_currently_open == STATS_MAX_WAITING
        # The newest one is served; the rest are left to their deadline.
        await newest.send_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(newest)).startswith(b"HTTP/1.1 200 \r\n")
        for s in [*waiting, newest]:
            await s.aclose()
        await wait_drained(page)
        page.shutdown(0)


def raise_fd_limit(needed: int) -> None:
    """Raise RLIMIT_NOFILE's soft limit to ``needed`` if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def test_silent_connection_flood_does_not_lock_out_a_good_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """500 connections that send nothing, then a good client: answered within
    a second (on the old page: ~70 s, behind the flood in the backlog)."""
    flood = 500
    raise_fd_limit(open_fds() + 2 * flood + 200)
    async with trio.open_nursery() as nursery:
        page = await start_page(nursery)
        port = page.ports[0]
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(flood)]
        try:
            t0 = trio.current_time()
            with trio.fail_after(1):
                status, _, body = await get(port, "/metrics")
            assert status == 200
            assert b"trionet_net_connections_currently_open" in body
            assert trio.current_time() - t0 < 1
            stats = page_stats(page)
            # The oldest silent ones were evicted to make room; the page never
            # held more than its waiting limit (plus the one being answered).
            assert stats.keep_alive_evictions >= flood - STATS_MAX_WAITING
            assert stats.connections_currently_open <= STATS_MAX_WAITING + 1
            assert stats.connections_throttled_in == 0
        finally:
            for s in streams:
                await s.aclose()
        await wait_drained(page)
        page.shutdown(0)


async def test_request_head_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """A head trickled a line a second gets a 408 REQUEST_TIMEOUT seconds after
    connecting: the deadline is for the whole head, not per byte."""
    async with trio.open_nursery() as nursery:
        page = await start_page(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
        t0 = trio.current_time()
        await stream.send_all(b"GET /stats HTTP/1.1\r\n")
        reply = b""
        with trio.fail_after(REQUEST_TIMEOUT + 3), suppress(trio.BrokenResourceError):
            while not reply:
                with trio.move_on_after(1):
                    reply = await stream.receive_some()
                    break
                await stream.send_all(b"X-Slow: 1\r\n")
        assert trio.current_time() - t0 == pytest.approx(REQUEST_TIMEOUT)
        assert reply.startswith(b"HTTP/1.1 408 \r\n")
        assert b"connection: close\r\n" in reply
        await stream.aclose()
        await wait_drained(page)
        page.shutdown(0)


async def test_keep_alive_wait_then_head_deadline(autojump_clock: trio.testing.MockClock) -> None:
    """Between requests a connection may wait KEEP_ALIVE_TIMEOUT for the next
    one; once its first byte is in, the head has REQUEST_TIMEOUT to complete."""
    async with trio.open_nursery() as nursery:
        page = await start_page(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
        request = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"
        await stream.send_all(request)
        assert (await read_response(stream)).startswith(b"HTTP/1.1 200 \r\n")
        t0 = trio.current_time()
        await trio.sleep(KEEP_ALIVE_TIMEOUT - 1)  # still open: a keep-alive wait
        await stream.send_all(b"GET /stats HTTP/1.1\r\n")  # ... and never finished
        with trio.fail_after(REQUEST_TIMEOUT + 3):
            reply = await read_response(stream)
        assert trio.current_time() - t0 == pytest.approx(KEEP_ALIVE_TIMEOUT - 1 + REQUEST_TIMEOUT)
        assert reply.startswith(b"HTTP/1.1 408 \r\n")
        await stream.aclose()
        # A kept-alive connection that sends nothing is closed quietly.
        stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
        await stream.send_all(request)
        await read_response(stream)
        t0 = trio.current_time()
        assert await read_until_closed(stream) == b""
        assert trio.current_time() - t0 == pytest.approx(KEEP_ALIVE_TIMEOUT)
        await stream.aclose()
        await wait_drained(page)
        page.shutdown(0)


# ---------------------------------------------------------- malformed requests
MALFORMED = {
    "bad chunk size": b"GET /stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "bad chunk end": (
        b"POST /stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n"
    ),
    "left mid-body": b"GET /stats HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
    "left mid-chunk": (
        b"GET /stats HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nab"
    ),
    "bad IPv6 target": b"GET http://[/stats HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad absolute target": b"GET http://[::1/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_request_gets_400_and_no_traceback(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    page = await start_page(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
    async with stream:
        await stream.send_all(data)
        await stream.send_eof()  # the client leaves (half-close: it still reads)
        with trio.fail_after(5):
            reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 400 \r\n"), reply
    assert b"connection: close\r\n" in reply
    assert b"bad request: " in reply
    assert tracebacks(caplog.records) == []
    await wait_drained(page)
    assert page_stats(page).handler_errors == 0
    page.shutdown(0)


async def test_client_gone_mid_body_is_no_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that closes outright (possibly with a reset) mid-body: nothing
    to answer, but no traceback and no slot held."""
    caplog.set_level(logging.DEBUG, logger="trionet")
    page = await start_page(nursery)
    for _ in range(3):
        stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
        await stream.send_all(MALFORMED["left mid-body"])
        await stream.aclose()
    await wait_drained(page)
    assert page_stats(page).handler_errors == 0
    assert tracebacks(caplog.records) == []
    page.shutdown(0)


async def test_bad_request_log_is_one_line_and_rate_limited(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    page = await start_page(nursery)
    for data in MALFORMED.values():
        stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
        async with stream:
            await stream.send_all(data)
            await stream.send_eof()
            assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 400 ")
    page_records = [r for r in caplog.records if r.name == "trionet.stats_page"]
    [record] = page_records  # the other five are suppressed (counted in the next one)
    message = record.getMessage()
    assert record.levelno == logging.INFO
    assert "\n" not in message and record.exc_info is None
    assert message.startswith("stats page: 400 for connection #1 from ")
    page.shutdown(0)


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=zzz",
        "application/openmetrics-text; version=1.x.0",
        "application/openmetrics-text; version=1.0.0\xe9",
        "text/plain; version=x.y",
    ],
)
async def test_bad_accept_falls_back_to_text(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, accept: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    page = await start_page(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
    async with stream:
        request = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n"
        await stream.send_all(request.encode("latin-1"))
        client = h11.Connection(h11.CLIENT)
        client.send(h11.Request(method="GET", target="/metrics", headers=[("Host", "x")]))
        client.send(h11.EndOfMessage())
        events: list[Any] = []
        with trio.fail_after(5):
            while not events or not isinstance(events[-1], h11.EndOfMessage):
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(await stream.receive_some())
                else:
                    events.append(event)
    response = events[0]
    assert response.status_code == 200
    assert dict(response.headers)[b"content-type"] == b"text/plain; version=0.0.4; charset=utf-8"
    text = b"".join(e.data for e in events if isinstance(e, h11.Data)).decode()
    assert len(list(text_string_to_metric_families(text))) == len(RECORD_NAMES) + 1  # build_info
    assert tracebacks(caplog.records) == []
    page.shutdown(0)


# ------------------------------------------------------------ hypothesis suite
@contextmanager
def captured_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record from trionet's loggers (hypothesis cannot share caplog
    between examples)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    log = logging.getLogger("trionet")
    old_level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def run_exchange(chunks: list[bytes], ending: str) -> tuple[bytes, list[logging.LogRecord]]:
    """Send ``chunks`` to a fresh page (one write each), end as ``ending`` says
    (``"eof"``: half-close and read; ``"stay"``: keep open and read until the
    page closes; ``"close"``: close at once), and check that every slot and fd
    came back. Runs on the autojump clock, so the page's deadlines pass at once."""
    reply = b""
    fds_before = open_fds()

    async def scenario() -> None:
        nonlocal reply
        async with trio.open_nursery() as nursery:
            page = await start_page(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", page.ports[0])
            with trio.fail_after(60):  # virtual seconds: a hang fails fast
                try:
                    for chunk in chunks:
                        await stream.send_all(chunk)
                    if ending == "eof":
                        await stream.send_eof()
                    if ending != "close":
                        reply = await read_until_closed(stream)
                except trio.BrokenResourceError:
                    pass  # the page closed first (e.g. after a 400, during our send)
                finally:
                    await stream.aclose()
                await wait_drained(page)
            assert page_stats(page).handler_errors == 0
            page.shutdown(0)

    with captured_logs() as records:
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    assert open_fds() == fds_before
    return reply, records


def check_reply(reply: bytes, records: list[logging.LogRecord]) -> list[int]:
    """Every response 2xx or one of the page's 4xx; no traceback logged; at
    most one line from the page (one connection, rate-limited), and no
    message of more than one line. Returns the final statuses."""
    assert tracebacks(records) == []
    assert len([r for r in records if r.name == "trionet.stats_page"]) <= 1
    statuses = [int(m.group(1)) for m in STATUS_LINE.finditer(reply)]
    if reply:
        assert STATUS_LINE.match(reply), reply[:200]
    # 100 Continue (to "Expect: 100-continue") comes before a final status.
    final = [s for s in statuses if s != 100]
    assert len(final) >= statuses.count(100)
    assert all(s == 200 or s in ERROR_STATUSES for s in final), statuses
    assert all("\n" not in r.getMessage() for r in records)
    return final


ENDINGS = st.sampled_from(["eof", "stay", "close"])
HYPOTHESIS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@HYPOTHESIS
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=4), ENDINGS)
def test_hypothesis_raw_bytes(data: bytes, cuts: list[int], ending: str) -> None:
    reply, records = run_exchange(split(data, cuts), ending)
    check_reply(reply, records)


TOKEN = st.text(
    alphabet="!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=10,
)
METHODS = (
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "get"]) | TOKEN
)
TARGETS = st.sampled_from(
    [
        "/stats",
        "/metrics",
        "/metrics?x=1",
        "http://[/stats",
        "http://[::1]:80/stats",
        "http://x/metrics",
        "*",
        "//",
        "/%zz",
        "http://a:b@[v1.x]/stats",
        "/stats#frag",
    ]
) | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.x", "http/1.1"])
# Header values: visible latin-1, with the odd control character h11 refuses.
VALUES = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
ACCEPTS = (
    st.builds(
        "{}; version={}; escaping={}".format,
        st.sampled_from(["application/openmetrics-text", "text/plain", "*/*"]),
        st.sampled_from(["1.0.0", "0.0.4", "2.0.0", "zzz", "", "1", "1.0.0.0", "-1", "1e9"])
        | VALUES,
        st.sampled_from(["underscores", "dots", "values", "allow-utf-8", ""]) | VALUES,
    )
    | VALUES
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[list[tuple[str, str]], bytes]:
    """Framing headers and body bytes: none, Content-Length (right, short,
    long, invalid) or chunked (valid or broken)."""
    kind = draw(st.sampled_from(["none", "length", "chunked", "both", "te-other"]))
    payload = draw(st.binary(max_size=60))
    if kind == "none":
        return [], b""
    if kind == "length":
        length = draw(
            st.sampled_from([str(len(payload)), str(len(payload) + 5), "-1", "1x", "99999999999"])
        )
        return [("Content-Length", length)], payload
    if kind == "te-other":
        return [
            ("Transfer-Encoding", draw(st.sampled_from(["gzip", "chunked, gzip", "x"])))
        ], payload
    chunks = b""
    for piece in draw(st.lists(st.binary(max_size=20), max_size=3)):
        size = draw(
            st.sampled_from(
                [f"{len(piece):x}", f"{len(piece) + 1:x}", "zz", "-1", f"{len(piece):x};ext=1"]
            )
        )
        chunks += size.encode() + b"\r\n" + piece + b"\r\n"
    chunks += draw(st.sampled_from([b"0\r\n\r\n", b"0\r\nTrailer: x\r\n\r\n", b"", b"0\r\n"]))
    framing = [("Transfer-Encoding", "chunked")]
    if kind == "both":
        framing.append(("Content-Length", str(len(chunks))))
    return framing, chunks


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method, target, version = draw(METHODS), draw(TARGETS), draw(VERSIONS)
    headers: list[tuple[str, str]] = []
    if draw(st.booleans()):
        headers.append(("Host", draw(st.sampled_from(["x", "", "a b", "[::1]"]))))
    if draw(st.booleans()):
        headers.append(("Accept", draw(ACCEPTS)))
    if draw(st.booleans()):
        headers.append((draw(TOKEN), draw(VALUES)))
    if draw(st.booleans()):
        headers.append(("Expect", "100-continue"))
    if draw(st.booleans()):
        headers.append(("Connection", draw(st.sampled_from(["close", "keep-alive", "upgrade"]))))
    framing, body = draw(bodies())
    head = f"{method} {target} {version}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in [*headers, *framing])
    return head.encode("latin-1") + b"\r\n" + body


@HYPOTHESIS
@given(
    st.lists(requests(), min_size=1, max_size=3),
    st.lists(st.integers(0, 1000), max_size=3),
    ENDINGS,
)
def test_hypothesis_structured_requests(reqs: list[bytes], cuts: list[int], ending: str) -> None:
    """Pipelined requests with hostile methods, targets, versions, headers and
    body framing, sent in arbitrary pieces."""
    reply, records = run_exchange(split(b"".join(reqs), cuts), ending)
    check_reply(reply, records)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACCEPTS.filter(lambda v: "\x7f" not in v and all(c >= " " for c in v)))
def test_hypothesis_any_accept_value_gets_metrics(accept: str) -> None:
    """A well-formed request for /metrics is answered 200 whatever its Accept
    header says (a value the encoders cannot use falls back to text)."""
    request = (
        f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept.strip()}\r\nConnection: close\r\n\r\n"
    )
    reply, records = run_exchange([request.encode("latin-1")], "eof")
    assert check_reply(reply, records) == [200]
    # The metric is there, its name escaped as the Accept header asked.
    assert re.search(
        rb"proxy\W{0,3}process\W{0,3}net\W{0,3}read\W{0,3}bytes", reply.replace(b"_", b".")
    )
