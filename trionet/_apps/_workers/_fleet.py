"""The fleet as one server, on both sides of the shared memory
(``_shared``): the supervisor's stats page and readiness, and what a worker
does with its slot (fleet-wide limits, publishing its statistics).

Supervisor::

    WorkerSupervisor.run
    ├── stats page (serve_readings over FleetMemory.readings)   closes last
    └── one task per worker slot: claim a memory slot, spawn, wait, retire it

Worker::

    ctx.serve(net, handler)
    ├── share_limits: the processor's table counts through a SharedThrottle
    ├── net.serve(handler, ...)
    ├── publish every PUBLISH_INTERVAL, and once more when the server has closed
    └── wake accept loops paused at the fleet's limit when another worker frees a slot

The last one: an accept loop paused at ``max_connections`` ("pause" mode)
parks until a connection *of its own processor* closes; at the fleet's limit
the slot may free up in another process, which cannot wake it. So a worker
looks every ``WAKE_INTERVAL`` seconds, while a loop is parked, whether the
fleet is below its limit again, and wakes it: a slot freed elsewhere is
taken up within that interval.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

from ..._core._stats_page import Readiness
from ..._processor import NetProcessor, table_of
from .._tcp_proxy import TcpProxy
from ._shared import PUBLISH_INTERVAL, SharedThrottle, WorkerSlot

__all__ = [
    "WAKE_INTERVAL",
    "Fleet",
    "fleet_readiness",
    "publish",
    "publish_until",
    "share_limits",
    "wake_paused",
]

WAKE_INTERVAL: Final = 0.02


class Fleet(Protocol):
    """What :func:`fleet_readiness` needs of a supervisor (a ``WorkerSupervisor``)."""

    workers: int

    @property
    def stopping(self) -> bool: ...

    @property
    def ready_pids(self) -> dict[int, int]: ...

    @property
    def reloading(self) -> bool: ...


def fleet_readiness(supervisor: Fleet) -> Readiness:
    """Ready while the supervisor is not stopping or reloading and every worker serves.

    A reload answers 503 from the moment it begins until its new generation
    serves: the old generation keeps accepting meanwhile (no connection is
    refused), but a load balancer that prefers another instance during the
    hand-over may, and the operator sees the reload on the page."""
    readiness = Readiness()
    readiness.watch(supervisor)

    def every_worker_serving() -> str | None:
        if supervisor.reloading:
            return "reloading: a new generation of workers is starting"
        serving = len(supervisor.ready_pids)
        if serving >= supervisor.workers:
            return None
        return f"{serving} of {supervisor.workers} workers serving"

    readiness.add_check(every_worker_serving)
    return readiness


# --------------------------------------------------------------------- worker
def share_limits(slot: WorkerSlot, net: NetProcessor) -> None:
    """Make ``net``'s limits (``max_connections``, ``per_client_max_connections``)
    apply to the fleet: its table counts through the slot's shared throttle.

    Raises:
      RuntimeError: ``net`` already has connections open or servers accepting.
    """
    table = table_of(net)
    if isinstance(table.throttle, SharedThrottle):
        return  # served before (ctx.serve called again)
    table.use_throttle(slot.throttle(table.throttle, table.exempt))


def publish(slot: WorkerSlot, net: NetProcessor, handler: object) -> None:
    """Copy ``net``'s statistics (and a :class:`TcpProxy` handler's) to the slot."""
    proxy = handler.statistics() if isinstance(handler, TcpProxy) else None
    slot.publish(net.statistics(), proxy)


async def publish_until(slot: WorkerSlot, net: NetProcessor, handler: object) -> None:
    """Publish every ``PUBLISH_INTERVAL`` seconds until cancelled."""
    while True:
        publish(slot, net, handler)
        await trio.sleep(PUBLISH_INTERVAL)


async def wake_paused(net: NetProcessor) -> None:
    """Wake ``net``'s accept loops parked at the limit once the fleet is
    below it again (see the module notes); until cancelled."""
    table = table_of(net)
    while True:
        await trio.sleep(WAKE_INTERVAL)
        if table.parked() and not table.throttle.at_limit():
            table.slot_freed()
