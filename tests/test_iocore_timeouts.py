"""iocore timeouts: a zero timeout is no timeout, as in ATS; hostile values for
the processor's default, the VC setters and the event scheduler are refused
naming the argument and the value.

ATS: ``default_inactivity_timeout`` is applied only when ``> 0``, and
``set_inactivity_timeout(0)`` leaves ``next_inactivity_timeout_at`` at 0,
which the InactivityCop skips. Run as a 0-second timeout instead, a waiting
VC got a timeout event, re-armed, and got the next one at once: thousands of
events a second, a full core.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trionet
from trionet.iocore import (
    EVENT_CONT,
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_INACTIVITY_TIMEOUT,
    Continuation,
    MIOBuffer,
    NetVConnection,
    open_net_processor,
)

from .iocore_support import Acceptor, listen, running

A_MONTH = 30 * 86400.0
GUARD = 50  # a VC that got this many timeout events is closed (old code never stopped)


@pytest.fixture
def flowing_clock() -> trio.testing.MockClock:
    """An autojump MockClock whose time also flows with real time (rate 1).

    Plain autojump time stands still while anything runs, so the old
    zero-timeout storm spun for ever at one instant (a 0 s deadline re-armed
    at the same mock time) and hung the test; with time flowing, that old
    behaviour reaches GUARD events and fails the count instead. Idle waits
    still jump: a month passes in milliseconds."""
    return trio.testing.MockClock(rate=1.0, autojump_threshold=0)


class Timeouts(Continuation):
    """Counts the timeout events its VC gets (with their times); closes the
    VC after GUARD of them so a timeout storm ends instead of hanging the test."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[tuple[int, float]] = []
        self.vc: NetVConnection | None = None
        self.set_handler(self.handle)

    def handle(self, event: int, data: object) -> int:
        if event in (VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT):
            self.times.append((event, trio.current_time()))
            if len(self.times) >= GUARD and self.vc is not None:
                self.vc.do_io_close()
        return EVENT_CONT


async def waiting_vc(unp: Any) -> tuple[NetVConnection, Timeouts, trio.SocketStream]:
    """An accepted VC waiting to read 10 bytes that never come."""
    rec = Timeouts()
    acceptor = Acceptor(on_vc=lambda vc: vc.do_io_read(rec, 10, MIOBuffer()))
    _, port = await listen(unp, acceptor)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await acceptor.arrived.wait()
    rec.vc = acceptor.vcs[0]
    return acceptor.vcs[0], rec, client


async def test_zero_default_inactivity_timeout_means_none(flowing_clock: Any) -> None:
    net = trionet.NetProcessor()
    async with running(net, default_inactivity_timeout=0) as unp:
        vc, rec, client = await waiting_vc(unp)
        assert vc.get_inactivity_timeout() == 0
        await trio.sleep(A_MONTH)
        assert rec.times == []
        assert not vc.closed and vc.connection.inactivity_timeout is None
        assert net.statistics().default_inactivity_timeout_applied == 0
        assert net.statistics().inactivity_timeouts == 0
        vc.do_io_close()
        await client.aclose()


async def test_vc_timeout_then_zero_stops_it(flowing_clock: Any) -> None:
    """With a zero default: a VC's own 5 s timeout fires every 5 s while it
    waits (ATS re-arms); set back to 0, nothing more fires for a month."""
    async with running(default_inactivity_timeout=0) as unp:
        vc, rec, client = await waiting_vc(unp)
        t0 = trio.current_time()
        vc.set_inactivity_timeout(5)
        await trio.sleep(12)
        assert [e for e, _ in rec.times] == [VC_EVENT_INACTIVITY_TIMEOUT] * 2
        assert [t - t0 for _, t in rec.times] == pytest.approx([5.0, 10.0], abs=0.1)
        vc.set_inactivity_timeout(0)
        await trio.sleep(A_MONTH)
        assert len(rec.times) == 2
        vc.do_io_close()
        await client.aclose()


async def test_zero_active_timeout_is_none(flowing_clock: Any) -> None:
    async with running(default_inactivity_timeout=0) as unp:
        vc, rec, client = await waiting_vc(unp)
        vc.set_active_timeout(10)
        assert vc.get_active_timeout() == pytest.approx(10, abs=0.1)
        vc.set_active_timeout(0)
        assert vc.get_active_timeout() is None
        await trio.sleep(A_MONTH)
        assert rec.times == []
        vc.do_io_close()
        await client.aclose()


async def test_zero_inactivity_set_on_the_connection_fires_once(flowing_clock: Any) -> None:
    """The native setter still takes 0 ("time out now"): the VC gets one
    event, and its re-arm does not turn that into a storm."""
    async with running() as unp:
        vc, rec, client = await waiting_vc(unp)
        vc.connection.inactivity_timeout = 0
        await trio.sleep(A_MONTH)
        assert [e for e, _ in rec.times] == [VC_EVENT_INACTIVITY_TIMEOUT]
        vc.do_io_close()
        await client.aclose()


# ------------------------------------------------------------ hostile values
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.sampled_from([0, 2**31, 2**63, 10**400, -(10**400)]),
    st.floats(),
    st.text(max_size=5),
    st.just(object()),
)


def assert_named(exc: BaseException, name: str, value: object) -> None:
    assert isinstance(exc, TypeError | ValueError) and not isinstance(exc, OverflowError)
    assert f"{name}={value!r}" in str(exc), str(exc)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["inactivity", "active"]), VALUES), max_size=8))
def test_vc_timeout_setters(calls: list[tuple[str, Any]]) -> None:
    """Either refused naming ``NetVConnection.<which>_timeout`` and the value,
    or in force: get_*_timeout() reports it (0 or None: the default / none)."""

    async def main() -> None:
        async with running() as unp:
            vc, _, client = await waiting_vc(unp)
            for which, value in calls:
                setter = getattr(vc, f"set_{which}_timeout")
                try:
                    setter(value)
                except (TypeError, ValueError) as exc:
                    assert_named(exc, f"NetVConnection.{which}_timeout", value)
                    continue
                if which == "inactivity":
                    want = float(value) if value else unp.default_inactivity_timeout
                    assert vc.get_inactivity_timeout() == want
                elif not value:
                    assert vc.get_active_timeout() is None
                elif value != math.inf:
                    left = vc.get_active_timeout()
                    assert left is not None and 0 <= left <= float(value)
            vc.do_io_close()
            await client.aclose()

    trio.run(main)


@settings(max_examples=60, deadline=None)
@given(VALUES)
def test_processor_default_inactivity_timeout(value: Any) -> None:
    async def main() -> None:
        try:
            async with open_net_processor(default_inactivity_timeout=value) as unp:
                assert unp.default_inactivity_timeout == float(value or 0)  # None: none
        except (TypeError, ValueError) as exc:
            assert_named(exc, "open_net_processor.default_inactivity_timeout", value)

    trio.run(main)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["schedule_in", "schedule_at", "schedule_every"]), VALUES)
def test_event_scheduling_times(call: str, value: Any) -> None:
    """Refused naming ``timeout=`` / ``when=`` / ``period=`` and the value
    (10**400 was a bare OverflowError), or scheduled."""
    name = {"schedule_in": "timeout", "schedule_at": "when", "schedule_every": "period"}[call]

    async def main() -> None:
        async with running() as unp:
            cont = Timeouts()
            try:
                event = getattr(unp.event_processor, call)(cont, value)
            except (TypeError, ValueError) as exc:
                assert_named(exc, name, value)
                return
            assert not event.cancelled
            event.cancel()

    trio.run(main)


@pytest.mark.parametrize("fd", [-1, 2**31, 2**70, True, "3", 3.0])
async def test_main_accept_fd_is_checked(fd: Any) -> None:
    async with running() as unp:
        with pytest.raises(ValueError) as info:
            unp.main_accept(Acceptor(), fd)
        assert f"UnixNetProcessor.main_accept.fd={fd!r}" in str(info.value)
