"""``trionet.examples.tcp_proxy`` written the way ATS code is written, on trionet.iocore:
an accept continuation, ``connect_re`` to the upstream, then two VIO pairs
(client read -> upstream write, upstream read -> client write) driven by a
state machine, as ATS's tunnels are.

    python -m trionet.examples.ats_tunnel --port 8081 --upstream 127.0.0.1:7007

Per client: ``NET_EVENT_ACCEPT`` starts a :class:`TunnelSM`, which calls
``connect_re``; ``NET_EVENT_OPEN`` sets up the four VIOs. ``READ_READY`` on one
side re-enables the opposite write; ``WRITE_READY`` re-enables the opposite
read once the buffer drained (backpressure: a full MIOBuffer stops reading).
``EOS`` on a read finishes the opposite write after the buffered bytes and then
shuts that side down for writing (half-close). The session ends when both
directions have, or at the first error or timeout. Ctrl-C stops accepting,
gives open sessions ``--grace`` seconds, and prints the statistics.

An abort stays an abort: a reset on one side (which the shim, like ATS,
reports as ``EOS``; ``vc.connection.broken`` tells it from a clean EOF), an
error, a timeout, or the end of the shutdown grace aborts both sides -- an RST,
never a half-close that would make a truncated stream look complete.

Compare it with ``trionet.examples.tcp_proxy``, which does the same in a few
lines of the native API.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from dataclasses import dataclass, field

import trio

import trionet
from trionet import iocore
from trionet.iocore import (
    EVENT_CONT,
    EVENT_DONE,
    INT64_MAX,
    IO_SHUTDOWN_WRITE,
    NET_EVENT_ACCEPT,
    NET_EVENT_OPEN,
    NET_EVENT_OPEN_FAILED,
    VC_EVENT_EOS,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
    VIO,
    Continuation,
    MIOBuffer,
    NetVConnection,
)

BUFFER_SIZE = 32768  # ATS BUFFER_SIZE_INDEX_32K


@dataclass
class Tally:
    sessions: int = 0
    live: set[TunnelSM] = field(default_factory=set)  # sessions not finished yet
    upstream_failures: int = 0
    errors: int = 0  # resets, errors, timeouts, sessions cut by the shutdown
    bytes_up: int = 0
    bytes_down: int = 0
    all_closed: trio.Event = field(default_factory=trio.Event)


@dataclass
class Direction:
    """One VIO pair: ``read`` fills ``buf``; ``write`` drains it."""

    read: VIO
    write: VIO
    source: NetVConnection  # the side ``read`` reads from
    target: NetVConnection  # the side ``write`` writes to
    eos: bool = False
    finished: bool = False


class TunnelSM(Continuation):
    """One client session: connecting, then tunnelling both ways."""

    def __init__(
        self,
        client: NetVConnection,
        unp: iocore.UnixNetProcessor,
        args: argparse.Namespace,
        tally: Tally,
    ) -> None:
        super().__init__()
        self.client = client
        self.server: NetVConnection | None = None
        self.timeout: float | None = args.inactivity_timeout
        self.tally = tally
        self.dirs: list[Direction] = []
        tally.sessions += 1
        tally.live.add(self)
        self.set_handler(self.state_connecting)
        options = trionet.ConnectOptions(connect_timeout=args.connect_timeout)
        unp.connect_re(self, args.upstream, options)

    def state_connecting(self, event: int, data: object) -> int:
        if event == NET_EVENT_OPEN:
            assert isinstance(data, NetVConnection)
            self.server = data
            self.start_tunnel(self.client, data)
            self.set_handler(self.state_tunnel)
            return EVENT_CONT
        assert event == NET_EVENT_OPEN_FAILED  # data is -errno
        self.tally.upstream_failures += 1
        return self.finish()

    def start_tunnel(self, client: NetVConnection, server: NetVConnection) -> None:
        for vc in (client, server):
            if self.timeout is not None:
                vc.set_inactivity_timeout(self.timeout)
        for src, dst in ((client, server), (server, client)):
            buf = MIOBuffer(BUFFER_SIZE)
            write = dst.do_io_write(self, INT64_MAX, buf.alloc_reader())
            read = src.do_io_read(self, INT64_MAX, buf)
            assert read is not None and write is not None
            self.dirs.append(Direction(read, write, src, dst))

    def state_tunnel(self, event: int, data: object) -> int:
        assert isinstance(data, VIO)
        for d in self.dirs:
            if data is d.read:
                return self.on_read(d, event)
            if data is d.write:
                return self.on_write(d, event)
        return EVENT_CONT

    def on_read(self, d: Direction, event: int) -> int:
        if event == VC_EVENT_READ_READY:
            d.write.reenable()  # new bytes for the other side
            return EVENT_CONT
        if event == VC_EVENT_EOS and d.source.connection.broken:
            # A reset mid-stream, not an end: pass it on as an abort.
            self.tally.errors += 1
            return self.finish(abort=True)
        if event in (VC_EVENT_EOS, VC_EVENT_READ_COMPLETE):
            d.eos = True
            d.write.done()  # end after what is buffered
            if d.write.ntodo() <= 0:
                return self.half_close(d)
            d.write.reenable()
            return EVENT_CONT
        self.tally.errors += 1  # VC_EVENT_ERROR, inactivity or active timeout
        return self.finish(abort=True)

    def on_write(self, d: Direction, event: int) -> int:
        if event == VC_EVENT_WRITE_READY:
            d.read.reenable()  # room again in the buffer
            return EVENT_CONT
        if event == VC_EVENT_WRITE_COMPLETE and d.eos:
            return self.half_close(d)
        self.tally.errors += 1
        return self.finish(abort=True)

    def half_close(self, d: Direction) -> int:
        d.target.do_io_shutdown(IO_SHUTDOWN_WRITE)  # forward the EOF
        d.finished = True
        if all(x.finished for x in self.dirs):
            return self.finish()
        return EVENT_CONT

    def finish(self, abort: bool = False) -> int:
        """End the session: a normal close after both directions ended, an
        abort (RST on both sides) after a reset, error or timeout."""
        if self not in self.tally.live:
            return EVENT_DONE
        if self.dirs:
            self.tally.bytes_up += self.dirs[0].write.ndone
            self.tally.bytes_down += self.dirs[1].write.ndone
            self.dirs = []
        for vc in (self.client, self.server):
            if vc is None:
                continue
            if abort:
                # ATS passes an errno to do_io_close for an abort; the native
                # connection underneath turns it into an RST (no FIN that
                # would make a cut stream look complete).
                vc.connection.abort()
                vc.do_io_close(errno.ECONNABORTED)
            else:
                vc.do_io_close()
        self.set_handler(self.state_done)
        self.tally.live.discard(self)
        if not self.tally.live:
            self.tally.all_closed.set()
        return EVENT_DONE

    def state_done(self, event: int, data: object) -> int:
        """After the session was cut while connecting: close what arrives."""
        if event == NET_EVENT_OPEN and isinstance(data, NetVConnection):
            data.connection.abort()
            data.do_io_close(errno.ECONNABORTED)
        return EVENT_DONE

    def cut(self) -> None:
        """The shutdown grace is over: abort both sides."""
        self.tally.errors += 1
        self.finish(abort=True)


class TunnelAccept(Continuation):
    """The acceptor: a :class:`TunnelSM` per ``NET_EVENT_ACCEPT``."""

    def __init__(self, unp: iocore.UnixNetProcessor, args: argparse.Namespace) -> None:
        super().__init__()
        self.unp: iocore.UnixNetProcessor = unp
        self.args: argparse.Namespace = args
        self.tally: Tally = Tally()
        self.set_handler(self.main_event)

    def main_event(self, event: int, data: object) -> int:
        if event == NET_EVENT_ACCEPT:
            assert isinstance(data, NetVConnection)
            self.tally.all_closed = trio.Event()
            TunnelSM(data, self.unp, self.args, self.tally)
        # EVENT_ERROR (data: -errno) means the port could not be opened or
        # accepting failed for good; the processor has logged it, one line
        # naming the address (a port never opened: wait_listening() gives none).
        return EVENT_CONT


async def main(args: argparse.Namespace) -> int:
    net = trionet.NetProcessor(max_connections=args.max_connections, throttle=args.throttle)
    opts = trionet.AcceptOptions(host=args.host, port=args.port)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with iocore.open_net_processor(net) as unp:
            acceptor = TunnelAccept(unp, args)
            action = unp.accept(acceptor, opts)
            if not await action.wait_listening():
                return 1  # EVENT_ERROR: the processor logged why
            up = f"upstream {args.upstream[0]} port {args.upstream[1]}"
            for listening in action.ports:
                print(f"ats tunnel listening on {args.host} port {listening}, {up}")
            sys.stdout.flush()
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: shutting down (grace {args.grace} s)")
                break
            action.cancel()  # stop accepting; let open sessions finish
            if acceptor.tally.live:
                with trio.move_on_after(args.grace):
                    await acceptor.tally.all_closed.wait()
            for session in list(acceptor.tally.live):
                session.cut()  # still running after the grace: abort, not close
    t = acceptor.tally
    print(
        f"sessions: {t.sessions}, upstream failures: {t.upstream_failures}, "
        f"errors: {t.errors}, bytes up: {t.bytes_up}, down: {t.bytes_down}",
        flush=True,
    )
    return 0


def upstream(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ATS-style TCP tunnel on trionet.iocore.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8081, help="port (default 8081; 0 = any)")
    p.add_argument("--upstream", type=upstream, required=True, metavar="HOST:PORT")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--max-connections", type=int, default=None, help="client + upstream")
    p.add_argument("--throttle", choices=("pause", "close"), default="pause")
    p.add_argument("--inactivity-timeout", type=float, default=None, help="seconds, both sides")
    p.add_argument("--grace", type=float, default=5.0, help="shutdown grace seconds (default 5)")
    return p.parse_args(argv)


def run() -> None:
    """Run from the command line: exit with the program's status, or with one
    line naming a bad option value (no traceback)."""
    # The processor reports failures on the "trionet" loggers: one line each.
    logging.basicConfig(format="ats_tunnel: %(message)s")
    try:
        sys.exit(trio.run(main, parse_args()))
    except ValueError as exc:  # bad option values name themselves
        sys.exit(f"ats_tunnel: {exc}")


if __name__ == "__main__":
    run()
