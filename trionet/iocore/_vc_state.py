"""What a ``NetVConnection``'s read and write machines share with it: the
state of one direction (ATS ``NetState``). Each machine declares what it
needs from the VC itself, as a Protocol in its own module."""

from __future__ import annotations

import errno

import trio

from ._vio import VIO

__all__ = ["Side", "errno_of"]


class Side:
    """One direction's state (ATS ``NetState``): its VIO and flags."""

    __slots__ = ("disabled", "enabled", "ended", "gen", "lot", "shutdown", "vio")

    def __init__(self, vio: VIO) -> None:
        self.vio = vio
        self.enabled = False  # ATS NetState.enabled: the task may do I/O
        self.disabled = False  # VIO.disable() until reenable (VIO.is_disabled)
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
            and not self.disabled
            and vio.ntodo() > 0
        )

    def open_for(self, op: int) -> bool:
        """Enabled, neither shut down nor disabled, and its VIO doing ``op``:
        the checks both machines make before any I/O."""
        return self.enabled and not self.shutdown and not self.disabled and self.vio.op == op

    def wake(self) -> None:
        self.lot.unpark_all()


def errno_of(exc: BaseException) -> int:
    """The errno behind a trio Broken/Closed error (EIO when there is none)."""
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        cause = cause.__cause__
    return errno.EIO
