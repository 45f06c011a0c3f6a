"""The write machine of a ``NetVConnection`` (ATS ``net_write_io``).

It drains the write VIO's reader with ``send_all`` (at most ``MAX_WRITE``
bytes per call) and signals as ``net_write_io``: ``WRITE_READY`` before a
write when it has less than ``ntodo`` and the buffer is under its water mark,
``WRITE_READY`` after a write while more is wanted, ``WRITE_COMPLETE`` at
``ntodo() == 0``; an empty buffer disables writing until ``reenable``. A
``do_io_shutdown(IO_SHUTDOWN_WRITE)`` is sent as EOF once any send in
progress ends.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol, final

import trio

from .._core._connection import Connection
from ._codes import VC_EVENT_ERROR, VC_EVENT_WRITE_COMPLETE, VC_EVENT_WRITE_READY
from ._vc_state import Side, errno_of
from ._vio import VIO

__all__ = ["MAX_WRITE", "WriteHost", "WriteMachine"]

logger = logging.getLogger("trionet.iocore")

# Bytes handed to one send_all: big enough to amortise the call, small enough
# that WRITE_READY (and backpressure) follow the socket closely.
MAX_WRITE: Final = 65536


class WriteHost(Protocol):
    """What the write machine needs from its ``NetVConnection``. Private to
    the shim."""

    closed: bool
    lerrno: int
    connection: Connection

    async def _signal(self, side: Side, event: int) -> int | None:
        """Call ``side``'s continuation with ``event``; its answer, or None."""
        ...

    async def _signal_done(self, side: Side, event: int) -> None:
        """Disable ``side``, mark its operation ended, then signal ``event``."""
        ...


@final
class WriteMachine:
    """Writes for one VC's write side until the VC closes (its :meth:`run` is
    the other of the VC's two tasks)."""

    __slots__ = ("_side", "_vc", "eof_wanted")

    def __init__(self, vc: WriteHost, side: Side) -> None:
        self._vc = vc
        self._side = side
        self.eof_wanted = False  # do_io_shutdown(WRITE) waiting for the writer

    def can_write(self) -> bool:
        w = self._side
        vio = w.vio
        return (
            not self._vc.closed
            and w.open_for(VIO.WRITE)
            and vio.reader is not None
            and vio.cont is not None  # ATS net_write_io: nobody to call back, no I/O
        )

    async def run(self) -> None:
        w = self._side
        while True:
            while not (self.can_write() or self.eof_wanted):
                await w.lot.park()
            if self.eof_wanted:
                await self._send_eof()
                continue
            await self._write_step()
            if self._vc.closed:
                return

    async def _send_eof(self) -> None:
        self.eof_wanted = False
        try:
            await self._vc.connection.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("%r: shutdown(WRITE) not sent: %s", self._vc, exc)

    async def _write_step(self) -> None:
        """One pass of ATS ``net_write_io``."""
        w = self._side
        vio = w.vio
        reader = vio.reader
        assert reader is not None
        gen = w.gen
        ntodo = vio.ntodo()
        if ntodo <= 0:
            w.enabled = False
            return
        towrite = min(reader.read_avail(), ntodo)
        signalled = False
        if towrite != ntodo and not reader.mbuf.high_water():
            await self._vc._signal(w, VC_EVENT_WRITE_READY)
            if w.gen != gen or not self.can_write():
                return  # closed, replaced, disabled or shut down by the handler
            ntodo = vio.ntodo()
            towrite = min(reader.read_avail(), ntodo)
            signalled = True
        if towrite <= 0:
            w.enabled = False  # ATS write_disable: wait for data and reenable
            return
        data = reader.peek(min(towrite, MAX_WRITE))
        try:
            await self._vc.connection.send_all(data)
        except trio.BrokenResourceError as exc:
            if not self._vc.closed and w.gen == gen:
                self._vc.lerrno = errno_of(exc)
                await self._vc._signal_done(w, VC_EVENT_ERROR)
            return
        except trio.ClosedResourceError:
            return
        if reader.allocated():
            reader.consume(min(len(data), reader.read_avail()))
        if self._vc.closed or w.gen != gen:
            return  # the bytes went out, but that VIO is gone
        await self._wrote(len(data), signalled)

    async def _wrote(self, n: int, signalled: bool) -> None:
        w = self._side
        vio = w.vio
        vio.ndone += n
        if vio.ntodo() <= 0:
            await self._vc._signal_done(w, VC_EVENT_WRITE_COMPLETE)
            return
        reader = vio.reader
        assert reader is not None
        if not signalled or not reader.mbuf.high_water():
            gen = w.gen
            await self._vc._signal(w, VC_EVENT_WRITE_READY)
            if w.gen != gen or vio.reader is not reader:
                return
        if reader.allocated() and not reader.is_read_avail_more_than(0):
            w.enabled = False
