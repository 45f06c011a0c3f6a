"""``Server`` and ``serve``: listening sockets, accept tasks and connection
tasks of one ``NetProcessor.serve()`` call, and its graceful shutdown.

Task layout of one ``serve()`` call::

    serve()
    └── handler nursery            (cancel scope = shutdown grace deadline)
        ├── accept nursery         (cancel scope = stop accepting)
        │   └── one accept task per listening socket  (trionet._inbound._accept)
        └── one task per connection: `with conn scope: await handler(conn)`

The accept nursery sits *inside* the handler nursery's body, so stopping the
accept tasks (shutdown, or a fatal accept error) leaves the connection tasks
running until they finish or the grace deadline cancels them (``shutdown``'s
``grace``; ``accept_error_grace`` after a fatal accept error, which ``serve()``
raises as :class:`AcceptError` once they are done); cancelling ``serve()``
itself cancels everything at once.
"""

from __future__ import annotations

import logging
from typing import Protocol, final

import trio

from .._base._checks import check_seconds
from .._base._errors import AcceptError
from .._base._options import AcceptOptions
from .._core._stats import NetStatistics
from .._core._table import ConnectionTable
from ._accept import Acceptor, AcceptPolicy, Handler, slots_per_connection
from ._listen import Listener, open_listeners

__all__ = ["Handler", "Server", "serve"]

logger = logging.getLogger("trionet.server")


class Processor(Protocol):
    """What a server needs from its ``processor`` (a ``NetProcessor``, which
    is above this module): its statistics, and the connection table and accept
    policy its connections go through (private to trionet)."""

    def statistics(self) -> NetStatistics: ...

    @property
    def _table(self) -> ConnectionTable: ...

    @property
    def _accept(self) -> AcceptPolicy: ...


async def serve(
    processor: Processor,
    handler: Handler,
    *listen: int | AcceptOptions,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Bind every listen spec, then serve until shut down (the body of
    :meth:`NetProcessor.serve`, which documents the contract)."""
    if not listen:
        raise ValueError("serve() needs at least one port or AcceptOptions to listen on")
    if not callable(handler):
        raise TypeError(f"handler={handler!r} is not callable")
    need = slots_per_connection(handler)
    limit = processor._table.throttle.max_connections
    if limit is not None and limit < need:
        raise ValueError(
            f"max_connections={limit}: a session of {handler!r} needs "
            f"{need} connections (client and upstream)"
        )
    specs = [AcceptOptions.coerce(spec) for spec in listen]
    listeners: list[Listener] = []
    try:
        for spec in specs:
            listeners.extend(await open_listeners(spec))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    server = Server(processor, listeners)
    await server._run(handler, task_status)


@final
class Server:
    """A running ``serve()`` call: its listeners, statistics and shutdown.

    Obtained from :meth:`NetProcessor.start_server`
    (``server = await net.start_server(nursery, handler, 8080)``), or from
    ``task_status.started``: ``server = await nursery.start(net.serve, handler, 8080)``.
    :func:`stop_on_signals` shuts it down on SIGINT/SIGTERM.
    """

    def __init__(self, processor: Processor, listeners: list[Listener]) -> None:
        self.processor = processor
        self.listeners: tuple[Listener, ...] = tuple(listeners)
        self._table = processor._table
        self._policy = processor._accept
        self._handler_scope: trio.CancelScope | None = None
        self._accept_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._fatal: AcceptError | None = None
        self._stopping = False
        self._closed = trio.Event()

    def __repr__(self) -> str:
        return f"<trionet.Server ports={self.ports}>"

    @property
    def ports(self) -> list[int]:
        """The bound port numbers, in listen order, without repeats."""
        return list(dict.fromkeys(listener.port for listener in self.listeners))

    @property
    def stopping(self) -> bool:
        """True once :meth:`shutdown` was called (or a fatal accept error stopped it)."""
        return self._stopping

    def statistics(self) -> NetStatistics:
        """The statistics of this server's processor (servers of one processor
        share them; use one processor per server to tell them apart)."""
        return self.processor.statistics()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop the server gracefully: close the listening sockets now, let
        running handlers finish for up to ``grace`` seconds, then cancel the
        rest. Returns at once; ``serve()`` returns (and :meth:`wait_closed`
        wakes) when everything is closed. Calling it again can only shorten the
        grace period."""
        check_seconds("Server.shutdown", "grace", grace)
        if grace is None:  # check_seconds lets None (disabled) through
            raise ValueError("Server.shutdown.grace=None: must be a number of seconds")
        self._stopping = True
        self._accept_scope.cancel()
        if self._handler_scope is not None:
            deadline = trio.current_time() + grace
            self._handler_scope.deadline = min(self._handler_scope.deadline, deadline)

    async def wait_closed(self) -> None:
        """Wait until ``serve()`` has closed every listener and connection."""
        await self._closed.wait()

    async def _accept_task(self, listener: Listener, handler: Handler) -> None:
        assert self._nursery is not None
        acceptor = Acceptor(self._table, self._policy, listener, handler, self._nursery)
        try:
            await acceptor.run()
        except AcceptError as exc:
            # The listening socket failed, not the connections: stop accepting
            # on every port (serve() is going to fail) but end like a shutdown,
            # letting open connections finish within the grace period.
            grace = self._policy.accept_error_grace
            logger.error(
                "%s; stopping the server: no new connections, open ones get %s s to finish",
                exc,
                grace,
            )
            if self._fatal is None:
                self._fatal = exc
            self.shutdown(grace)
        finally:
            self._table.counters.accepts_currently_open -= 1
            trio.lowlevel.notify_closing(listener.socket)
            listener.socket.close()

    async def _run(self, handler: Handler, task_status: trio.TaskStatus[Server]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._handler_scope = nursery.cancel_scope
                with self._accept_scope:
                    async with trio.open_nursery() as accepts:
                        for listener in self.listeners:
                            self._table.counters.accepts_currently_open += 1
                            accepts.start_soon(self._accept_task, listener, handler)
                        task_status.started(self)
                # Not accepting any more; connection tasks finish (or the
                # shutdown grace deadline cancels them) before the nursery exits.
        finally:
            for listener in self.listeners:
                listener.socket.close()
            self._closed.set()
        if self._fatal is not None:
            raise self._fatal
