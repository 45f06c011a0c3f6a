"""Socket planning: which listening sockets the supervisor holds and what each
worker serves, by sharing mode (``"reuseport"``: reserved, bound but not
listening, re-bound by each worker; ``"inherit"``: one listening socket passed
to every worker; an ``fd=`` socket is always passed as it is)."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Sequence
from typing import Literal, TypeAlias

from ..._base._options import AcceptOptions
from ..._inbound._listen import adopt_listener, bind_addresses, bind_sockets, open_listeners

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
    """The supervisor's sockets and what each worker serves."""

    listen: list[AcceptOptions] = dataclasses.field(default_factory=list)
    held: list[socket.socket] = dataclasses.field(default_factory=list)
    pass_fds: list[int] = dataclasses.field(default_factory=list)

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


async def plan_listeners(specs: Sequence[AcceptOptions], sharing: Sharing) -> SocketPlan:
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
                await _plan_reuseport(plan, spec)
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


async def _plan_reuseport(plan: SocketPlan, spec: AcceptOptions) -> None:
    spec = dataclasses.replace(spec, reuse_port=True)
    # Bound with SO_REUSEPORT but not listening (see the module notes); one
    # port for every address, as a single-process server would have.
    for (family, sockaddr), sock in bind_sockets(await bind_addresses(spec), spec):
        plan.held.append(sock)
        worker_spec = dataclasses.replace(
            spec,
            host=sockaddr[0],
            port=sockaddr[1],
            localhost_only=False,
            family=socket.AddressFamily(family),
        )
        plan.listen.append(worker_spec)


def port_of(opts: AcceptOptions, plan: SocketPlan) -> int:
    """The port ``opts`` serves (an inherited socket's own)."""
    if opts.fd is None:
        return opts.port
    for sock in plan.held:
        if sock.fileno() == opts.fd:
            return int(sock.getsockname()[1])
    return opts.port
