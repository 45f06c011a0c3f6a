"""SIGTERM/SIGINT/SIGHUP to a supervisor of worker processes: the one policy,
for :func:`trionet.run_workers` and ``trionet --workers N`` alike.

The first SIGTERM or SIGINT starts a graceful shutdown (one SIGTERM per
worker, ``grace`` seconds for their connections). A repeated SIGTERM is not
an escalation: ``timeout``, ``kill -- -pgid`` and some init systems send it to
the supervisor twice (directly and via the process group). A second SIGINT
(Ctrl-C twice) is: the workers are killed at once. SIGHUP reloads (a new
generation of workers replaces the serving one, see
``WorkerSupervisor.reload``); once stopping, it is ignored.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol

__all__ = ["SUPERVISOR_SIGNALS", "Action", "Announce", "Supervised", "forward_signals"]

logger = logging.getLogger("trionet.workers")

Action = Literal["stop", "kill", "reload"]
Announce = Callable[[str, Action], None]
"""Told ``(signal name, "stop" | "kill" | "reload")`` before the supervisor acts."""

SUPERVISOR_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals a supervisor acts on."""


class Supervised(Protocol):
    """What the policy needs from a supervisor (a ``WorkerSupervisor``)."""

    @property
    def stopping(self) -> bool: ...

    grace: float

    def shutdown(self) -> None: ...

    def kill(self) -> None: ...

    def reload(self) -> None: ...


def _log(name: str, action: Action, supervisor: Supervised) -> None:
    if action == "stop":
        logger.warning("%s: graceful shutdown (grace %.1f s)", name, supervisor.grace)
    elif action == "reload":
        logger.warning("%s: reloading (a new generation of workers)", name)
    else:
        logger.warning("%s again: killing the workers now", name)


async def forward_signals(
    supervisor: Supervised, signals: AsyncIterator[int], announce: Announce | None = None
) -> None:
    """Act on each signal from ``signals`` as the module says; ``announce``
    (default: a warning on ``trionet.workers``) is told first."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            if supervisor.stopping:
                continue
            action: Action = "reload"
        elif not supervisor.stopping:
            action = "stop"
        elif signum == signal.SIGINT:
            action = "kill"
        else:
            continue
        if announce is None:
            _log(name, action, supervisor)
        else:
            announce(name, action)
        if action == "stop":
            supervisor.shutdown()
        elif action == "reload":
            supervisor.reload()
        else:
            supervisor.kill()
