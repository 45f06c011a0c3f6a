"""Helpers shared by the iocore tests: a running shim, an acceptor that records
what it is given, and paired active/passive VCs over loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

import trionet
from trionet.iocore import (
    EVENT_CONT,
    NET_EVENT_ACCEPT,
    NET_EVENT_OPEN,
    Continuation,
    NetAcceptAction,
    NetVConnection,
    UnixNetProcessor,
    open_net_processor,
)

LOCAL = trionet.AcceptOptions(host="127.0.0.1")


class Acceptor(Continuation):
    """Records every (event, data) it gets; calls ``on_vc`` for each accepted VC."""

    def __init__(self, on_vc: Callable[[NetVConnection], object] | None = None) -> None:
        super().__init__()
        self.events: list[tuple[int, object]] = []
        self.vcs: list[NetVConnection] = []
        self.on_vc = on_vc
        self.arrived = trio.Event()
        self.set_handler(self.main_event)

    def main_event(self, event: int, data: object) -> int:
        self.events.append((event, data))
        if event == NET_EVENT_ACCEPT:
            assert isinstance(data, NetVConnection)
            assert self.mutex.held(), "NET_EVENT_ACCEPT must arrive under the acceptor's mutex"
            self.vcs.append(data)
            if self.on_vc is not None:
                self.on_vc(data)
        self.arrived.set()
        return EVENT_CONT


@asynccontextmanager
async def running(
    net: trionet.NetProcessor | None = None, **kwargs: float
) -> AsyncIterator[UnixNetProcessor]:
    async with open_net_processor(net, **kwargs) as unp:
        yield unp


async def listen(unp: UnixNetProcessor, acceptor: Continuation,
                 opts: trionet.AcceptOptions = LOCAL) -> tuple[NetAcceptAction, int]:  # fmt: skip
    action = unp.accept(acceptor, opts)
    ports = await action.wait_listening()
    assert ports, "the port did not open"
    return action, ports[0]


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.001
) -> None:
    """Poll ``predicate`` every ``step`` seconds (bounded by ``timeout``)."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


def pattern(seed: int, n: int, offset: int = 0) -> bytes:
    """ATS NetVCTest's byte pattern: seed, seed+1, ... (mod 256)."""
    return bytes((seed + offset + i) & 0xFF for i in range(n))


class Opener(Continuation):
    """Records what connect_re / connect_s deliver."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, object]] = []
        self.arrived = trio.Event()
        self.set_handler(self.main_event)

    def main_event(self, event: int, data: object) -> int:
        assert self.mutex.held()
        self.events.append((event, data))
        self.arrived.set()
        return EVENT_CONT


async def outbound_vc(
    unp: UnixNetProcessor, port: int, sockopts: trionet.SocketOptions | None = None
) -> NetVConnection:
    """An outbound VC to 127.0.0.1:port, opened with connect_re."""
    opener = Opener()
    opts = trionet.ConnectOptions(socket=sockopts or trionet.SocketOptions())
    unp.connect_re(opener, ("127.0.0.1", port), opts)
    with trio.fail_after(5):
        await opener.arrived.wait()
    [(event, vc)] = opener.events
    assert event == NET_EVENT_OPEN, opener.events
    assert isinstance(vc, NetVConnection)
    return vc
