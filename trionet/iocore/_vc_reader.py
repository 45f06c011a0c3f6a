"""The read machine of a ``NetVConnection`` (ATS ``net_read_io``).

It waits until the read VIO is enabled, not disabled, has ``ntodo() > 0`` and
its buffer has room, then does one ``await conn.receive_some(min(write_avail,
ntodo))`` and signals exactly as ``net_read_io``: ``READ_READY`` after data,
``READ_COMPLETE`` when ``ntodo`` reaches 0, ``EOS`` on end of stream or reset,
``VC_EVENT_ERROR`` otherwise (errno in ``vc.lerrno``). A full buffer disables
reading until ``reenable`` -- that is the backpressure: no ``receive_some`` is
started while the buffer is full or the VIO disabled.

Bytes are never lost or reordered: a ``receive_some`` started while reading
was allowed can return after the VIO was disabled, replaced or shut down; its
bytes (or its EOS/error) are then kept in ``_pending`` and handed to the next
read before the socket is read again.
"""

from __future__ import annotations

import errno
from typing import Protocol, final

import trio

from .._core._connection import Connection
from ._codes import VC_EVENT_EOS, VC_EVENT_ERROR, VC_EVENT_READ_COMPLETE, VC_EVENT_READ_READY
from ._vc_state import Side, errno_of
from ._vio import VIO

__all__ = ["ReadHost", "ReadMachine"]


class ReadHost(Protocol):
    """What the read machine needs from its ``NetVConnection``: its state, and
    the calls that keep ATS's contract. Private to the shim."""

    closed: bool
    lerrno: int
    connection: Connection

    def _sync_clock(self) -> None:
        """Run the inactivity clock only while a side has work."""
        ...

    async def _signal(self, side: Side, event: int) -> int | None:
        """Call ``side``'s continuation with ``event``; its answer, or None."""
        ...

    async def _signal_done(self, side: Side, event: int) -> None:
        """Disable ``side``, mark its operation ended, then signal ``event``."""
        ...


@final
class ReadMachine:
    """Reads for one VC's read side until the VC closes (its :meth:`run` is
    one of the VC's two tasks)."""

    __slots__ = ("_pending", "_pending_end", "_side", "_vc")

    def __init__(self, vc: ReadHost, side: Side) -> None:
        self._vc = vc
        self._side = side
        self._pending = bytearray()  # bytes received after reading stopped
        self._pending_end: int | None = None  # 0: EOS pending; >0: errno pending

    def can_read(self) -> bool:
        r = self._side
        return not self._vc.closed and r.open_for(VIO.READ) and r.vio.buffer is not None

    async def run(self) -> None:
        r = self._side
        while True:
            while not self.can_read():
                await r.lot.park()
            vio = r.vio
            buf = vio.buffer
            assert buf is not None
            n = min(buf.write_avail(), vio.ntodo())
            if n <= 0:
                r.enabled = False  # ATS read_disable: full buffer or nothing to do
                self._vc._sync_clock()
                continue
            gen = r.gen
            data, end = await self._receive(n)
            if self._vc.closed:
                return
            if r.gen != gen or not self.can_read():
                self._stash(data, end)  # reading stopped meanwhile: keep for later
                continue
            await self._deliver_read(data, end)

    async def _receive(self, n: int) -> tuple[bytes, int | None]:
        """Up to ``n`` bytes: from ``_pending`` first, else from the connection.

        Returns:
          ``(data, end)``: ``end`` is ``None`` (more may come), ``0`` (EOS) or
          an errno (error); ``data`` is empty when ``end`` is set.
        """
        if self._pending:
            data = bytes(self._pending[:n])
            del self._pending[:n]
            return data, None
        if self._pending_end is not None:
            end, self._pending_end = self._pending_end, None
            return b"", end
        try:
            data = await self._vc.connection.receive_some(n)
        except trio.BrokenResourceError as exc:
            code = errno_of(exc)
            return b"", 0 if code == errno.ECONNRESET else code
        except trio.ClosedResourceError:
            return b"", 0 if not self._vc.closed else errno.EBADF
        return data, (0 if not data else None)

    def _stash(self, data: bytes, end: int | None) -> None:
        self._pending += data
        if end is not None:
            self._pending_end = end

    async def _deliver_read(self, data: bytes, end: int | None) -> None:
        r = self._side
        vio = r.vio
        if end is not None:
            if end:
                self._vc.lerrno = end
            await self._vc._signal_done(r, VC_EVENT_EOS if end == 0 else VC_EVENT_ERROR)
            return
        take = min(len(data), vio.ntodo())
        if take < len(data):  # nbytes was lowered meanwhile (VIO.done())
            self._pending[:0] = data[take:]
        assert vio.buffer is not None
        vio.buffer.write(data[:take] if take < len(data) else data)
        vio.ndone += take
        if vio.ntodo() <= 0:
            await self._vc._signal_done(r, VC_EVENT_READ_COMPLETE)
            return
        await self._vc._signal(r, VC_EVENT_READ_READY)
        if not self._vc.closed and vio.buffer is not None and vio.buffer.write_avail() <= 0:
            r.enabled = False  # full: wait for reenable after the handler consumes
