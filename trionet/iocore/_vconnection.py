"""``NetVConnection``: ATS's ``UnixNetVConnection`` event contract over a native
:class:`~trionet.Connection`.

ATS's ``NetHandler`` polls every socket and calls ``net_read_io`` /
``net_write_io`` for the ready ones. Here each VC has two trio tasks, each
running a machine in its own module: the **reader**
(:class:`~trionet.iocore._vc_reader.ReadMachine`) and the **writer**
(:class:`~trionet.iocore._vc_writer.WriteMachine`). This module is the API
(``do_io_*``, ``reenable``, timeouts), the signalling both machines go
through, and the delivery of timeouts.

Timeouts come from the processor's TimeoutCop through the connection's timeout hook
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

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, final

import trio

from .._base._addr import SocketAddress
from .._base._checks import check_seconds, is_int
from .._core._connection import Connection, TimedOut
from .._core._stats import Counters
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
    event_name,
)
from ._continuation import Continuation, ProxyMutex, Skipped, call_locked
from ._vc_reader import ReadMachine
from ._vc_state import Side
from ._vc_writer import WriteMachine
from ._vio import VIO

__all__ = ["DEFAULT_INACTIVITY_TIMEOUT", "NetVConnection", "VCProcessor", "run_vc"]

logger = logging.getLogger("trionet.iocore")

# ATS proxy.config.net.default_inactivity_timeout.
DEFAULT_INACTIVITY_TIMEOUT: Final = 86400.0


class VCProcessor(Protocol):
    """What a VC needs from its ``UnixNetProcessor`` (declared here, below it):
    the default inactivity timeout, the native processor's statistics, and a
    task spawner for timeout delivery. Private to the shim."""

    default_inactivity_timeout: float

    @property
    def _counters(self) -> Counters: ...

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None: ...


_TIMEOUT_EVENTS: Final = frozenset(
    {VC_EVENT_EOS, VC_EVENT_ERROR, VC_EVENT_INACTIVITY_TIMEOUT, VC_EVENT_ACTIVE_TIMEOUT}
)


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

    def __init__(self, conn: Connection, unp: VCProcessor) -> None:
        self.connection = conn
        self.id: int = conn.id
        self.mutex: ProxyMutex = ProxyMutex()
        self.lerrno: int = 0
        self.closed: bool = False
        self._unp = unp
        self._r = Side(VIO(self))
        self._w = Side(VIO(self))
        self.read_vio: VIO = self._r.vio
        self.write_vio: VIO = self._w.vio
        self._reader = ReadMachine(self, self._r)
        self._writer = WriteMachine(self, self._w)
        self._timeout_gen = 0  # bumped by set_/cancel_*_timeout (ATS re-arm check)
        self._default_counted = False
        self._scope = trio.CancelScope()
        # The connection's own inactivity timeout (from AcceptOptions or
        # ConnectOptions) becomes the VC's; the clock starts with the first I/O.
        # A zero one counts as none, as ATS's acceptEvent skips
        # set_inactivity_timeout(0): the processor's default then applies.
        self._inactivity_in: float | None = conn.inactivity_timeout or None
        conn._set_timeout_hook(self._on_timeout)
        self._sync_clock()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<NetVConnection #{self.id} {self.get_remote_addr()!r} {state}>"

    # ---------------------------------------------------------- addresses
    def get_remote_addr(self) -> SocketAddress:
        """The peer's address (after PROXY protocol, if any)."""
        return self.connection.remote_address

    def get_local_addr(self) -> SocketAddress:
        """Our address as the peer sees it (after PROXY protocol, if any)."""
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
          TypeError: ``cont``, ``nbytes`` or ``buf`` of the wrong type.
          ValueError: ``nbytes`` is negative.
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
          TypeError: ``cont``, ``nbytes`` or ``reader`` of the wrong type.
          ValueError: ``nbytes`` is negative.
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

    def _reset(self, side: Side, op: int, cont: Continuation | None, nbytes: int) -> VIO:
        vio = side.vio
        vio.set_continuation(cont)
        vio.op = op
        vio.nbytes = nbytes
        vio.ndone = 0
        vio.buffer = None
        vio.reader = None
        side.disabled = False
        side.enabled = False
        side.ended = False
        side.gen += 1
        return vio

    def _clear(self, side: Side, op: int) -> None:
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
        self._detach()
        self._scope.cancel()
        if self.connection.tls is None:
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
                self._writer.eof_wanted = True
            self._changed(side)

    # ---------------------------------------------------------- reenable
    def reenable(self, vio: VIO) -> None:
        """Let ``vio``'s side continue (ATS ``reenable``): after the handler
        consumed from a full read buffer or added to a write buffer."""
        side = self._side_of(vio)
        side.disabled = False
        if self.closed:
            return
        side.enabled = True
        self._changed(side)

    def reenable_re(self, vio: VIO) -> None:
        """Same as :meth:`reenable` (see :meth:`VIO.reenable_re`)."""
        self.reenable(vio)

    # The VIO's seam (trionet.iocore._vio.VConnection): disable() and
    # is_disabled() keep their state here, with the side's other flags.
    def _vio_disable(self, vio: VIO) -> None:
        side = self._side_of(vio)
        side.disabled = True
        if not self.closed:
            self._changed(side)

    def _vio_is_disabled(self, vio: VIO) -> bool:
        return self._side_of(vio).disabled

    def _side_of(self, vio: VIO) -> Side:
        if vio is self._r.vio:
            return self._r
        if vio is self._w.vio:
            return self._w
        raise ValueError(f"vio={vio!r} does not belong to {self!r}")

    def _changed(self, side: Side) -> None:
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
        check_seconds("NetVConnection", "inactivity_timeout", timeout)
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
        check_seconds("NetVConnection", "active_timeout", timeout)
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

    def _detach(self) -> None:
        """Timeouts close the connection again (it is no longer this VC's)."""
        self.connection._set_timeout_hook(None)

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
    async def _signal(self, side: Side, event: int) -> int | None:
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

    async def _signal_done(self, side: Side, event: int) -> None:
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
                    nursery.start_soon(self._guarded, self._reader.run)
                    nursery.start_soon(self._guarded, self._writer.run)
        finally:
            self.closed = True
            self._detach()
            with trio.CancelScope(shield=True):
                await self.connection.aclose()

    async def _guarded(self, loop: object) -> None:
        assert callable(loop)
        try:
            await loop()
        except Exception:  # a shim bug must not take the processor down
            logger.exception("internal error in %r; closing it", self)
            self.do_io_close()


def _check_nbytes(nbytes: object) -> None:
    if not is_int(nbytes):
        raise TypeError(f"nbytes={nbytes!r}: must be an int")
    if nbytes < 0:
        raise ValueError(f"nbytes={nbytes!r}: must be >= 0 (INT64_MAX for unbounded)")


async def run_vc(
    conn: Connection,
    unp: VCProcessor,
    cont: Continuation,
    event: int,
    wanted: Callable[[], bool],
) -> None:
    """ATS ``acceptEvent`` / the connect's open event: wrap ``conn`` in a VC,
    announce it to ``cont`` with ``event`` (``NET_EVENT_ACCEPT`` or
    ``NET_EVENT_OPEN``) under its mutex, then run the VC until it closes.

    A continuation that no longer wants it (``wanted()`` false once the mutex
    is held: the action was cancelled) gets nothing and the VC is closed; one
    that breaks the contract is logged and counted and the VC closed.
    """
    vc = NetVConnection(conn, unp)
    ret = await call_locked(cont, event, vc, wanted)
    if ret is Skipped.SKIPPED:
        vc.do_io_close()
    elif ret is None:
        vc._contract_close(cont, event)
    await vc._run()
