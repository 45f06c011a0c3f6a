"""``NetVConnection``: ATS's ``UnixNetVConnection`` event contract over a native
:class:`~trionet.Connection`.

ATS's ``NetHandler`` polls every socket and calls ``net_read_io`` /
``net_write_io`` for the ready ones. Here each VC has two trio tasks:

* the **reader** waits until the read VIO is enabled, not disabled, has
  ``ntodo() > 0`` and its buffer has room, then does one
  ``await conn.receive_some(min(write_avail, ntodo))`` and signals exactly as
  ``net_read_io``: ``READ_READY`` after data, ``READ_COMPLETE`` when ``ntodo``
  reaches 0, ``EOS`` on end of stream or reset, ``VC_EVENT_ERROR`` otherwise
  (errno in :attr:`lerrno`). A full buffer disables reading until ``reenable``
  -- that is the backpressure: no ``receive_some`` is started while the
  buffer is full or the VIO disabled.
* the **writer** drains the write VIO's reader with ``send_all`` (at most
  ``MAX_WRITE`` bytes per call) and signals as ``net_write_io``:
  ``WRITE_READY`` before a write when it has less than ``ntodo`` and the
  buffer is under its water mark, ``WRITE_READY`` after a write while more is
  wanted, ``WRITE_COMPLETE`` at ``ntodo() == 0``; an empty buffer disables
  writing until ``reenable``.

Bytes are never lost or reordered: a ``receive_some`` started while reading
was allowed can return after the VIO was disabled, replaced or shut down; its
bytes (or its EOS/error) are then kept in ``_pending`` and handed to the next
read before the socket is read again.

Timeouts come from the processor's TimeoutCop through ``conn._timeout_hook``
(instead of closing the connection) and are delivered from a separate task
like ATS's ``mainEvent``: to the read continuation first, then to the write
continuation if it is a different one, the VC is still open, the reader did
not return ``EVENT_DONE`` and did not re-arm a timeout. The inactivity clock
runs only while a side has work (an op with ``ntodo() > 0``, not disabled,
not shut down, not ended by EOS/error) -- ATS clears
``next_inactivity_timeout_at`` when both sides are disabled.

Every callback is made with the continuation's mutex held and only while the
VC is open: after :meth:`do_io_close` nothing reaches any continuation.
"""

from __future__ import annotations

import errno
import logging
import math
from typing import TYPE_CHECKING, Final, final

import trio

from .._connection import Connection, TimedOut
from .._options import _check_seconds
from ._buffer import IOBufferReader, MIOBuffer
from ._codes import (
    EVENT_DONE,
    IO_SHUTDOWN_READ,
    IO_SHUTDOWN_READWRITE,
    IO_SHUTDOWN_WRITE,
    VC_EVENT_ACTIVE_TIMEOUT,
    VC_EVENT_EOS,
    VC_EVENT_ERROR,
    VC_EVENT_INACTIVITY_TIMEOUT,
    VC_EVENT_READ_COMPLETE,
    VC_EVENT_READ_READY,
    VC_EVENT_WRITE_COMPLETE,
    VC_EVENT_WRITE_READY,
    event_name,
)
from ._continuation import Continuation, ProxyMutex, Skipped, call_locked
from ._vio import VIO

if TYPE_CHECKING:
    from ._processor import UnixNetProcessor

__all__ = ["DEFAULT_INACTIVITY_TIMEOUT", "MAX_WRITE", "NetVConnection"]

logger = logging.getLogger("trionet.iocore")

# ATS proxy.config.net.default_inactivity_timeout.
DEFAULT_INACTIVITY_TIMEOUT: Final = 86400.0
# Bytes handed to one send_all: big enough to amortise the call, small enough
# that WRITE_READY (and backpressure) follow the socket closely.
MAX_WRITE: Final = 65536

_TIMEOUT_EVENTS: Final = frozenset(
    {VC_EVENT_EOS, VC_EVENT_ERROR, VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT}
)


class _Side:
    """One direction's state (ATS ``NetState``): its VIO and flags."""

    __slots__ = ("enabled", "ended", "gen", "lot", "shutdown", "vio")

    def __init__(self, vio: VIO) -> None:
        self.vio = vio
        self.enabled = False  # ATS NetState.enabled: the task may do I/O
        self.shutdown = False  # do_io_shutdown of this side
        self.ended = False  # EOS / ERROR / *_COMPLETE happened on this VIO
        self.gen = 0  # bumped when the VIO is reset, so in-flight I/O knows
        self.lot = trio.lowlevel.ParkingLot()

    def has_work(self) -> bool:
        """Whether this side keeps the inactivity clock running."""
        vio = self.vio
        return (
            vio.op != VIO.NONE
            and vio.cont is not None
            and not self.shutdown
            and not self.ended
            and not vio._disabled
            and vio.ntodo() > 0
        )

    def wake(self) -> None:
        self.lot.unpark_all()


def _errno_of(exc: BaseException) -> int:
    """The errno behind a trio Broken/Closed error (EIO when there is none)."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        cause = cause.__cause__
    return errno.EIO


@final
class NetVConnection:
    """A connection driven by VIOs and continuation events (ATS ``NetVConnection``).

    Handed to continuations with ``NET_EVENT_ACCEPT`` (inbound) or
    ``NET_EVENT_OPEN`` (outbound); never constructed by users.

    Attributes:
      id: the native connection's id.
      mutex: the VC's own mutex (ATS ``vc->mutex``).
      read_vio / write_vio: the VC's two VIOs (the same objects for the VC's life).
      lerrno: the errno of the last ``VC_EVENT_ERROR`` (or given to ``do_io_close``).
      closed: ``do_io_close`` was called (or the processor stopped).
      connection: the native :class:`~trionet.Connection` underneath.
    """

    def __init__(self, conn: Connection, unp: UnixNetProcessor) -> None:
        self.connection = conn
        self.id = conn.id
        self.mutex = ProxyMutex()
        self.lerrno = 0
        self.closed = False
        self._unp = unp
        self._r = _Side(VIO(self))
        self._w = _Side(VIO(self))
        self.read_vio = self._r.vio
        self.write_vio = self._w.vio
        self._pending = bytearray()  # bytes received after reading stopped
        self._pending_end: int | None = None  # 0: EOS pending; >0: errno pending
        self._eof_wanted = False  # do_io_shutdown(WRITE) waiting for the writer
        self._timeout_gen = 0  # bumped by set_/cancel_*_timeout (ATS re-arm check)
        self._default_counted = False
        self._scope = trio.CancelScope()
        # The connection's own inactivity timeout (from AcceptOptions or
        # ConnectOptions) becomes the VC's; the clock starts with the first I/O.
        # A zero one counts as none, as ATS's acceptEvent skips
        # set_inactivity_timeout(0): the processor's default then applies.
        self._inactivity_in: float | None = conn.inactivity_timeout or None
        conn._timeout_hook = self._on_timeout
        self._sync_clock()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<NetVConnection #{self.id} {self.get_remote_addr()!r} {state}>"

    # ---------------------------------------------------------- addresses
    def get_remote_addr(self) -> object:
        """The peer's address (after PROXY protocol, if any)."""
        return self.connection.remote_address

    def get_local_addr(self) -> object:
        return self.connection.local_address

    # ------------------------------------------------------------- do_io
    def do_io_read(
        self, cont: Continuation | None, nbytes: int, buf: MIOBuffer | None
    ) -> VIO | None:
        """Read up to ``nbytes`` into ``buf``, calling ``cont`` back with
        ``READ_READY`` / ``READ_COMPLETE`` / ``EOS`` / ``VC_EVENT_ERROR``.
        ``do_io_read(None, 0, None)`` stops reading.

        Returns:
          The read VIO, or ``None`` if the VC is closed (logged, as ATS does).

        Raises:
          TypeError / ValueError: bad ``cont``, ``nbytes`` or ``buf``.
        """
        _check_nbytes(nbytes)
        if buf is not None and not isinstance(buf, MIOBuffer):
            raise TypeError(f"buf={buf!r}: must be a MIOBuffer or None")
        if self.closed:
            if not (cont is None and nbytes == 0 and buf is None):
                logger.error("do_io_read on closed %r by %r", self, cont)
            return None
        side = self._r
        vio = self._reset(side, VIO.READ, cont, nbytes)
        vio.buffer = buf
        if buf is not None:
            side.enabled = True
        self._changed(side)
        return vio

    def do_io_write(
        self, cont: Continuation | None, nbytes: int, reader: IOBufferReader | None
    ) -> VIO | None:
        """Write ``nbytes`` taken from ``reader``, calling ``cont`` back with
        ``WRITE_READY`` / ``WRITE_COMPLETE`` / ``VC_EVENT_ERROR``.

        Returns:
          The write VIO, or ``None`` if the VC is closed (logged).

        Raises:
          TypeError / ValueError: bad ``cont``, ``nbytes`` or ``reader``.
        """
        _check_nbytes(nbytes)
        if reader is not None and not isinstance(reader, IOBufferReader):
            raise TypeError(f"reader={reader!r}: must be an IOBufferReader or None")
        if self.closed:
            if not (cont is None and nbytes == 0 and reader is None):
                logger.error("do_io_write on closed %r by %r", self, cont)
            return None
        side = self._w
        vio = self._reset(side, VIO.WRITE, cont, nbytes)
        vio.reader = reader
        vio.buffer = reader.mbuf if reader is not None else None
        if reader is not None and nbytes:
            side.enabled = True
        self._changed(side)
        return vio

    def _reset(self, side: _Side, op: int, cont: Continuation | None, nbytes: int) -> VIO:
        vio = side.vio
        vio.set_continuation(cont)
        vio.op = op
        vio.nbytes = nbytes
        vio.ndone = 0
        vio.buffer = None
        vio.reader = None
        vio._disabled = False
        side.enabled = False
        side.ended = False
        side.gen += 1
        return vio

    def _clear(self, side: _Side, op: int) -> None:
        """ATS's close/shutdown of a side: no continuation, no buffer, nbytes 0;
        ``ndone`` stays readable."""
        vio = side.vio
        vio.set_continuation(None)
        vio.op = op
        vio.nbytes = 0
        vio.buffer = None
        vio.reader = None
        side.enabled = False
        side.gen += 1

    def do_io_close(self, lerrno: int = -1) -> None:
        """Close the connection. No event reaches any continuation afterwards;
        calling it again does nothing.

        Args:
          lerrno: an errno to record as the reason (``-1``: a normal close).
        """
        if self.closed:
            return
        self.closed = True
        if lerrno != -1:
            self.lerrno = lerrno
        for side in (self._r, self._w):
            self._clear(side, VIO.NONE)
            side.wake()
        self.connection._timeout_hook = None
        self._scope.cancel()
        if self.connection._ssl is None:
            # Plain TCP closes now, so the open-connection gauge drops at once;
            # TLS gets its close_notify from the VC's task (bounded, shielded).
            self.connection.close()

    def do_io_shutdown(self, howto: int) -> None:
        """Stop reading (``IO_SHUTDOWN_READ``), writing (``IO_SHUTDOWN_WRITE``:
        the peer gets EOF once any send in progress ends), or both. The side's
        VIO loses its continuation and buffer; no more events come from it.

        Raises:
          ValueError: ``howto`` is not one of the three IO_SHUTDOWN_* codes.
        """
        if howto not in (IO_SHUTDOWN_READ, IO_SHUTDOWN_WRITE, IO_SHUTDOWN_READWRITE):
            raise ValueError(f"howto={howto!r}: must be IO_SHUTDOWN_READ, _WRITE or _READWRITE")
        if self.closed:
            return
        sides = {IO_SHUTDOWN_READ: (self._r,), IO_SHUTDOWN_WRITE: (self._w,)}
        for side in sides.get(howto, (self._r, self._w)):
            self._clear(side, side.vio.op)
            side.shutdown = True
            if side is self._w:
                self._eof_wanted = True
            self._changed(side)

    # ---------------------------------------------------------- reenable
    def reenable(self, vio: VIO) -> None:
        """Let ``vio``'s side continue (ATS ``reenable``): after the handler
        consumed from a full read buffer or added to a write buffer."""
        side = self._side_of(vio)
        vio._disabled = False
        if self.closed:
            return
        side.enabled = True
        self._changed(side)

    def reenable_re(self, vio: VIO) -> None:
        """Same as :meth:`reenable` (see :meth:`VIO.reenable_re`)."""
        self.reenable(vio)

    def _vio_disabled(self, vio: VIO) -> None:
        side = self._side_of(vio)
        if not self.closed:
            self._changed(side)

    def _side_of(self, vio: VIO) -> _Side:
        if vio is self._r.vio:
            return self._r
        if vio is self._w.vio:
            return self._w
        raise ValueError(f"vio={vio!r} does not belong to {self!r}")

    def _changed(self, side: _Side) -> None:
        self._sync_clock()
        side.wake()

    # ----------------------------------------------------------- timeouts
    def set_inactivity_timeout(self, timeout: float) -> None:
        """Seconds without I/O progress before ``VC_EVENT_INACTIVITY_TIMEOUT``;
        restarts the clock. ``0`` is the same as :meth:`cancel_inactivity_timeout`
        (ATS: a zero timeout is no timeout), and so the processor's default
        applies; if that is 0 (or ``inf``) too, no inactivity timeout fires.

        Raises:
          ValueError: not a number of seconds >= 0 (the message names it).
        """
        _check_seconds("NetVConnection", "inactivity_timeout", timeout)
        self._inactivity_in = float(timeout) if timeout else None
        self._timeout_gen += 1
        if self.connection.inactivity_timeout is not None and not self.closed:
            self.connection.inactivity_timeout = self._clock_seconds()
        self._sync_clock()

    def cancel_inactivity_timeout(self) -> None:
        """Drop the VC's own inactivity timeout; as in ATS, the default
        (86400 s unless the processor says otherwise) then applies."""
        self.set_inactivity_timeout(0)

    def set_active_timeout(self, timeout: float) -> None:
        """Seconds from now until ``VC_EVENT_ACTIVE_TIMEOUT``, busy or idle
        (fires once); ``0`` cancels it (ATS: a zero timeout is no timeout).

        Raises:
          ValueError: not a number of seconds >= 0 (the message names it).
        """
        _check_seconds("NetVConnection", "active_timeout", timeout)
        self._timeout_gen += 1
        if not self.closed:
            self.connection.active_timeout = float(timeout) if timeout else None

    def cancel_active_timeout(self) -> None:
        self.set_active_timeout(0)

    def get_inactivity_timeout(self) -> float:
        """The inactivity timeout in force (the default if none was set);
        ``0`` or ``inf`` when there is none."""
        return self._effective_inactivity()

    def get_active_timeout(self) -> float | None:
        """Seconds left until the active timeout, or ``None``."""
        return self.connection.active_timeout

    def _effective_inactivity(self) -> float:
        if self._inactivity_in is not None:
            return self._inactivity_in
        return self._unp.default_inactivity_timeout

    def _clock_seconds(self) -> float | None:
        """The inactivity timeout to run on the connection; ``None`` for 0 or
        ``inf``: with ATS, ``default_inactivity_timeout=0`` means none, and run
        as a 0-second timeout it would fire, re-arm and fire again at once --
        thousands of timeout events a second on one waiting VC."""
        seconds = self._effective_inactivity()
        return None if seconds == 0 or seconds == math.inf else seconds

    def _sync_clock(self) -> None:
        """Run the connection's inactivity clock only while a side has work."""
        conn = self.connection
        if self.closed or conn.closed:
            return
        want: float | None = None
        if self._r.has_work() or self._w.has_work():
            want = self._clock_seconds()
            if want is not None and self._inactivity_in is None and not self._default_counted:
                self._default_counted = True
                self._unp._counters.default_inactivity_timeout_applied += 1
        if conn.inactivity_timeout != want:
            conn.inactivity_timeout = want  # restarts the clock (ATS set_enabled)

    def _on_timeout(self, why: TimedOut) -> None:
        """The TimeoutCop's hook (synchronous, in the cop's task)."""
        if self.closed:
            return
        conn = self.connection
        if why == "active":
            conn.active_timeout = None  # fires once, as ATS clears next_activity_timeout_at
            event = VC_EVENT_ACTIVE_TIMEOUT
        else:
            # Re-arm: the VC stays usable. (Never at 0 -- a zero timeout is
            # none -- which would fire again at once, for ever.)
            conn.inactivity_timeout = conn.inactivity_timeout or None
            event = VC_EVENT_INACTIVITY_TIMEOUT
        self._unp._spawn(self._deliver_timeout, event)

    async def _deliver_timeout(self, event: int) -> None:
        """ATS ``UnixNetVConnection::mainEvent``."""
        gen = self._timeout_gen
        reader_cont: Continuation | None = None
        r, w = self._r, self._w
        if r.vio.op == VIO.READ and r.vio.cont is not None and not r.shutdown:
            reader_cont = r.vio.cont
            ret = await self._signal(r, event)
            if ret is None or ret == EVENT_DONE:
                return
        if self.closed or gen != self._timeout_gen:
            return
        if w.vio.op == VIO.WRITE and not w.shutdown and w.vio.cont is not reader_cont:
            await self._signal(w, event)

    # ---------------------------------------------------------- signalling
    async def _signal(self, side: _Side, event: int) -> int | None:
        """Call ``side``'s continuation with ``event`` and its VIO.

        Returns:
          The handler's result, or ``None`` if nothing was delivered (VC
          closed, no continuation) or the contract was broken (then the VC
          is closed).
        """
        vio = side.vio
        cont = vio.cont
        if self.closed:
            return None
        if cont is None:
            if event in _TIMEOUT_EVENTS:
                # ATS: an ending event with nobody to tell closes the VC.
                self.do_io_close()
            return None
        ret = await call_locked(cont, event, vio, lambda: not self.closed and vio.cont is cont)
        if ret is Skipped.SKIPPED:
            return None
        if ret is None:
            self._contract_close(cont, event)
        return ret

    async def _signal_done(self, side: _Side, event: int) -> None:
        """ATS ``read_signal_done`` / ``write_signal_done``: disable, then signal."""
        side.enabled = False
        side.ended = True
        self._sync_clock()
        await self._signal(side, event)

    def _contract_close(self, cont: Continuation, event: int) -> None:
        self._unp._counters.handler_errors += 1
        logger.error(
            "closing %r: its continuation %r broke the contract on %s",
            self,
            cont,
            event_name(event),
        )
        self.do_io_close()

    # -------------------------------------------------------------- tasks
    async def _run(self) -> None:
        """Run the VC's reader and writer until :meth:`do_io_close` (or until
        the processor stops: then the VC counts as closed, and no more events
        are delivered)."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guarded, self._read_loop)
                    nursery.start_soon(self._guarded, self._write_loop)
        finally:
            self.closed = True
            self.connection._timeout_hook = None
            with trio.CancelScope(shield=True):
                await self.connection.aclose()

    async def _guarded(self, loop: object) -> None:
        assert callable(loop)
        try:
            await loop()
        except Exception:  # a shim bug must not take the processor down
            logger.exception("internal error in %r; closing it", self)
            self.do_io_close()

    # ------------------------------------------------------------ reading
    def _can_read(self) -> bool:
        r = self._r
        vio = r.vio
        return (
            not self.closed
            and r.enabled
            and not r.shutdown
            and vio.op == VIO.READ
            and not vio._disabled
            and vio.buffer is not None
        )

    async def _read_loop(self) -> None:
        r = self._r
        while True:
            while not self._can_read():
                await r.lot.park()
            vio = r.vio
            buf = vio.buffer
            assert buf is not None
            n = min(buf.write_avail(), vio.ntodo())
            if n <= 0:
                r.enabled = False  # ATS read_disable: full buffer or nothing to do
                self._sync_clock()
                continue
            gen = r.gen
            data, end = await self._receive(n)
            if self.closed:
                return
            if r.gen != gen or not self._can_read():
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
            data = await self.connection.receive_some(n)
        except trio.BrokenResourceError as exc:
            code = _errno_of(exc)
            return b"", 0 if code == errno.ECONNRESET else code
        except trio.ClosedResourceError:
            return b"", 0 if not self.closed else errno.EBADF
        return data, (0 if not data else None)

    def _stash(self, data: bytes, end: int | None) -> None:
        self._pending += data
        if end is not None:
            self._pending_end = end

    async def _deliver_read(self, data: bytes, end: int | None) -> None:
        r = self._r
        vio = r.vio
        if end is not None:
            if end:
                self.lerrno = end
            await self._signal_done(r, VC_EVENT_EOS if end == 0 else VC_EVENT_ERROR)
            return
        take = min(len(data), vio.ntodo())
        if take < len(data):  # nbytes was lowered meanwhile (VIO.done())
            self._pending[:0] = data[take:]
        assert vio.buffer is not None
        vio.buffer.write(data[:take] if take < len(data) else data)
        vio.ndone += take
        if vio.ntodo() <= 0:
            await self._signal_done(r, VC_EVENT_READ_COMPLETE)
            return
        await self._signal(r, VC_EVENT_READ_READY)
        if not self.closed and vio.buffer is not None and vio.buffer.write_avail() <= 0:
            r.enabled = False  # full: wait for reenable after the handler consumes

    # ------------------------------------------------------------ writing
    def _can_write(self) -> bool:
        w = self._w
        vio = w.vio
        return (
            not self.closed
            and w.enabled
            and not w.shutdown
            and vio.op == VIO.WRITE
            and not vio._disabled
            and vio.reader is not None
            and vio.cont is not None  # ATS net_write_io: nobody to call back, no I/O
        )

    async def _write_loop(self) -> None:
        w = self._w
        while True:
            while not (self._can_write() or self._eof_wanted):
                await w.lot.park()
            if self._eof_wanted:
                await self._send_eof()
                continue
            await self._write_step()
            if self.closed:
                return

    async def _send_eof(self) -> None:
        self._eof_wanted = False
        try:
            await self.connection.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("%r: shutdown(WRITE) not sent: %s", self, exc)

    async def _write_step(self) -> None:
        """One pass of ATS ``net_write_io``."""
        w = self._w
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
            await self._signal(w, VC_EVENT_WRITE_READY)
            if w.gen != gen or not self._can_write():
                return  # closed, replaced, disabled or shut down by the handler
            ntodo = vio.ntodo()
            towrite = min(reader.read_avail(), ntodo)
            signalled = True
        if towrite <= 0:
            w.enabled = False  # ATS write_disable: wait for data and reenable
            return
        data = reader.peek(min(towrite, MAX_WRITE))
        try:
            await self.connection.send_all(data)
        except trio.BrokenResourceError as exc:
            if not self.closed and w.gen == gen:
                self.lerrno = _errno_of(exc)
                await self._signal_done(w, VC_EVENT_ERROR)
            return
        except trio.ClosedResourceError:
            return
        if reader._mbuf is not None:
            reader.consume(min(len(data), reader.read_avail()))
        if self.closed or w.gen != gen:
            return  # the bytes went out, but that VIO is gone
        await self._wrote(len(data), signalled)

    async def _wrote(self, n: int, signalled: bool) -> None:
        w = self._w
        vio = w.vio
        vio.ndone += n
        if vio.ntodo() <= 0:
            await self._signal_done(w, VC_EVENT_WRITE_COMPLETE)
            return
        reader = vio.reader
        assert reader is not None
        if not signalled or not reader.mbuf.high_water():
            gen = w.gen
            await self._signal(w, VC_EVENT_WRITE_READY)
            if w.gen != gen or vio.reader is not reader:
                return
        if reader._mbuf is not None and not reader.is_read_avail_more_than(0):
            w.enabled = False


def _check_nbytes(nbytes: object) -> None:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"nbytes={nbytes!r}: must be an int")
    if nbytes < 0:
        raise ValueError(f"nbytes={nbytes!r}: must be >= 0 (INT64_MAX for unbounded)")
