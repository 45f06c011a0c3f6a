"""``ConnectionListener``: trionet's accept path under any trio server.

:meth:`NetProcessor.open_listeners` returns one per listening socket. Each is a
:class:`trio.abc.Listener` whose ``accept()`` returns a
:class:`~trionet.Connection` that has been through everything ``serve()`` does
before a handler runs: the throttle (``"pause"`` parks the accept loop,
``"close"`` refuses at accept), the per-client limit, socket options, the
connection counted and its timeouts armed, the outbound slot reserved if asked,
the PROXY header read and the TLS handshake done. The accept loop and the
admission are :class:`~trionet._inbound._accept.Acceptor`'s, the pre-handler
steps :func:`~trionet._inbound._prepare.prepare_inbound`: the same code
``serve()`` runs, not a copy.

Task layout of one listener::

    first accept()  ──spawns──>  system task "trionet.ConnectionListener"
                                 └── nursery (cancelled by aclose())
                                     ├── Acceptor.run (parks while the ready queue is full)
                                     └── one task per admitted connection:
                                         `with conn scope: PROXY header, TLS handshake`
                                         then onto the ready queue
    accept()  <──  ready queue (READY_LIMIT), in the order the steps completed
"""

from __future__ import annotations

import collections
import logging
import socket
from typing import Any, Final, final

import trio

from .._base._checks import check_bool
from .._base._options import AcceptOptions
from .._core._connection import Connection
from .._core._table import ConnectionTable
from ._accept import Acceptor, AcceptPolicy, check_slots
from ._listen import Listener
from ._prepare import has_steps, prepare_inbound
from ._server import bind_all

__all__ = ["READY_LIMIT", "ConnectionListener", "open_connection_listeners"]

logger = logging.getLogger("trionet.server")

# Connections whose steps are done and that no accept() has taken yet. While
# this many wait, the accept loop stops accepting (they are counted and hold
# throttle slots): further clients wait in the kernel backlog, as they would
# for a plain socket nobody calls accept() on. trio.serve_listeners takes each
# one at once, so with it the queue holds at most a few. Connections still in
# their PROXY/TLS steps are not counted (see ConnectionListener.full).
READY_LIMIT: Final = 32


# Where the pre-handler steps run. A trio Listener's accept() is awaited by one
# task: trio.serve_listeners, trio-websocket's WebSocketServer (which runs on
# it) and servers built the same way call accept() in a loop and start a
# handler task per result. Reading the PROXY header and running the TLS
# handshake inside accept() would make every client wait for the slowest one
# in front of it -- a scanner that connects and sends nothing would hold the
# port for proxy_protocol_timeout + tls_handshake_timeout. (trio's SSLListener
# avoids that by leaving the handshake to the handler's first I/O; trionet
# promises a connection whose steps are done, as serve() does.)
#
# So each listener owns a background task: the shared accept loop, and in its
# nursery one task per admitted connection running the steps, concurrently,
# under the connection's cancel scope (its timeouts apply, as in serve()).
# accept() takes connections from a bounded ready queue in the order their
# steps completed; a connection that fails or times out in them is counted,
# closed and never handed out.
#
# open_listeners() is a plain coroutine (trio's convention: open listeners,
# then serve them), so there is no caller's nursery to run that task in: it is
# a trio system task, started by the first accept() -- until then clients wait
# in the kernel backlog -- and ended by aclose(), which returns once it has
# ended and every connection not handed out is closed. It never raises (a
# system task's exception would crash the run): a fatal accept error is kept
# and raised by accept().
@final
class ConnectionListener(trio.abc.Listener[Connection]):
    """A :class:`trio.abc.Listener` of :class:`Connection` objects, from
    :meth:`NetProcessor.open_listeners`: plug trionet's admission control,
    timeouts, PROXY protocol, TLS and statistics under ``trio.serve_listeners``,
    trio-websocket's ``WebSocketServer`` or any server that takes trio listeners.

    ``accept()`` returns a connection that has been through everything
    :meth:`NetProcessor.serve` does before a handler runs: the processor's
    throttle (``"pause"``: not accepted until a slot frees; ``"close"``:
    accepted and closed, counted) and per-client limit, socket options, the
    PROXY header and the TLS handshake, counted in the statistics, its
    inactivity and active timeouts armed. The caller owns it and closes it
    (``trio.serve_listeners`` does when the handler returns).

    The PROXY header and the TLS handshake run concurrently in a background
    task the listener owns (started by the first ``accept()``), so one slow
    client never delays the others; ``accept()`` returns connections in the
    order their steps completed. At most 32 finished connections wait for
    ``accept()``; beyond that the listener stops accepting and clients wait
    in the kernel backlog.

    Timeouts outside ``serve()``: nothing cancels the task using the
    connection (``trio.serve_listeners`` starts handlers in its own
    nursery), so a timeout closes the connection and the handler's current
    or next I/O call raises ``trio.ClosedResourceError`` (TLS too), which
    ``trio.serve_listeners``, as any handler exception, lets crash the
    server. Run the handler's body in ``with conn.enforce_timeouts():`` and a
    timeout cancels it quietly instead, as ``serve()`` does;
    ``conn.timed_out`` says why.

    The :class:`trio.abc.Listener` contract: ``accept()`` raises
    ``trio.ClosedResourceError`` once the listener is closed (also an
    ``accept()`` waiting when it is), ``trio.BusyResourceError`` if another
    task is already in ``accept()``, and :class:`AcceptError` (an ``OSError``)
    after the listening socket failed fatally; descriptor or memory exhaustion
    is handled inside, as ``serve()`` does (counted, paused, retried).
    :meth:`aclose` closes the listening socket and every connection not yet
    handed out; it is idempotent, and connections already returned stay open.

    Attributes:
      address: the bound address, as ``getsockname()`` returns it.
      port: the bound port.
      options: the :class:`AcceptOptions` it was opened with.
      socket: the listening ``socket.socket`` (non-blocking; closed by :meth:`aclose`).
    """

    __slots__ = (
        "_accepting",
        "_arrived",
        "_cancel",
        "_closed",
        "_done",
        "_failure",
        "_listener",
        "_need",
        "_policy",
        "_ready",
        "_starting",
        "_table",
        "_taken",
    )

    def __init__(
        self, table: ConnectionTable, policy: AcceptPolicy, listener: Listener, need: int
    ) -> None:
        """Take over ``listener``'s socket (by ``open_listeners``)."""
        self._table = table
        self._policy = policy
        self._listener = listener
        self._need = need
        self._ready: collections.deque[Connection] = collections.deque()
        self._starting = 0  # admitted, their task not yet running (see full())
        self._arrived = trio.lowlevel.ParkingLot()  # accept() waits for a connection
        self._taken = trio.lowlevel.ParkingLot()  # the accept loop waits for room
        self._cancel: trio.CancelScope | None = None  # the background task's, once started
        self._done = trio.Event()
        self._failure: Exception | None = None
        self._accepting = False
        self._closed = False
        table.counters.accepts_currently_open += 1

    def __repr__(self) -> str:
        return f"<trionet.ConnectionListener {self.address!r}>"

    @property
    def address(self) -> Any:
        return self._listener.address

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def options(self) -> AcceptOptions:
        return self._listener.options

    @property
    def socket(self) -> socket.socket:
        return self._listener.socket

    # ---------------------------------------------------------- the contract
    async def accept(self) -> Connection:
        """The next connection whose pre-handler steps completed.

        Raises:
          trio.ClosedResourceError: the listener is closed, or was closed
            while waiting.
          trio.BusyResourceError: another task is in ``accept()``.
          AcceptError: the listening socket failed (once no finished
            connection is left to hand out).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._accepting:
            raise trio.BusyResourceError("another task is already accepting on this listener")
        self._accepting = True
        try:
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("the listener was closed")
                conn = self._take()
                if conn is not None:
                    # Taken: no cancellation may lose it between here and the caller.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return conn
                if self._failure is not None:
                    raise self._failure
                self._start()
                await self._arrived.park()
        finally:
            self._accepting = False

    async def aclose(self) -> None:
        """Stop accepting: close the listening socket, end the background
        task and close every connection not handed out yet. Idempotent;
        completes even if cancelled."""
        if not self._closed:
            self._closed = True
            self._table.counters.accepts_currently_open -= 1
            self._arrived.unpark_all()  # a waiting accept() raises ClosedResourceError
            if self._cancel is not None:
                self._cancel.cancel()
                with trio.CancelScope(shield=True):
                    await self._done.wait()  # its finally closed what it held
            self._drop_ready()
            trio.lowlevel.notify_closing(self._listener.socket)
            self._listener.close()
        await trio.lowlevel.checkpoint()

    # ------------------------------------------------------- the ready queue
    def _take(self) -> Connection | None:
        """The oldest finished connection still open (one may have timed out
        while it waited), or None."""
        ready = self._ready
        while ready:
            conn = ready.popleft()
            self._taken.unpark_all()
            if not conn.closed:
                return conn
        return None

    def _drop_ready(self) -> None:
        while self._ready:
            self._ready.popleft().close()

    # The Room the accept loop checks. A connection counts from its admission
    # until its steps start (for plain TCP: until it is queued, in the same
    # step), so the bound is exact however the scheduler orders the loop and the
    # new tasks; once its PROXY/TLS steps run it no longer counts, so clients
    # stuck in a handshake never stop the listener from accepting (their
    # number is bounded as in serve(): by max_connections and the steps' timeouts).
    def full(self) -> bool:
        return len(self._ready) + self._starting >= READY_LIMIT

    async def wait_for_room(self) -> None:
        await self._taken.park()

    def admitted(self) -> None:
        self._starting += 1

    # ------------------------------------------------------ the background
    def _start(self) -> None:
        if self._cancel is None:
            self._cancel = trio.CancelScope()
            trio.lowlevel.spawn_system_task(
                self._run, name=f"trionet.ConnectionListener:{self.port}"
            )

    async def _run(self) -> None:
        assert self._cancel is not None
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    acceptor = Acceptor(
                        self._table,
                        self._policy,
                        self._listener,
                        self._need,
                        nursery,
                        self._prepare,
                        room=self,
                    )
                    try:
                        await acceptor.run()
                    except Exception as exc:  # AcceptError: the listening socket failed
                        # Connections in their steps finish and are handed out first.
                        self._failure = exc
                        self._arrived.unpark_all()
        finally:
            self._done.set()
            self._arrived.unpark_all()
            if self._closed or self._failure is None:
                # Cancelled (aclose, or the end of trio.run): nobody will take them.
                self._drop_ready()

    async def _prepare(self, conn: Connection, scope: trio.CancelScope) -> None:
        """One admitted connection: its pre-handler steps, then the ready queue."""
        self._starting -= 1
        opts = self._listener.options
        queued = False
        try:
            with scope:  # the connection's: its timeouts cancel the steps
                if has_steps(opts) and not await prepare_inbound(conn, opts, self._table):
                    return  # counted, logged and closed by prepare_inbound
            if conn.closed:  # timed out during the steps
                return
            self._ready.append(conn)
            queued = True
            self._arrived.unpark_all()
        except Exception as exc:  # a bug: never a crash of the background task
            logger.error("preparing connection #%d failed", conn.id, exc_info=exc)
        finally:
            if not queued:
                conn.close()


async def open_connection_listeners(
    table: ConnectionTable,
    policy: AcceptPolicy,
    listen: tuple[int | AcceptOptions, ...],
    reserve_outbound_slot: bool,
) -> list[ConnectionListener]:
    """Bind every listen spec and wrap each socket in a
    :class:`ConnectionListener` (the body of :meth:`NetProcessor.open_listeners`,
    which documents the contract)."""
    if not listen:
        raise ValueError("open_listeners() needs at least one port or AcceptOptions to listen on")
    check_bool("NetProcessor.open_listeners", "reserve_outbound_slot", reserve_outbound_slot)
    need = 2 if reserve_outbound_slot else 1
    check_slots(table, need, "a listener with reserve_outbound_slot=True")
    return [ConnectionListener(table, policy, sock, need) for sock in await bind_all(listen)]
