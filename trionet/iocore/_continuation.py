"""``ProxyMutex``, ``Continuation`` and ``Action``: the callback contract of ATS's
event system (``I_Lock.h``, ``I_Continuation.h``, ``I_Action.h``), and the one
place where the shim calls a continuation.

Every callback the shim makes goes through :func:`call_locked`: take the
continuation's mutex (a try-lock; if another thread holds it, retry after
``NET_RETRY_DELAY`` as ATS's ``MUTEX_TRY_LOCK`` callers do), call the handler,
check what it returned. A handler that breaks the contract -- raises, returns
something other than an int, or is missing -- is logged with the continuation
and the event named, and reported to the caller as ``None`` so the caller can
close the connection. Nothing propagates into the processor's nursery: one bad
continuation never takes the server down.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Final, Literal, TypeAlias, final

import trio

from .._base._checks import is_int
from .._base._errors import TrionetError
from ._codes import EVENT_NONE, event_name

__all__ = [
    "NET_RETRY_DELAY",
    "Action",
    "Continuation",
    "ContinuationError",
    "EventHandler",
    "ProxyMutex",
    "Skipped",
    "call_locked",
    "invoke",
]

logger = logging.getLogger("trionet.iocore")

EventHandler: TypeAlias = Callable[[int, object], int]
# Exported and described as trionet.iocore.EventHandler.

# ATS net_retry_delay: 10 ms between attempts to take a contended mutex.
NET_RETRY_DELAY: Final = 0.01


class ContinuationError(TrionetError):
    """A continuation broke the event contract (no handler set)."""


def _whoami() -> object:
    """The owner identity of the caller: its trio task inside trio, else its thread.

    Two trio tasks are different owners (a task that took the mutex and then
    awaited still holds it), and so are two OS threads."""
    try:
        return trio.lowlevel.current_task()
    except RuntimeError:
        return threading.current_thread()


@final
class ProxyMutex:
    """A recursive mutex owned by a trio task or an OS thread (ATS ``ProxyMutex``).

    ``try_lock()`` never blocks; ``lock()``/``unlock()`` (or ``with mutex:``)
    block an OS thread until the mutex is free. Inside trio, ``lock()`` on a
    mutex another *task* holds would deadlock the run loop, so it raises
    ``RuntimeError`` instead -- use ``try_lock`` there, as the shim does.
    """

    __slots__ = ("_cond", "_count", "_owner")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: object = None
        self._count = 0

    def __repr__(self) -> str:
        return f"<ProxyMutex owner={self._owner!r} depth={self._count}>"

    @property
    def thread_holding(self) -> object:
        """The owning trio task or thread, or ``None`` (ATS ``thread_holding``)."""
        return self._owner

    def held(self) -> bool:
        """Whether the caller holds this mutex."""
        return self._count > 0 and self._owner is _whoami()

    def try_lock(self) -> bool:
        """Take the mutex if it is free or already the caller's; never blocks.

        Returns:
          True if taken (call :meth:`unlock` once for each success).
        """
        me = _whoami()
        with self._cond:
            if self._count and self._owner is not me:
                return False
            self._owner = me
            self._count += 1
            return True

    def lock(self) -> None:
        """Take the mutex, blocking an OS thread until it is free.

        Raises:
          RuntimeError: called from a trio task while another holder has it.
        """
        me = _whoami()
        with self._cond:
            while self._count and self._owner is not me:
                if isinstance(me, trio.lowlevel.Task):
                    raise RuntimeError(
                        f"{self!r} is held by {self._owner!r}; a trio task must use try_lock()"
                    )
                self._cond.wait()
            self._owner = me
            self._count += 1

    def unlock(self) -> None:
        """Release one level of the mutex.

        Raises:
          RuntimeError: the caller does not hold it.
        """
        with self._cond:
            if not self._count or self._owner is not _whoami():
                raise RuntimeError(f"unlock of {self!r} by a non-holder")
            self._count -= 1
            if not self._count:
                self._owner = None
                self._cond.notify()

    def __enter__(self) -> ProxyMutex:
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()


class Continuation:
    """Something that can be called back: a mutex and a handler (ATS ``Continuation``).

    Subclass it and switch handlers with :meth:`set_handler` (ATS ``SET_HANDLER``)::

        class Accept(Continuation):
            def __init__(self):
                super().__init__()
                self.set_handler(self.main_event)

            def main_event(self, event: int, data: object) -> int:
                ...
                return EVENT_CONT

    Args:
      mutex: the :class:`ProxyMutex` held around every callback; a fresh one
        by default (ATS ``new_ProxyMutex()``). Continuations that share state
        share a mutex.
      handler: the initial handler, ``handler(event, data) -> int``.
    """

    __slots__ = ("__weakref__", "handler", "mutex")

    def __init__(
        self, mutex: ProxyMutex | None = None, handler: EventHandler | None = None
    ) -> None:
        if mutex is not None and not isinstance(mutex, ProxyMutex):
            raise TypeError(f"mutex={mutex!r}: must be a ProxyMutex or None")
        self.mutex: ProxyMutex = mutex if mutex is not None else ProxyMutex()
        self.handler: EventHandler | None = None
        if handler is not None:
            self.set_handler(handler)

    def __repr__(self) -> str:
        name = getattr(self.handler, "__name__", None)
        return f"<{type(self).__name__} handler={name}>"

    def set_handler(self, handler: EventHandler) -> None:
        """Make ``handler(event, data) -> int`` receive the next events (ATS ``SET_HANDLER``).

        Raises:
          TypeError: ``handler`` is not callable.
        """
        if not callable(handler):
            raise TypeError(f"handler={handler!r} is not callable")
        self.handler = handler

    def handle_event(self, event: int = EVENT_NONE, data: object = None) -> int:
        """Call the current handler (ATS ``handleEvent``).

        Raises:
          ContinuationError: no handler was set.
        """
        handler = self.handler
        if handler is None:
            raise ContinuationError(f"{self!r} has no handler for {event_name(event)}")
        return handler(event, data)


class Action:
    """A handle on an operation that will call a continuation back (ATS ``Action``).

    After :meth:`cancel` nothing more is delivered to ``continuation`` for this
    operation. Only the continuation's owner (under its mutex) should cancel.

    Attributes:
      continuation: who gets called back.
      mutex: the continuation's mutex.
      cancelled: whether :meth:`cancel` was called.
    """

    __slots__ = ("cancelled", "continuation", "mutex")

    def __init__(self, continuation: Continuation) -> None:
        if not isinstance(continuation, Continuation):
            raise TypeError(f"continuation={continuation!r}: must be a Continuation")
        self.continuation: Continuation = continuation
        self.mutex: ProxyMutex = continuation.mutex
        self.cancelled: bool = False

    def cancel(self) -> None:
        """Stop the operation; no callback reaches the continuation afterwards."""
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel()

    def _on_cancel(self) -> None:
        """Subclass hook: stop whatever runs the operation."""


def invoke(cont: Continuation, event: int, data: object) -> int | None:
    """Call ``cont`` (its mutex already held) and check the contract.

    Returns:
      The handler's int result, or ``None`` if the continuation broke the
      contract (the violation is logged, naming continuation and event).
    """
    try:
        ret = cont.handle_event(event, data)
    except ContinuationError as exc:
        logger.error("contract violation: %s", exc)
        return None
    except Exception:
        logger.exception("contract violation: %r raised while handling %s", cont, event_name(event))
        return None
    if not is_int(ret):
        logger.error(
            "contract violation: %r returned %r for %s; a handler must return an int "
            "(EVENT_DONE or EVENT_CONT)",
            cont,
            ret,
            event_name(event),
        )
        return None
    return ret


class Skipped(enum.Enum):
    """:func:`call_locked` did not call: the callback was no longer wanted."""

    SKIPPED = 0


async def call_locked(
    cont: Continuation,
    event: int,
    data: object,
    wanted: Callable[[], bool] | None = None,
) -> int | Literal[Skipped.SKIPPED] | None:
    """Take ``cont.mutex`` (try-lock, retrying every ``NET_RETRY_DELAY`` while
    another holder has it), then :func:`invoke`.

    ``wanted`` is checked with the mutex held, right before the call: if it
    says no (the VC was closed, the action cancelled while we waited for the
    mutex) nothing is called and ``Skipped.SKIPPED`` is returned.
    """
    mutex = cont.mutex
    # Polling, as ATS's MUTEX_TRY_LOCK callers reschedule themselves: the holder
    # may be another OS thread, and contention is rare enough that a wake-up
    # channel per mutex would cost more than it saves.
    while not mutex.try_lock():  # noqa: ASYNC110
        await trio.sleep(NET_RETRY_DELAY)
    try:
        if wanted is not None and not wanted():
            return Skipped.SKIPPED
        return invoke(cont, event, data)
    finally:
        mutex.unlock()
