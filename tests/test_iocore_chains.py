"""The seed's two chains, connect failures, timeouts and contract violations,
each against real loopback connections."""

from __future__ import annotations

import errno
import logging
import socket
from typing import Any

import pytest
import trio

import trionet
from trionet.iocore import (
    ENET_CONNECT_FAILED,
    ENET_CONNECT_TIMEOUT,
    ENET_THROTTLING,
    EVENT_CONT,
    EVENT_DONE,
    EVENT_ERROR,
    NET_EVENT_ACCEPT,
    NET_EVENT_ACCEPT_FAILED,
    NET_EVENT_ACCEPT_SUCCEED,
    NET_EVENT_OPEN_FAILED,
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_EOS,
    VC_EVENT_INACTIVITY_TIMEOUT,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
    Continuation,
    MIOBuffer,
    NetVConnection,
)

from .iocore_support import LOCAL, Acceptor, Opener, listen, outbound_vc, running, wait_until


class Recorder(Continuation):
    """Records (event, vio.ndone) and reenables reads; returns ``ret``."""

    def __init__(self, ret: Any = EVENT_CONT) -> None:
        super().__init__()
        self.events: list[int] = []
        self.ret = ret
        self.set_handler(self.handle)

    def handle(self, event: int, data: object) -> int:
        assert self.mutex.held()
        self.events.append(event)
        result: int = self.ret
        return result


async def test_accept_chain_main_accept_fd() -> None:
    """start -> main_accept(fd) -> NET_EVENT_ACCEPT -> do_io_read -> READ_READY/COMPLETE."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    port = lsock.getsockname()[1]
    reader = Recorder()
    buf = MIOBuffer()
    r = buf.alloc_reader()
    acceptor = Acceptor(on_vc=lambda vc: vc.do_io_read(reader, 10, buf))
    net = trionet.NetProcessor()
    async with running(net) as unp:
        action = unp.main_accept(acceptor, lsock.detach())
        assert await action.wait_listening() == [port]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"hello")
        await wait_until(lambda: VC_EVENT_READ_READY in reader.events)
        await client.send_all(b"world!")
        await wait_until(lambda: VC_EVENT_READ_COMPLETE in reader.events)
        assert [e for e, _ in acceptor.events] == [NET_EVENT_ACCEPT]
        assert reader.events == [VC_EVENT_READ_READY, VC_EVENT_READ_COMPLETE]
        assert r.read() == b"helloworld"  # exactly nbytes; the "!" stays in the socket
        vc = acceptor.vcs[0]
        assert vc.read_vio.ndone == 10 and vc.get_remote_addr() == client.socket.getsockname()
        vc.do_io_close()
        with pytest.raises(trio.BrokenResourceError):  # "!" was never read: reset
            await client.receive_some(10)
        await client.aclose()
        action.cancel()
        await wait_until(lambda: net.statistics().accepts_currently_open == 0)
        assert net.statistics().connections_currently_open == 0


async def test_connect_chain_write_complete() -> None:
    """connect_re -> NET_EVENT_OPEN -> do_io_write -> WRITE_READY ... WRITE_COMPLETE."""
    got = bytearray()

    async def sink(conn: trionet.Connection) -> None:
        while data := await conn.receive_some():
            got.extend(data)

    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery, running(net) as unp:
        server = await nursery.start(net.serve, sink, LOCAL)
        vc = await outbound_vc(unp, server.ports[0])
        writer = Recorder()
        buf = MIOBuffer()
        payload = bytes(range(256)) * 400  # 100 KiB: several sends
        buf.write(payload)
        vio = vc.do_io_write(writer, len(payload), buf.alloc_reader())
        await wait_until(lambda: VC_EVENT_WRITE_COMPLETE in writer.events)
        assert vio is not None and vio.ndone == len(payload)
        assert writer.events[-1] == VC_EVENT_WRITE_COMPLETE
        assert set(writer.events[:-1]) <= {VC_EVENT_WRITE_READY}
        vc.do_io_close()
        await wait_until(lambda: len(got) == len(payload))
        assert bytes(got) == payload
        server.shutdown(0)
    assert net.statistics().connections_currently_open == 0


async def test_connect_refused_and_connect_s() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        async with running() as unp:
            a, b = Opener(), Opener()
            unp.connect_re(a, ("127.0.0.1", port))
            unp.connect_s(b, ("127.0.0.1", port), timeout=5)
            await a.arrived.wait()
            await b.arrived.wait()
    assert a.events == [(NET_EVENT_OPEN_FAILED, -errno.ECONNREFUSED)]
    assert b.events == [(NET_EVENT_OPEN_FAILED, -ENET_CONNECT_FAILED)]


class _Hang:
    async def resolve(self, host: str, port: int, family: int) -> list[Any]:
        await trio.sleep_forever()
        raise AssertionError


async def test_connect_timeout_and_cancel(autojump_clock: Any) -> None:
    net = trionet.NetProcessor()
    async with running(net) as unp:
        a, b, c = Opener(), Opener(), Opener()
        opts = trionet.ConnectOptions(connect_timeout=2, resolver=_Hang())  # type: ignore[arg-type]
        t0 = trio.current_time()
        unp.connect_re(a, ("example.invalid", 80), opts)
        unp.connect_s(b, ("example.invalid", 80), timeout=3, options=opts)
        action = unp.connect_re(c, ("example.invalid", 80), opts)
        await trio.sleep(1)
        action.cancel()  # before completion: no callback, nothing left open
        await a.arrived.wait()
        assert trio.current_time() - t0 == pytest.approx(2)
        await b.arrived.wait()
        assert a.events == [(NET_EVENT_OPEN_FAILED, -ENET_CONNECT_TIMEOUT)]
        assert b.events == [(NET_EVENT_OPEN_FAILED, -ENET_CONNECT_TIMEOUT)]
        assert c.events == []
    assert net.statistics().connections_currently_open == 0


async def test_connect_throttled() -> None:
    net = trionet.NetProcessor(max_connections=1)
    async with running(net) as unp:
        acceptor = Acceptor()
        _, port = await listen(unp, acceptor)
        vc = await outbound_vc(unp, port)  # takes the only slot
        d = Opener()
        unp.connect_re(d, ("127.0.0.1", port))
        await d.arrived.wait()
        assert d.events == [(NET_EVENT_OPEN_FAILED, -ENET_THROTTLING)]
        vc.do_io_close()
    assert net.statistics().connections_currently_open == 0


async def test_accept_bind_failure_is_event_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        async with running() as unp:
            acceptor = Acceptor()
            action = unp.accept(acceptor, trionet.AcceptOptions(host="127.0.0.1", port=port))
            assert await action.wait_listening() == []
            await acceptor.arrived.wait()
    assert acceptor.events == [(EVENT_ERROR, -errno.EADDRINUSE)]


async def test_callback_on_open_succeed_then_accept_and_failed() -> None:
    # ATS f_callback_on_open: NET_EVENT_ACCEPT_SUCCEED once the port is open,
    # NET_EVENT_ACCEPT_FAILED with -errno when it cannot be.
    async with running() as unp:
        acceptor = Acceptor()
        action = unp.accept(acceptor, LOCAL, callback_on_open=True)
        (port,) = await action.wait_listening()
        await wait_until(lambda: len(acceptor.events) == 1)
        assert acceptor.events == [(NET_EVENT_ACCEPT_SUCCEED, action)]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await wait_until(lambda: len(acceptor.vcs) == 1)
        assert [e for e, _ in acceptor.events] == [NET_EVENT_ACCEPT_SUCCEED, NET_EVENT_ACCEPT]
        refused = Acceptor()
        taken = trionet.AcceptOptions(host="127.0.0.1", port=port)
        assert await unp.accept(refused, taken, callback_on_open=True).wait_listening() == []
        await refused.arrived.wait()
        assert refused.events == [(NET_EVENT_ACCEPT_FAILED, -errno.EADDRINUSE)]
        acceptor.vcs[0].do_io_close()
        await client.aclose()


async def test_cancelled_accept_closes_port_vcs_live_on() -> None:
    async with running() as unp:
        echo_reader = Recorder()
        buf = MIOBuffer()
        acceptor = Acceptor(on_vc=lambda vc: vc.do_io_read(echo_reader, 3, buf))
        action, port = await listen(unp, acceptor)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await acceptor.arrived.wait()
        action.cancel()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"abc")  # the accepted VC still works
        await wait_until(lambda: echo_reader.events == [VC_EVENT_READ_COMPLETE])
        await client.aclose()


async def test_inactivity_timeout_reader_then_writer_and_vc_stays_usable(
    autojump_clock: Any,
) -> None:
    async with running() as unp:
        rd, wr = Recorder(EVENT_CONT), Recorder(EVENT_CONT)
        acceptor = Acceptor()
        _, port = await listen(unp, acceptor)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await acceptor.arrived.wait()
        vc = acceptor.vcs[0]
        vc.set_inactivity_timeout(5)
        rbuf, wbuf = MIOBuffer(), MIOBuffer()
        vc.do_io_read(rd, 100, rbuf)
        vc.do_io_write(wr, 100, wbuf.alloc_reader())  # nothing to write: WRITE_READY
        t0 = trio.current_time()
        await wait_until(lambda: VC_EVENT_INACTIVITY_TIMEOUT in wr.events, timeout=60)
        assert trio.current_time() - t0 == pytest.approx(5)
        assert rd.events == [VC_EVENT_INACTIVITY_TIMEOUT]
        assert wr.events == [VC_EVENT_WRITE_READY, VC_EVENT_INACTIVITY_TIMEOUT]
        await client.send_all(b"still here")  # usable after the timeout
        await wait_until(lambda: VC_EVENT_READ_READY in rd.events)
        # A reader returning EVENT_DONE keeps the event from the writer.
        rd.ret = EVENT_DONE
        await wait_until(lambda: rd.events.count(VC_EVENT_INACTIVITY_TIMEOUT) == 2, 60)
        await trio.sleep(1)
        assert wr.events.count(VC_EVENT_INACTIVITY_TIMEOUT) == 1
        # Both sides disabled: the clock pauses, nothing more arrives.
        vc.read_vio.disable()
        vc.write_vio.disable()
        n = len(rd.events) + len(wr.events)
        await trio.sleep(1000)
        assert len(rd.events) + len(wr.events) == n
        vc.do_io_close()
        await client.aclose()


async def test_active_timeout_on_busy_vc_reader_then_writer(autojump_clock: Any) -> None:
    # ATS issue 2761: active timeouts must fire on a connection busy all along.
    async with running() as unp:
        rd, wr = Recorder(EVENT_CONT), Recorder(EVENT_CONT)
        acceptor = Acceptor()
        _, port = await listen(unp, acceptor)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await acceptor.arrived.wait()
        vc = acceptor.vcs[0]
        vc.set_active_timeout(3)
        t0 = trio.current_time()
        rbuf, wbuf = MIOBuffer(), MIOBuffer()
        reader = rbuf.alloc_reader()
        read_vio = vc.do_io_read(rd, 1 << 62, rbuf)
        vc.do_io_write(wr, 1 << 62, wbuf.alloc_reader())
        while VC_EVENT_ACTIVE_TIMEOUT not in wr.events:
            await client.send_all(b"busy")  # traffic every 10 ms until the deadline
            await trio.sleep(0.01)
            reader.consume(reader.read_avail())
            read_vio.reenable()
            assert trio.current_time() - t0 < 4, "active timeout did not fire"
        assert trio.current_time() - t0 == pytest.approx(3, abs=0.011)
        assert rd.events.count(VC_EVENT_ACTIVE_TIMEOUT) == 1
        assert rd.events.index(VC_EVENT_ACTIVE_TIMEOUT) > 100  # many reads before it
        assert wr.events.count(VC_EVENT_ACTIVE_TIMEOUT) == 1
        vc.do_io_close()
        await client.aclose()


async def test_tls_vc_reads_and_writes_through_the_tls_connection() -> None:
    # ATS's SSLNetVConnection: the same VIO contract over a TLS connection.
    import ssl

    import trustme

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    net = trionet.NetProcessor()
    async with running(net) as unp:
        acceptor = Acceptor()
        opts = trionet.AcceptOptions(host="127.0.0.1", ssl_context=server_ctx)
        _, port = await listen(unp, acceptor, opts)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        client = trio.SSLStream(tcp, client_ctx, server_hostname="localhost")
        await client.send_all(b"hello")  # handshake, then 5 bytes
        await acceptor.arrived.wait()
        vc = acceptor.vcs[0]
        assert vc.connection.tls is not None and vc.connection.tls.server_name == "localhost"
        rd, wr = Recorder(EVENT_CONT), Recorder(EVENT_CONT)
        rbuf = MIOBuffer()
        reader = rbuf.alloc_reader()
        vc.do_io_read(rd, 5, rbuf)
        await wait_until(lambda: VC_EVENT_READ_COMPLETE in rd.events)
        assert reader.read_avail() == 5
        vc.do_io_write(wr, 5, reader)  # echo what was read
        await wait_until(lambda: VC_EVENT_WRITE_COMPLETE in wr.events)
        assert await client.receive_some() == b"hello"
        vc.do_io_read(rd, 100, rbuf)
        await client.aclose()  # close_notify: end of stream
        await wait_until(lambda: VC_EVENT_EOS in rd.events)
        vc.do_io_close()
    assert net.statistics().connections_currently_open == 0
    assert net.statistics().tls_handshake_errors == 0


async def test_default_inactivity_timeout_applies(autojump_clock: Any) -> None:
    net = trionet.NetProcessor()
    async with running(net) as unp:
        rd = Recorder()
        acceptor = Acceptor(on_vc=lambda vc: vc.do_io_read(rd, 10, MIOBuffer()))
        _, port = await listen(unp, acceptor)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await acceptor.arrived.wait()
        t0 = trio.current_time()
        assert acceptor.vcs[0].get_inactivity_timeout() == 86400
        await wait_until(lambda: rd.events != [], timeout=100000, step=10)
        assert rd.events == [VC_EVENT_INACTIVITY_TIMEOUT]
        assert trio.current_time() - t0 == pytest.approx(86400, abs=10)  # polled every 10 s
        assert net.statistics().default_inactivity_timeout_applied == 1
        await client.aclose()


@pytest.mark.parametrize("how", ["returns None", "raises", "no handler"])
async def test_contract_violation_is_logged_and_closes(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Bad(Continuation):
        def handle(self, event: int, data: object) -> int:
            if how == "raises":
                raise RuntimeError("boom")
            return None  # type: ignore[return-value]

    bad = Bad()
    if how != "no handler":
        bad.set_handler(bad.handle)
    net = trionet.NetProcessor()
    async with running(net) as unp:
        acceptor = Acceptor(on_vc=lambda vc: vc.do_io_read(bad, 10, MIOBuffer()))
        _, port = await listen(unp, acceptor)
        for _ in range(2):  # the server survives and keeps accepting
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.send_all(b"x")
            assert await client.receive_some(10) == b""  # closed by the shim
            await client.aclose()
        await wait_until(lambda: net.statistics().connections_currently_open == 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("Bad" in m and "VC_EVENT_READ_READY" in m for m in errors), errors
    assert net.statistics().handler_errors == 2


async def test_no_event_after_close_or_cancel() -> None:
    async with running() as unp:
        rd = Recorder()
        acceptor = Acceptor()
        action, port = await listen(unp, acceptor)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await acceptor.arrived.wait()
        vc: NetVConnection = acceptor.vcs[0]
        vc.do_io_read(rd, 100, MIOBuffer())
        vc.do_io_close()
        assert vc.do_io_read(rd, 100, MIOBuffer()) is None
        action.cancel()
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(100):
                await client.send_all(b"late bytes")
                await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
        assert rd.events == [] and [e for e, _ in acceptor.events] == [NET_EVENT_ACCEPT]
        await client.aclose()


async def test_eos_on_peer_close() -> None:
    async with running() as unp:
        rd = Recorder()
        buf = MIOBuffer()
        r = buf.alloc_reader()
        acceptor = Acceptor(on_vc=lambda vc: vc.do_io_read(rd, 1000, buf))
        _, port = await listen(unp, acceptor)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await client.send_all(b"bye")
        await client.aclose()
        await wait_until(lambda: VC_EVENT_EOS in rd.events)
        assert r.read() == b"bye" and rd.events[-1] == VC_EVENT_EOS
        acceptor.vcs[0].do_io_close()
