"""Socket planning: which listening sockets the supervisor holds and what each
worker serves, by sharing mode (``"reuseport"``: one listening socket per
worker slot, all in one SO_REUSEPORT group, worker *i* always gets socket *i*;
``"inherit"``: one listening socket passed to every worker; an ``fd=`` socket
is always passed as it is). Every listening socket belongs to the supervisor:
workers come and go (restarts, reloads) without any queue being closed."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from typing import Literal, TypeAlias

from ..._base._options import AcceptOptions
from ..._inbound._listen import Listener, adopt_listener, open_listeners

__all__ = [
    "Sharing",
    "SocketPlan",
    "plan_listeners",
    "port_of",
    "reuse_port_available",
    "usable_cpus",
]

Sharing: TypeAlias = Literal["auto", "reuseport", "inherit"]
# Exported and described as trionet.Sharing.


@dataclasses.dataclass
class SocketPlan:
    """The supervisor's sockets and what each worker serves.

    ``listen`` and ``pass_fds`` are what every worker gets (inherited and
    ``fd=`` sockets); ``own[i]`` what worker ``i`` gets besides (its own
    SO_REUSEPORT socket per address); :meth:`listen_for` joins them.
    """

    listen: list[AcceptOptions] = dataclasses.field(default_factory=list)
    held: list[socket.socket] = dataclasses.field(default_factory=list)
    pass_fds: list[int] = dataclasses.field(default_factory=list)
    own: list[list[AcceptOptions]] = dataclasses.field(default_factory=list)

    def listen_for(self, worker_id: int) -> tuple[AcceptOptions, ...]:
        """What worker ``worker_id`` serves: the shared sockets, then its own."""
        own = self.own[worker_id] if worker_id < len(self.own) else []
        return (*self.listen, *own)

    def fds_for(self, worker_id: int) -> tuple[int, ...]:
        """The descriptors worker ``worker_id`` inherits."""
        return tuple(opts.fd for opts in self.listen_for(worker_id) if opts.fd is not None)

    def close(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's cpuset, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def reuse_port_available() -> bool:
    """Whether this platform lets several sockets share a port with ``SO_REUSEPORT``."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        except OSError:
            return False
    return True


async def plan_listeners(
    specs: Sequence[AcceptOptions], sharing: Sharing, workers: int = 1
) -> SocketPlan:
    """Open the supervisor's sockets for ``workers`` worker slots.

    Raises:
      OSError: binding failed (nothing stays open).
      ValueError: a spec a worker cannot receive (``ssl_context``).
    """
    if sharing == "auto":
        sharing = "reuseport" if reuse_port_available() else "inherit"
    plan = SocketPlan()
    try:
        for spec in specs:
            if spec.ssl_context is not None:
                raise ValueError(
                    f"{spec!r}: an ssl_context cannot be sent to a worker process; build it in "
                    "the worker: ctx.serve(net, handler, listen=ctx.listen_options(ssl_context=c))"
                )
            if spec.fd is not None:
                _plan_adopted(plan, spec)
            elif sharing == "reuseport" and spec.path is None:
                # A Unix socket has no SO_REUSEPORT group to join: its one
                # listening socket is passed to every worker ("inherit").
                await _plan_reuseport(plan, spec, workers)
            else:
                await _plan_inherit(plan, spec)
    except BaseException:
        plan.close()
        raise
    return plan


def _plan_adopted(plan: SocketPlan, spec: AcceptOptions) -> None:
    assert spec.fd is not None
    listener = adopt_listener(spec.fd, spec)
    plan.held.append(listener.socket)
    plan.pass_fds.append(spec.fd)
    plan.listen.append(spec)


async def _plan_inherit(plan: SocketPlan, spec: AcceptOptions) -> None:
    for listener in await open_listeners(dataclasses.replace(spec, reuse_port=False)):
        plan.held.append(listener.socket)
        fd = listener.socket.fileno()
        plan.pass_fds.append(fd)
        passed = dataclasses.replace(  # a Unix socket's file fields belong to the binding
            listener.options, fd=fd, path=None, mode=None, owner=None, group=None
        )
        plan.listen.append(passed)


async def _plan_reuseport(plan: SocketPlan, spec: AcceptOptions, workers: int) -> None:
    # Why the supervisor opens every worker's socket rather than each worker
    # binding its own. With SO_REUSEPORT each listening socket has its own
    # accept queue, and closing a socket resets the connections still queued
    # on it (unless net.ipv4.tcp_migrate_req=1, Linux >= 5.14, root only):
    # under load, every worker exit -- a crash, a hung worker killed, the old
    # generation of a reload -- would reset a few clients. Draining the queue
    # with non-blocking accepts before close() narrows that window but cannot
    # close it (a handshake may complete between the last EAGAIN and close).
    # So the sockets live here, one per worker slot and address, all in one
    # reuseport group: worker i (and its replacement, and its successor in a
    # reload) inherits socket i, and a worker's exit closes only its copy.
    # The queue is never destroyed while the supervisor runs; a slot whose
    # worker is down holds its share of new clients until the next one
    # accepts them (as the shared socket of "inherit" does), instead of
    # resetting them. Port 0 is resolved by the first slot's sockets.
    first = await open_listeners(dataclasses.replace(spec, reuse_port=True))
    slots = [first]
    try:
        for _ in range(1, workers):
            slot: list[Listener] = []
            slots.append(slot)
            for listener in first:
                host, port = listener.address[0], listener.address[1]
                same = dataclasses.replace(
                    spec,
                    host=str(host),
                    port=int(port),
                    localhost_only=False,
                    family=socket.AddressFamily(listener.family),
                    reuse_port=True,
                )
                slot.extend(await open_listeners(same))
    except BaseException:
        for listener in (lst for slot in slots for lst in slot):
            listener.socket.close()
        raise
    while len(plan.own) < workers:
        plan.own.append([])
    for wid, slot in enumerate(slots):
        for listener in slot:
            plan.held.append(listener.socket)
            worker_spec = dataclasses.replace(
                spec,
                host=str(listener.address[0]),
                port=int(listener.address[1]),
                localhost_only=False,
                family=socket.AddressFamily(listener.family),
                reuse_port=False,  # the supervisor bound it; the worker adopts it
                fd=listener.socket.fileno(),
            )
            plan.own[wid].append(worker_spec)


def port_of(opts: AcceptOptions, plan: SocketPlan) -> int:
    """The port ``opts`` serves (an inherited socket's own)."""
    if opts.fd is None or opts.port:
        return opts.port
    for sock in plan.held:
        if sock.fileno() == opts.fd:
            return int(sock.getsockname()[1])
    return opts.port
