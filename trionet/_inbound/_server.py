"""``Server`` and ``serve``: listening sockets, accept tasks and connection
tasks of one ``NetProcessor.serve()`` call, and its graceful shutdown.

Task layout of one ``serve()`` call::

    serve()
    └── handler nursery            (cancel scope = shutdown grace deadline)
        ├── accept nursery         (cancel scope = stop accepting)
        │   └── one accept task per listening socket  (trionet._inbound._accept)
        └── one task per connection (HandlerTasks.run):
            `with conn scope: PROXY header, TLS handshake, await handler(conn)`

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
from .._core._access_log import Outcome, log_session
from .._core._connection import Connection
from .._core._stats import NetStatistics
from .._core._table import ConnectionTable
from ._accept import Acceptor, AcceptPolicy, Handler, check_slots, slots_per_connection
from ._listen import Listener, open_listeners
from ._prepare import has_steps, prepare_inbound

__all__ = ["Handler", "HandlerTasks", "Server", "bind_all", "serve"]

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
    check_slots(processor._table, need, repr(handler))
    listeners = await bind_all(listen)
    server = Server(processor, listeners)
    await server._run(handler, task_status)


async def bind_all(listen: tuple[int | AcceptOptions, ...]) -> list[Listener]:
    """Bind every listen spec (a port or :class:`AcceptOptions`), in order; on
    failure nothing stays open.

    Raises:
      TypeError: a spec that is neither a port number nor ``AcceptOptions``.
      OSError / UnsupportedOptionError: as ``open_listeners``.
    """
    specs = [AcceptOptions.coerce(spec) for spec in listen]
    listeners: list[Listener] = []
    try:
        for spec in specs:
            listeners.extend(await open_listeners(spec))
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


@final
class HandlerTasks:
    """serve()'s :data:`~trionet._inbound._accept.ConnectionTask`: the
    pre-handler steps, the handler, and the close, in one task per connection."""

    __slots__ = ("_handler", "_opts", "_policy", "_port", "_server", "_steps", "_table")

    def __init__(
        self,
        table: ConnectionTable,
        policy: AcceptPolicy,
        opts: AcceptOptions,
        handler: Handler,
        *,
        port: int = 0,
        server: Server | None = None,
    ) -> None:
        self._table = table
        self._policy = policy
        self._opts = opts
        self._handler = handler
        self._port = port  # the listening port, for the session log
        self._server = server  # stopping: a cancellation is the shutdown's
        # Decided once per listener, not per connection: PROXY/TLS steps to run
        # before the handler; and whether the close must try TLS close_notify.
        self._steps = has_steps(opts)

    async def run(self, conn: Connection, scope: trio.CancelScope) -> None:
        """One connection's task: the steps before the handler, the handler,
        and the close, whatever happens."""
        handler = self._handler
        outcome: Outcome = "returned"
        try:
            with scope:
                # Plain TCP pays one test here; PROXY/TLS steps run before the
                # handler, inside the connection's scope (so its timeouts and a
                # shutdown apply), and a failure closes it without the handler.
                if self._steps and not await prepare_inbound(conn, self._opts, self._table):
                    outcome = "handshake_failed"
                    return
                await handler(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The peer reset or the connection was closed under the handler:
            # the connection's ending, not a bug in the handler.
            logger.debug("connection #%d ended: %r", conn.id, exc)
        except Exception as exc:
            outcome = "handler_error"
            self._table.counters.handler_errors += 1
            if self._policy.propagate_handler_errors:
                raise
            logger.error(
                "handler %r failed on connection #%d from %r",
                handler,
                conn.id,
                conn.remote_address,
                exc_info=exc,
            )
        except BaseException:
            # Cancelled from outside the connection's own scope (its timeouts
            # stop inside it): the shutdown's grace deadline, or serve() itself.
            server = self._server
            outcome = "shutdown" if server is not None and server.stopping else "cancelled"
            raise
        finally:
            if self._steps and self._opts.ssl_context is not None and not conn.closed:
                # TLS: send close_notify if that can be done promptly (shielded,
                # bounded in Connection.aclose).
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            conn.close()
            if self._policy.access_log:
                log_session(conn, self._port, outcome)


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
        """The bound port numbers, in listen order, without repeats (0 for a
        Unix socket: its path is ``Listener.path``)."""
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
        tasks = HandlerTasks(
            self._table, self._policy, listener.options, handler, port=listener.port, server=self
        )
        need = slots_per_connection(handler)
        acceptor = Acceptor(self._table, self._policy, listener, need, self._nursery, tasks.run)
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
            listener.close()

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
                listener.close()
            self._closed.set()
        if self._fatal is not None:
            raise self._fatal
