"""``stop_on_signals``: SIGINT/SIGTERM to servers, the policy every program
copied (``examples/``, the ``trionet`` command).

The first signal starts a graceful shutdown (:meth:`Server.shutdown` with the
grace period: listening sockets close, running handlers get ``grace``
seconds); a second one stops at once (``shutdown(0)``: every connection task
is cancelled now). After the second, the signals get Python's own handling
back, so a third Ctrl-C still interrupts a handler that ignores cancellation.

Why a function the program awaits rather than a background task: it returns
when the servers have closed -- after a signal, or when they stop for any
other reason (``shutdown`` called elsewhere, a fatal accept error) -- which is
exactly the point where a program prints its summary and exits. It takes any
number of servers, so the stats page (:func:`trionet.serve_stats`) stops with
the server it reports on.

Supervisors of worker processes have their own policy, in which a repeated
SIGTERM is not an escalation (``trionet._apps._workers._signals``): a process
group's SIGTERM reaches them twice. A single process gets one per kill; two
sent back to back (coreutils' ``timeout`` signals its child, then the child's
process group) arrive as one unless the first was taken in between: Python
and trio keep one pending signal of each kind (seen: one, under ``timeout``).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence

import trio

from .._base._checks import check_seconds
from ._server import Server

__all__ = ["DEFAULT_STOP_SIGNALS", "stop_on_signals"]

logger = logging.getLogger("trionet.server")

DEFAULT_STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


async def stop_on_signals(
    *servers: Server,
    grace: float = 5.0,
    signals: Sequence[int] = DEFAULT_STOP_SIGNALS,
    announce: Callable[[str], object] | None = None,
) -> None:
    """Shut ``servers`` down on SIGINT or SIGTERM; return once all have closed.

    The first signal calls :meth:`Server.shutdown(grace) <Server.shutdown>` on
    every server: the listening sockets close at once and running handlers
    get ``grace`` seconds to finish. A second signal -- or a first one when
    every server is already shutting down -- calls ``shutdown(0)``: every
    connection is cancelled now. From then on the signals get their default
    handling back (Ctrl-C raises ``KeyboardInterrupt``)::

        async with trio.open_nursery() as nursery:
            server = await net.start_server(nursery, handler, 8080)
            await trionet.stop_on_signals(server, grace=10)

    Args:
      servers: one or more :class:`Server` (a server and its stats page...).
      grace: seconds the first signal gives running handlers (>= 0).
      signals: the signals acted on (default ``SIGINT`` and ``SIGTERM``).
      announce: called with one line (``"SIGTERM: shutting down (grace 10 s)"``,
        ``"SIGTERM again: stopping now"``) before each action; default, a
        warning on the ``trionet.server`` logger.

    Returns:
      When every server has closed: after the signals above, or when the
      servers stopped for another reason. A graceful and an immediate stop
      both return normally; the exit status is the program's to choose (the
      examples exit 0 either way: both are stops the operator asked for).

    Raises:
      TypeError: no server given, or something that is not a ``Server``.
      ValueError: ``grace`` negative, NaN or not a number; ``signals`` empty
        or naming something that is not a signal.
      RuntimeError: not called from the main thread (Python delivers signals
        there only).
    """
    _check(servers, grace, signals)
    say = announce if announce is not None else logger.warning
    again = ""
    with trio.open_signal_receiver(*signals) as received:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_once_closed, servers, nursery.cancel_scope)
            async for signum in received:
                name = signal.Signals(signum).name
                if not all(server.stopping for server in servers):
                    say(f"{name}: shutting down (grace {grace:g} s)")
                    for server in servers:
                        server.shutdown(grace)
                    again = " again"
                    continue
                say(f"{name}{again}: stopping now")
                for server in servers:
                    server.shutdown(0)
                nursery.cancel_scope.cancel()
                break
    # The signals have their default handling again; wait for the servers.
    for server in servers:
        await server.wait_closed()


async def _cancel_once_closed(servers: tuple[Server, ...], scope: trio.CancelScope) -> None:
    for server in servers:
        await server.wait_closed()
    scope.cancel()


def _check(servers: tuple[object, ...], grace: object, signals: object) -> None:
    if not servers:
        raise TypeError("stop_on_signals() needs at least one Server")
    for server in servers:
        if not isinstance(server, Server):
            raise TypeError(f"stop_on_signals(): {server!r} is not a trionet.Server")
    check_seconds("stop_on_signals", "grace", grace, optional=False)
    if isinstance(signals, str | bytes) or not isinstance(signals, Sequence) or not signals:
        raise ValueError(
            f"stop_on_signals.signals={signals!r}: must be a non-empty list of signals"
        )
    for signum in signals:
        try:
            signal.Signals(signum)
        except (ValueError, TypeError):
            raise ValueError(f"stop_on_signals.signals: {signum!r} is not a signal") from None
