"""SIGTERM/SIGINT to a supervisor of worker processes: the one policy, for
:func:`trionet.run_workers` and ``trionet --workers N`` alike.

The first SIGTERM or SIGINT starts a graceful shutdown (one SIGTERM per
worker, ``grace`` seconds for their connections). A repeated SIGTERM is not
an escalation: ``timeout``, ``kill -- -pgid`` and some init systems send it to
the supervisor twice (directly and via the process group). A second SIGINT
(Ctrl-C twice) is: the workers are killed at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from typing import Literal, Protocol

__all__ = ["Announce", "Supervised", "forward_signals"]

logger = logging.getLogger("trionet.workers")

Announce = Callable[[str, Literal["stop", "kill"]], None]
"""Told ``(signal name, "stop" | "kill")`` before the supervisor acts."""


class Supervised(Protocol):
    """What the policy needs from a supervisor (a ``WorkerSupervisor``)."""

    @property
    def stopping(self) -> bool: ...

    grace: float

    def shutdown(self) -> None: ...

    def kill(self) -> None: ...


def _log(name: str, action: Literal["stop", "kill"], supervisor: Supervised) -> None:
    if action == "stop":
        logger.warning("%s: graceful shutdown (grace %.1f s)", name, supervisor.grace)
    else:
        logger.warning("%s again: killing the workers now", name)


async def forward_signals(
    supervisor: Supervised, signals: AsyncIterator[int], announce: Announce | None = None
) -> None:
    """Act on each signal from ``signals`` as the module says; ``announce``
    (default: a warning on ``trionet.workers``) is told first."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if not supervisor.stopping:
            action: Literal["stop", "kill"] = "stop"
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
        else:
            supervisor.kill()
