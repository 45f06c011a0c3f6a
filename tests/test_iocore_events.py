"""Codes, ProxyMutex, Event scheduling, MIOBuffer: no sockets."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import trio

from trionet import iocore
from trionet.iocore import (
    EVENT_CONT,
    EVENT_IMMEDIATE,
    EVENT_INTERVAL,
    EVENT_POLL,
    Continuation,
    Event,
    MIOBuffer,
    ProxyMutex,
)

from .iocore_support import running


def test_codes_have_ats_numbers() -> None:
    assert (iocore.EVENT_NONE, EVENT_IMMEDIATE, EVENT_INTERVAL, iocore.EVENT_ERROR) == (0, 1, 2, 3)
    assert (iocore.EVENT_CALL, EVENT_POLL, iocore.EVENT_DONE, EVENT_CONT) == (4, 5, 0, 1)
    vc_names = ["READ_READY", "WRITE_READY", "READ_COMPLETE", "WRITE_COMPLETE", "EOS",
                "INACTIVITY_TIMEOUT", "ACTIVE_TIMEOUT"]  # fmt: skip
    assert [getattr(iocore, "VC_EVENT_" + n) for n in vc_names] == list(range(100, 107))
    assert iocore.VC_EVENT_ERROR == 3
    net_names = ["OPEN", "OPEN_FAILED", "ACCEPT", "ACCEPT_SUCCEED", "ACCEPT_FAILED"]
    assert [getattr(iocore, "NET_EVENT_" + n) for n in net_names] == list(range(200, 205))
    assert (iocore.ENET_THROTTLING, iocore.ENET_CONNECT_TIMEOUT, iocore.ENET_CONNECT_FAILED) == (
        20101,
        20102,
        20103,
    )


def test_proxy_mutex_recursive_and_thread_owned() -> None:
    m = ProxyMutex()
    assert m.try_lock() and m.try_lock() and m.held()
    seen: list[bool] = []
    t = threading.Thread(target=lambda: seen.append(m.try_lock()))
    t.start()
    t.join()
    assert seen == [False]
    m.unlock()
    m.unlock()
    assert not m.held()
    with pytest.raises(RuntimeError, match="non-holder"):
        m.unlock()


class Rec(Continuation):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, float, object]] = []
        self.set_handler(self.h)

    def h(self, event: int, data: object) -> int:
        assert self.mutex.held()
        assert isinstance(data, Event)
        self.calls.append((event, trio.current_time(), data.cookie))
        return EVENT_CONT


async def test_schedule_imm_in_at_every_cancel(autojump_clock: Any) -> None:
    async with running() as unp:
        ep = unp.event_processor
        t0 = trio.current_time()
        imm, later, at, every = Rec(), Rec(), Rec(), Rec()
        ep.schedule_imm(imm, cookie="c")
        ep.schedule_in(later, 2.5)
        ep.schedule_at(at, t0 + 4)
        ev = ep.schedule_every(every, 1.0)
        await trio.sleep(3.5)
        ev.cancel()
        await trio.sleep(10)
    assert imm.calls == [(EVENT_IMMEDIATE, t0, "c")]
    assert later.calls == [(EVENT_INTERVAL, t0 + 2.5, None)]
    assert at.calls == [(EVENT_INTERVAL, t0 + 4, None)]
    assert [t - t0 for _, t, _ in every.calls] == [1.0, 2.0, 3.0]


async def test_reschedule_from_handler_like_start_net_event(autojump_clock: Any) -> None:
    """The seed's NetHandler: startNetEvent switches handler and calls
    e->schedule_every(NET_PERIOD); mainNetEvent then runs every period."""

    class NetHandler(Continuation):
        def __init__(self) -> None:
            super().__init__()
            self.ticks: list[tuple[int, float]] = []
            self.set_handler(self.start_net_event)

        def start_net_event(self, event: int, e: object) -> int:
            assert isinstance(e, Event)
            self.set_handler(self.main_net_event)
            e.schedule_every(0.01)
            return EVENT_CONT

        def main_net_event(self, event: int, e: object) -> int:
            self.ticks.append((event, trio.current_time()))
            return EVENT_CONT

    async with running() as unp:
        nh = NetHandler()
        t0 = trio.current_time()
        ev = unp.event_processor.schedule_imm(nh)
        await trio.sleep(0.035)
        ev.cancel()
    assert [e for e, _ in nh.ticks] == [EVENT_INTERVAL] * 3
    assert [round(t - t0, 6) for _, t in nh.ticks] == [0.01, 0.02, 0.03]


async def test_negative_period_polls_and_signal_from_thread() -> None:
    async with running() as unp:
        poll, sig = Rec(), Rec()
        ev = unp.event_processor.schedule_every(poll, -1)
        for _ in range(5):
            await trio.lowlevel.checkpoint()
        ev.cancel()
        n = len(poll.calls)
        await trio.to_thread.run_sync(unp.event_processor.schedule_imm_signal, sig, 7, "t")
        with trio.fail_after(5):
            while not sig.calls:
                await trio.sleep(0.001)
        await trio.sleep(0.01)
    assert n >= 3 and {e for e, _, _ in poll.calls} == {EVENT_POLL}
    assert len(poll.calls) == n  # nothing after cancel
    assert [(e, c) for e, _, c in sig.calls] == [(7, "t")]


async def test_bad_event_handler_logged_and_stopped(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Bad(Continuation):
        calls = 0

        def h(self, event: int, data: object) -> int:
            Bad.calls += 1
            return "yes"  # type: ignore[return-value]

    async with running() as unp:
        bad = Bad()
        bad.set_handler(bad.h)
        unp.event_processor.schedule_every(bad, 1)
        await trio.sleep(5)
    assert Bad.calls == 1
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("Bad" in m and "EVENT_INTERVAL" in m and "'yes'" in m for m in msgs), msgs


def test_mio_buffer_readers_and_water_mark() -> None:
    buf = MIOBuffer(size=10, water_mark=3)
    a = buf.alloc_reader()
    buf.write(b"abcdef")
    b = buf.alloc_reader()
    assert a.read_avail() == b.read_avail() == 6 and buf.write_avail() == 4
    assert buf.high_water()
    assert a.read(4) == b"abcd" and b.peek(2) == b"ab" and buf.max_read_avail() == 6
    b.consume(6)
    assert buf.write_avail() == 8 and a.read() == b"ef" and buf.write_avail() == 10
    with pytest.raises(ValueError, match="n=1"):
        a.consume(1)
    with pytest.raises(ValueError, match="size=0"):
        MIOBuffer(0)
    with pytest.raises(TypeError, match="water_mark"):
        MIOBuffer(10, water_mark="x")  # type: ignore[arg-type]
