"""``Event`` and ``EventProcessor``: ATS's scheduling calls on trio (``I_Event.h``,
``I_EventProcessor.h``).

ATS keeps events in per-thread priority queues scanned by the ``EThread``
loop. Here each scheduled event is one small trio task in the processor's
nursery that sleeps in a cancel scope whose ``deadline`` is the event's
``timeout_at`` -- trio's own timer heap does the queueing, cancelling an event
cancels the scope, and re-scheduling (from inside the handler, as the seed's
``e->schedule_every(NET_PERIOD)``, or from outside) just moves the deadline.
A negative period ("every loop iteration", ATS's negative queue polled by
``EThread``) is a ``checkpoint()`` per delivery with ``EVENT_POLL``.

Times are trio seconds (``trio.current_time()``): ATS's ``HRTIME_SECONDS(1)``
is ``1.0`` here, ``HRTIME_MSECONDS(10)`` is ``0.01``.
"""

from __future__ import annotations

import logging
import math
from typing import final

import trio

from .._base._checks import is_int
from ._codes import EVENT_IMMEDIATE, EVENT_INTERVAL, EVENT_POLL, event_name
from ._continuation import Action, Continuation, Skipped, call_locked

__all__ = ["Event", "EventProcessor"]

logger = logging.getLogger("trionet.iocore")


def _check_time(name: str, value: object) -> float:
    """A time or period in seconds, any sign (a negative period means "poll")."""
    if not (is_int(value) or isinstance(value, float)):
        raise TypeError(f"{name}={value!r}: must be a number of seconds")
    try:
        seconds = float(value)
    except OverflowError:  # an int like 10**400: trio deadlines are floats
        raise ValueError(f"{name}={value!r}: too large for a number of seconds") from None
    if math.isnan(seconds):
        raise ValueError(f"{name}={value!r}: must be a number of seconds")
    return seconds


def _check_event(value: object) -> int:
    if not is_int(value):
        raise TypeError(f"callback_event={value!r}: must be an int event code")
    return value


@final
class Event(Action):
    """A scheduled callback (ATS ``Event``): an :class:`Action` that calls
    ``continuation.handle_event(callback_event, event)`` when it comes up.

    Attributes:
      callback_event: the event code delivered (``EVENT_IMMEDIATE``, ``EVENT_INTERVAL``...).
      cookie: any value the scheduler attached (ATS ``cookie``).
      timeout_at: ``trio.current_time()`` when it next comes up.
      period: seconds between deliveries for a periodic event; ``0`` for a
        one-shot; negative for "every loop iteration".
    """

    __slots__ = ("_proc", "_running", "_sleep", "_touched", "callback_event", "cookie", "period",
                 "timeout_at")  # fmt: skip

    def __init__(
        self,
        proc: EventProcessor,
        cont: Continuation,
        callback_event: int,
        cookie: object = None,
    ) -> None:
        super().__init__(cont)
        self._proc = proc
        self.callback_event: int = callback_event
        self.cookie: object = cookie
        self.timeout_at: float = -math.inf
        self.period: float = 0.0
        self._running = False  # a task is delivering this event
        self._sleep: trio.CancelScope | None = None
        self._touched = False  # re-scheduled since the last delivery

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled else f"at={self.timeout_at:.3f}"
        return f"<Event {event_name(self.callback_event)} {state} period={self.period}>"

    # ---------------------------------------------------- (re)scheduling
    def schedule_imm(self, callback_event: int = EVENT_IMMEDIATE) -> None:
        """Deliver again as soon as possible (ATS ``Event::schedule_imm``)."""
        self._set(trio.current_time(), 0.0, callback_event)

    def schedule_in(self, timeout: float, callback_event: int = EVENT_INTERVAL) -> None:
        """Deliver once ``timeout`` seconds from now."""
        t = _check_time("timeout", timeout)
        self._set(trio.current_time() + max(t, 0.0), 0.0, callback_event)

    def schedule_at(self, when: float, callback_event: int = EVENT_INTERVAL) -> None:
        """Deliver once at ``trio.current_time() == when``."""
        self._set(_check_time("when", when), 0.0, callback_event)

    def schedule_every(self, period: float, callback_event: int | None = None) -> None:
        """Deliver every ``period`` seconds, the first ``period`` from now; a
        negative period delivers ``EVENT_POLL`` on every loop iteration.

        Raises:
          ValueError: ``period`` is 0.
        """
        p = _check_time("period", period)
        if p == 0:
            raise ValueError(f"period={period!r}: a periodic event needs a non-zero period")
        if callback_event is None:
            callback_event = EVENT_POLL if p < 0 else EVENT_INTERVAL
        now = trio.current_time()
        self._set(now if p < 0 else now + p, p, callback_event)

    def _set(self, when: float, period: float, callback_event: int) -> None:
        if self.cancelled:
            raise RuntimeError(f"{self!r} was cancelled; schedule a new event instead")
        self.callback_event = _check_event(callback_event)
        self.timeout_at = when
        self.period = period
        self._touched = True
        if self._sleep is not None:
            self._sleep.deadline = when
        if not self._running:
            self._proc._start(self)

    def _on_cancel(self) -> None:
        if self._sleep is not None:
            self._sleep.cancel()

    # ------------------------------------------------------------ delivery
    async def _run(self) -> None:
        try:
            while not self.cancelled:
                if self.period < 0:
                    await trio.lowlevel.checkpoint()
                elif trio.current_time() < self.timeout_at:
                    with trio.CancelScope(deadline=self.timeout_at) as self._sleep:
                        await trio.sleep_forever()
                    self._sleep = None
                    continue  # re-check: cancelled, or moved later meanwhile
                if not await self._deliver():
                    return
        finally:
            self._running = False
            self._sleep = None

    async def _deliver(self) -> bool:
        """One callback; returns whether the event is still scheduled after it."""
        self._touched = False
        ret = await call_locked(
            self.continuation, self.callback_event, self, lambda: not self.cancelled
        )
        if ret is Skipped.SKIPPED:
            return False
        if ret is None:
            # The continuation broke the contract (already logged): stop the event.
            self.cancelled = True
            return False
        if self.cancelled:
            return False
        if self._touched:
            return True  # the handler re-scheduled it
        if self.period > 0:
            now = trio.current_time()
            # ATS re-arms at now + period after a late delivery, never in a burst.
            self.timeout_at = max(self.timeout_at + self.period, now)
            return True
        return self.period < 0


@final
class EventProcessor:
    """The scheduling calls of ATS's ``eventProcessor``, bound to a running
    :class:`UnixNetProcessor`'s nursery (``unp.event_processor``).

    Every ``schedule_*`` returns the :class:`Event`; ``event.cancel()`` stops it.
    All but :meth:`schedule_imm_signal` must be called from the trio thread.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()

    def _start(self, event: Event) -> None:
        event._running = True
        self._nursery.start_soon(event._run, name=f"trionet.iocore {event!r}")

    def _new(self, cont: Continuation, callback_event: int, cookie: object) -> Event:
        return Event(self, cont, _check_event(callback_event), cookie)

    def schedule_imm(
        self, cont: Continuation, callback_event: int = EVENT_IMMEDIATE, cookie: object = None
    ) -> Event:
        """Call ``cont`` back as soon as possible."""
        event = self._new(cont, callback_event, cookie)
        event.schedule_imm(callback_event)
        return event

    def schedule_in(
        self,
        cont: Continuation,
        timeout: float,
        callback_event: int = EVENT_INTERVAL,
        cookie: object = None,
    ) -> Event:
        """Call ``cont`` back once, ``timeout`` seconds from now."""
        event = self._new(cont, callback_event, cookie)
        event.schedule_in(timeout, callback_event)
        return event

    def schedule_at(
        self,
        cont: Continuation,
        when: float,
        callback_event: int = EVENT_INTERVAL,
        cookie: object = None,
    ) -> Event:
        """Call ``cont`` back once, at ``trio.current_time() == when``."""
        event = self._new(cont, callback_event, cookie)
        event.schedule_at(when, callback_event)
        return event

    def schedule_every(
        self,
        cont: Continuation,
        period: float,
        callback_event: int | None = None,
        cookie: object = None,
    ) -> Event:
        """Call ``cont`` back every ``period`` seconds (``EVENT_INTERVAL``), or on
        every loop iteration (``EVENT_POLL``) if ``period`` is negative."""
        default = EVENT_POLL if isinstance(period, int | float) and period < 0 else EVENT_INTERVAL
        event = self._new(cont, default if callback_event is None else callback_event, cookie)
        event.schedule_every(period, callback_event)
        return event

    def schedule_imm_signal(
        self, cont: Continuation, callback_event: int = EVENT_IMMEDIATE, cookie: object = None
    ) -> Event:
        """:meth:`schedule_imm`, callable from any OS thread (ATS
        ``schedule_imm_signal`` wakes the target thread the same way).

        Raises:
          trio.RunFinishedError: the trio run has ended.
        """
        event = self._new(cont, callback_event, cookie)
        self._token.run_sync_soon(self._signalled, event)
        return event

    def _signalled(self, event: Event) -> None:
        if event.cancelled:
            return
        try:
            event.schedule_imm(event.callback_event)
        except RuntimeError:  # the processor's nursery has closed
            logger.warning("%r arrived after the processor stopped; dropped", event)
