"""An echo server written the way ATS plugins and protocol code are written:
an accept continuation and a per-connection state machine that switches
handlers with ``set_handler`` (ATS ``SET_HANDLER``), on trionet.iocore.

    python -m trionet.examples.ats_echo_server --port 7008

Each connection reads into a MIOBuffer and writes the same buffer back
through a reader of it; reading pauses while the buffer is full
(backpressure) and resumes as the peer takes the echo. After the client's
EOF the state machine flushes what is left, then closes. Ctrl-C (or SIGTERM)
stops accepting and closes the server.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import trio

import trionet
from trionet import iocore
from trionet.iocore import (
    EVENT_CONT,
    EVENT_DONE,
    INT64_MAX,
    VC_EVENT_EOS,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_READY,
    VIO,
    Continuation,
    IOBufferReader,
    MIOBuffer,
    NetVConnection,
)


class EchoSM(Continuation):
    """One connection: ``state_echo`` while the client sends, ``state_drain``
    after its EOF until the last byte went back out."""

    def __init__(self, vc: NetVConnection, inactivity_timeout: float) -> None:
        super().__init__()
        self.vc: NetVConnection = vc
        self.buf: MIOBuffer = MIOBuffer()
        self.out: IOBufferReader = self.buf.alloc_reader()
        vc.set_inactivity_timeout(inactivity_timeout)
        self.set_handler(self.state_echo)
        self.read_vio: VIO | None = vc.do_io_read(self, INT64_MAX, self.buf)
        self.write_vio: VIO | None = vc.do_io_write(self, INT64_MAX, self.out)

    def state_echo(self, event: int, data: object) -> int:
        if event == VC_EVENT_READ_READY:
            assert self.write_vio is not None
            self.write_vio.reenable()  # new bytes to echo
        elif event == VC_EVENT_WRITE_READY:
            assert self.read_vio is not None
            self.read_vio.reenable()  # room again in the buffer
        elif event in (VC_EVENT_EOS, VC_EVENT_READ_COMPLETE):
            assert self.write_vio is not None
            self.set_handler(self.state_drain)
            self.write_vio.done()  # finish after what is buffered
            if self.write_vio.ntodo() <= 0:
                return self.close()
            self.write_vio.reenable()
        else:  # VC_EVENT_ERROR, timeouts
            return self.close()
        return EVENT_CONT

    def state_drain(self, event: int, data: object) -> int:
        if event == VC_EVENT_WRITE_READY:
            return EVENT_CONT
        return self.close()  # WRITE_COMPLETE, or an error/timeout

    def close(self) -> int:
        self.vc.do_io_close()
        return EVENT_DONE


class EchoAccept(Continuation):
    """The acceptor: one :class:`EchoSM` per ``NET_EVENT_ACCEPT``."""

    def __init__(self, inactivity_timeout: float) -> None:
        super().__init__()
        self.inactivity_timeout = inactivity_timeout
        self.accepted: int = 0
        self.set_handler(self.main_event)

    def main_event(self, event: int, data: object) -> int:
        if event == iocore.NET_EVENT_ACCEPT:
            assert isinstance(data, NetVConnection)
            self.accepted += 1
            EchoSM(data, self.inactivity_timeout)
        # EVENT_ERROR (data: -errno) means the port could not be opened or
        # accepting failed for good; the processor has logged it, one line
        # naming the address (a port never opened: wait_listening() gives none).
        return EVENT_CONT


async def main(args: argparse.Namespace) -> int:
    acceptor = EchoAccept(args.inactivity_timeout)
    opts = trionet.AcceptOptions(host=args.host, port=args.port)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with iocore.open_net_processor() as unp:
            action = unp.accept(acceptor, opts)
            if not await action.wait_listening():
                return 1  # EVENT_ERROR: the processor logged why
            for port in action.ports:
                print(f"listening on {args.host} port {port}", flush=True)
            async for signum in signals:
                print(f"{signal.Signals(signum).name}: stopping", flush=True)
                break
            action.cancel()
    print(f"stopped after {acceptor.accepted} connections", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ATS-style echo server on trionet.iocore.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7008, help="port (default 7008; 0 = any)")
    p.add_argument(
        "--inactivity-timeout",
        type=float,
        default=30.0,
        help="seconds a connection may stay idle (default 30)",
    )
    return p.parse_args(argv)


def run() -> None:
    """Run from the command line: exit with the program's status, or with one
    line naming a bad option value (no traceback)."""
    # The processor reports failures on the "trionet" loggers: one line each.
    logging.basicConfig(format="ats_echo_server: %(message)s")
    try:
        sys.exit(trio.run(main, parse_args()))
    except ValueError as exc:  # bad option values name themselves
        sys.exit(f"ats_echo_server: {exc}")


if __name__ == "__main__":
    run()
