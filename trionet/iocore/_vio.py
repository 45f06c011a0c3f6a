"""``VIO``: one read or write operation on a VConnection (ATS ``I_VIO.h``).

As in ATS, a NetVConnection owns exactly one read VIO and one write VIO and
hands out the same objects on every ``do_io_read`` / ``do_io_write`` (which
reset them), so handlers can tell the two apart by identity
(``if data is self.read_vio``), as NetVCTest's ``main_handler`` does.
"""

from __future__ import annotations

from typing import Final, Protocol, final

from ._buffer import IOBufferReader, MIOBuffer
from ._continuation import Continuation, ProxyMutex

__all__ = ["INT64_MAX", "VIO", "VConnection"]

# ATS passes INT64_MAX as nbytes for "until the end of the stream".
INT64_MAX: Final = 2**63 - 1


class VConnection(Protocol):
    """What a VIO needs from the VConnection doing its work (a
    ``NetVConnection``, which keeps each side's "disabled" flag with the
    side's other state). The two private calls are the VIO's seam."""

    def reenable(self, vio: VIO) -> None: ...

    def reenable_re(self, vio: VIO) -> None: ...

    def _vio_disable(self, vio: VIO) -> None: ...

    def _vio_is_disabled(self, vio: VIO) -> bool: ...


@final
class VIO:
    """The state of a read or write on a :class:`NetVConnection`.

    Attributes:
      op: ``VIO.READ``, ``VIO.WRITE`` or ``VIO.NONE`` (closed or never started).
      cont: the continuation that receives this VIO's events (``None`` after
        a shutdown of this side).
      mutex: the mutex held around those events (``cont.mutex``).
      nbytes: bytes to transfer; ``INT64_MAX`` for an unbounded operation.
      ndone: bytes transferred so far.
      buffer: the :class:`MIOBuffer` read into, or written from.
      reader: for a write, the :class:`IOBufferReader` the bytes are taken from.
      vc_server: the :class:`NetVConnection` doing the work.
    """

    NONE: Final = 0
    READ: Final = 1
    WRITE: Final = 2

    __slots__ = ("buffer", "cont", "mutex", "nbytes", "ndone", "op", "reader", "vc_server")

    def __init__(self, vc_server: VConnection) -> None:
        self.op: int = VIO.NONE
        self.cont: Continuation | None = None
        self.mutex: ProxyMutex | None = None
        self.nbytes: int = 0
        self.ndone: int = 0
        self.buffer: MIOBuffer | None = None
        self.reader: IOBufferReader | None = None
        self.vc_server: VConnection = vc_server

    def __repr__(self) -> str:
        op = {VIO.NONE: "NONE", VIO.READ: "READ", VIO.WRITE: "WRITE"}[self.op]
        return f"<VIO {op} {self.ndone}/{self.nbytes}>"

    def ntodo(self) -> int:
        """Bytes still to transfer (``nbytes - ndone``)."""
        return self.nbytes - self.ndone

    def done(self) -> None:
        """Finish the operation early: a read stops here, a write ends after
        the bytes already in its buffer (ATS ``VIO::done``)."""
        if self.reader is not None and self.reader.allocated():
            self.nbytes = self.ndone + self.reader.read_avail()
        else:
            self.nbytes = self.ndone

    def set_continuation(self, cont: Continuation | None) -> None:
        """Send this VIO's next events to ``cont`` (under ``cont.mutex``)."""
        if cont is not None and not isinstance(cont, Continuation):
            raise TypeError(f"cont={cont!r}: must be a Continuation or None")
        self.cont = cont
        self.mutex = cont.mutex if cont is not None else None

    def disable(self) -> None:
        """Pause the operation until :meth:`reenable` (ATS ``VIO::disable``)."""
        self.vc_server._vio_disable(self)

    def is_disabled(self) -> bool:
        return self.vc_server._vio_is_disabled(self)

    def reenable(self) -> None:
        """Let the VConnection continue: more room or data in the buffer, or
        the end of a :meth:`disable`."""
        self.vc_server.reenable(self)

    def reenable_re(self) -> None:
        """ATS runs the I/O at once from the caller's stack; here it is the
        same as :meth:`reenable` -- the VC's task runs at the next checkpoint,
        which keeps handlers free of recursion."""
        self.vc_server.reenable_re(self)
