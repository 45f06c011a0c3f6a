"""The ATS-compatibility calls of the shim that no ported test or example
exercised: each is ATS API that code written against ATS calls, so each
gets a test here rather than going."""

from __future__ import annotations

import threading
import time

import pytest
import trio
import trio.testing

from trionet.iocore import (
    EVENT_CONT,
    INT64_MAX,
    NET_EVENT_OPEN_FAILED,
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    Continuation,
    MIOBuffer,
    NetAcceptAction,
    NetVConnection,
    ProxyMutex,
    UnixNetProcessor,
)

from .iocore_support import Acceptor, Opener, listen, outbound_vc, running, wait_until


class Recorder(Continuation):
    """Records every event with its data; returns EVENT_CONT."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[int, object]] = []
        self.set_handler(self.main_event)

    def main_event(self, event: int, data: object) -> int:
        self.events.append((event, data))
        return EVENT_CONT

    def count(self, event: int) -> int:
        return sum(1 for e, _ in self.events if e == event)


def test_reader_clone_copy_and_deallocation() -> None:
    buf = MIOBuffer(64)
    first = buf.alloc_reader()
    buf.write(b"abcdef")
    second = first.clone()
    assert second.read_avail() == first.read_avail() == 6
    assert first.copy(3) == first.peek(3) == b"abc"
    first.consume(4)
    assert (first.read(), second.read_avail()) == (b"ef", 6)  # a clone reads on its own
    assert second.is_read_avail_more_than(5) and not second.is_read_avail_more_than(6)
    assert buf.max_read_avail() == 6  # the slowest reader holds the bytes
    buf.dealloc_reader(second)
    assert not second.allocated() and first.allocated()
    assert buf.max_read_avail() == 0
    with pytest.raises(RuntimeError, match="deallocated"):
        second.read_avail()
    buf.dealloc_all_readers()
    assert not first.allocated()
    assert buf.write_avail() == 64


def test_proxy_mutex_blocking_lock_across_threads() -> None:
    mutex = ProxyMutex()
    mutex.lock()
    assert mutex.thread_holding is threading.current_thread()
    order: list[str] = []

    def other() -> None:
        with mutex:  # blocks until the main thread unlocks
            order.append("other")
            assert mutex.thread_holding is threading.current_thread()

    worker = threading.Thread(target=other)
    worker.start()
    time.sleep(0.05)
    order.append("main")
    mutex.unlock()
    worker.join(5)
    assert order == ["main", "other"]
    assert mutex.thread_holding is None


async def test_proxy_mutex_lock_refuses_to_block_a_trio_task() -> None:
    mutex = ProxyMutex()
    held = trio.Event()
    release = trio.Event()

    async def holder() -> None:
        assert mutex.try_lock()
        held.set()
        await release.wait()
        mutex.unlock()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(holder)
        await held.wait()
        with pytest.raises(RuntimeError, match="must use try_lock"):
            mutex.lock()
        release.set()


async def _accepted_pair(
    unp: UnixNetProcessor,
) -> tuple[trio.SocketStream, NetVConnection, NetAcceptAction]:
    acceptor = Acceptor()
    action, port = await listen(unp, acceptor)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await acceptor.arrived.wait()
    [vc] = acceptor.vcs
    return client, vc, action


async def test_vio_disable_is_disabled_reenable_re_and_done() -> None:
    async with running() as unp:
        client, vc, _ = await _accepted_pair(unp)
        rec = Recorder()
        buf = MIOBuffer(1024)
        reader = buf.alloc_reader()
        vio = vc.do_io_read(rec, INT64_MAX, buf)
        assert vio is not None and not vio.is_disabled()
        vio.disable()
        assert vio.is_disabled()
        await client.send_all(b"held back")
        await trio.sleep(0.1)
        assert rec.count(VC_EVENT_READ_READY) == 0  # disabled: nothing read
        vio.reenable_re()
        assert not vio.is_disabled()
        await wait_until(lambda: rec.count(VC_EVENT_READ_READY) == 1)
        assert (reader.read(), vio.ndone) == (b"held back", 9)
        vio.done()  # a read stops where it is
        assert (vio.nbytes, vio.ntodo()) == (9, 0)
        await client.send_all(b"more")
        await trio.sleep(0.1)
        assert rec.count(VC_EVENT_READ_READY) == 1 and vio.ndone == 9
        vc.do_io_close()
        await client.aclose()


async def test_write_vio_done_ends_after_the_buffered_bytes() -> None:
    async with running() as unp:
        client, vc, _ = await _accepted_pair(unp)
        rec = Recorder()
        buf = MIOBuffer(1024)
        reader = buf.alloc_reader()
        buf.write(b"0123456789")
        vio = vc.do_io_write(rec, INT64_MAX, reader)
        assert vio is not None
        vio.done()  # ATS: a write ends after the bytes already in its buffer
        assert vio.nbytes == 10
        await wait_until(lambda: rec.count(VC_EVENT_WRITE_COMPLETE) == 1)
        assert await client.receive_some(100) == b"0123456789"
        assert vio.ndone == 10
        vc.reenable_re(vio)  # nothing left to do: no second completion
        await trio.sleep(0.05)
        assert rec.count(VC_EVENT_WRITE_COMPLETE) == 1
        vc.do_io_close()
        await client.aclose()


async def test_addresses_and_active_timeout_accessors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as unp:
        acceptor = Acceptor()
        _, port = await listen(unp, acceptor)
        out = await outbound_vc(unp, port)
        await acceptor.arrived.wait()
        [inbound] = acceptor.vcs
        assert out.get_remote_addr() == inbound.get_local_addr() == ("127.0.0.1", port)
        assert out.get_local_addr() == inbound.get_remote_addr()
        rec = Recorder()
        inbound.do_io_read(rec, INT64_MAX, MIOBuffer())
        assert inbound.get_active_timeout() is None
        inbound.set_active_timeout(30)
        assert inbound.get_active_timeout() == pytest.approx(30)
        await trio.sleep(10)
        assert inbound.get_active_timeout() == pytest.approx(20)
        inbound.cancel_active_timeout()
        assert inbound.get_active_timeout() is None
        await trio.sleep(60)
        assert rec.count(VC_EVENT_ACTIVE_TIMEOUT) == 0  # cancelled: it never fires
        inbound.set_active_timeout(5)
        await trio.sleep(6)
        assert rec.count(VC_EVENT_ACTIVE_TIMEOUT) == 1
        out.do_io_close()
        inbound.do_io_close()


async def test_stop_accept_closes_every_port_and_keeps_open_vcs() -> None:
    async with running() as unp:
        client, vc, action = await _accepted_pair(unp)
        port = action.ports[0]
        unp.stop_accept()
        assert action.cancelled
        opener = Opener()
        unp.connect_re(opener, ("127.0.0.1", port))
        await opener.arrived.wait()
        [(event, code)] = opener.events
        assert event == NET_EVENT_OPEN_FAILED and isinstance(code, int) and code < 0
        assert not vc.closed  # the VC already accepted carries on
        rec = Recorder()
        buf = MIOBuffer()
        vc.do_io_read(rec, INT64_MAX, buf)
        await client.send_all(b"still here")
        await wait_until(lambda: rec.count(VC_EVENT_READ_READY) >= 1)
        vc.do_io_close()
        await client.aclose()
