"""``UnixNetProcessor``: ATS's ``netProcessor`` calls (``main_accept``,
``accept``, ``connect_re``, ``connect_s``, ``stop_accept``) over a native
:class:`~trionet.NetProcessor`.

The seed's start-up chain maps like this::

    UnixNetProcessor::start()          async with open_net_processor() as unp:
      (NetHandler, PollCont, epoll)      trio's run loop
      InactivityCop every 1 s            the NetProcessor's TimeoutCop (exact deadlines)
    main_accept(cont, fd, opt)         unp.main_accept(cont, fd, opts)
      accept_internal -> NetAccept       NetProcessor.serve(AcceptOptions(fd=fd)), one task
      do_blocking_accept loop            serve's accept task (throttle, error classes)
      schedule_imm_signal(vc)            serve starts one task per connection, which
      vc->acceptEvent                      builds the NetVConnection and delivers
      cont->handleEvent(NET_EVENT_ACCEPT)  NET_EVENT_ACCEPT under the acceptor's mutex
    net_read_io / write_to_net         the VC's reader / writer tasks

The processor owns a nursery: accept tasks, outbound VCs and scheduled events
run there, and leaving the ``async with`` block cancels them all (every
connection closed, every listening socket closed).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, final

import trio

from .._base._checks import C_INT_MAX, check_int, check_seconds, is_int
from .._base._errors import AcceptError, ConnectError, ConnectTimeoutError, ThrottledError, leaves
from .._base._options import AcceptOptions, ConnectOptions
from .._core._connection import Connection
from .._inbound._server import Server
from .._processor import NetProcessor, table_of
from ._codes import (
    ENET_CONNECT_FAILED,
    ENET_CONNECT_TIMEOUT,
    ENET_THROTTLING,
    EVENT_ERROR,
    NET_EVENT_ACCEPT,
    NET_EVENT_ACCEPT_FAILED,
    NET_EVENT_ACCEPT_SUCCEED,
    NET_EVENT_OPEN,
    NET_EVENT_OPEN_FAILED,
)
from ._continuation import Action, Continuation, call_locked
from ._event import EventProcessor
from ._vconnection import DEFAULT_INACTIVITY_TIMEOUT, run_vc

__all__ = ["ConnectAction", "NetAcceptAction", "UnixNetProcessor", "open_net_processor"]

logger = logging.getLogger("trionet.iocore")

_UNKNOWN_ERRNO: Final = errno.EIO


@final
class NetAcceptAction(Action):
    """The :class:`Action` ``accept`` / ``main_accept`` return (ATS
    ``NetAcceptAction``). Cancelling it stops accepting and closes the port;
    connections already accepted carry on.

    Attributes:
      server: the native :class:`~trionet.Server` once listening, else ``None``.
    """

    __slots__ = ("_listening", "_scope", "server")

    def __init__(self, cont: Continuation) -> None:
        super().__init__(cont)
        self.server: Server | None = None
        self._scope = trio.CancelScope()
        self._listening = trio.Event()

    @property
    def ports(self) -> list[int]:
        """The bound ports (empty until listening)."""
        return self.server.ports if self.server is not None else []

    async def wait_listening(self) -> list[int]:
        """Wait until the port is open (or opening failed) and return the
        bound ports (empty on failure or cancellation)."""
        await self._listening.wait()
        return self.ports

    def _on_cancel(self) -> None:
        if self.server is not None:
            self.server.shutdown(math.inf)  # stop accepting; running VCs go on
        else:
            self._scope.cancel()  # still binding: abandon it


@final
class ConnectAction(Action):
    """The :class:`Action` ``connect_re`` / ``connect_s`` return. Cancelling it
    before ``NET_EVENT_OPEN`` / ``NET_EVENT_OPEN_FAILED`` abandons the connect
    (resolution, attempts and handshake alike: every socket is closed, the
    slot released) and nothing is delivered; after it, it has no effect on the VC.
    """

    __slots__ = ("_scope",)

    def __init__(self, cont: Continuation) -> None:
        super().__init__(cont)
        self._scope = trio.CancelScope()

    def _on_cancel(self) -> None:
        self._scope.cancel()


def _errno_re(exc: OSError) -> int:
    """connect_re's failure code: the errno, or ATS's net errnos."""
    if isinstance(exc, ConnectTimeoutError):
        return -ENET_CONNECT_TIMEOUT
    if isinstance(exc, ThrottledError):
        return -ENET_THROTTLING
    return -(exc.errno or ENET_CONNECT_FAILED)


def _errno_s(exc: OSError) -> int:
    """connect_s's failure code (ATS 8.x): timeout, or 'failed'."""
    if isinstance(exc, ConnectTimeoutError):
        return -ENET_CONNECT_TIMEOUT
    return -ENET_CONNECT_FAILED


def _split_addr(addr: object) -> tuple[str, int]:
    if (
        isinstance(addr, tuple)
        and len(addr) in (2, 4)
        and isinstance(addr[0], str)
        and is_int(addr[1])
    ):
        return addr[0], addr[1]
    raise TypeError(f"addr={addr!r}: must be a (host, port) tuple")


@final
class UnixNetProcessor:
    """ATS's ``netProcessor``; obtained from :func:`open_net_processor`.

    Attributes:
      net: the native :class:`~trionet.NetProcessor` doing the work.
      event_processor: the scheduling calls (``schedule_imm`` ...).
      default_inactivity_timeout: applied to VCs with no inactivity timeout
        of their own (ATS ``proxy.config.net.default_inactivity_timeout``);
        ``0`` or ``inf``: none.
    """

    def __init__(
        self,
        net: NetProcessor,
        nursery: trio.Nursery,
        default_inactivity_timeout: float = DEFAULT_INACTIVITY_TIMEOUT,
    ) -> None:
        self.net = net
        self.event_processor: EventProcessor = EventProcessor(nursery)
        self.default_inactivity_timeout = default_inactivity_timeout
        self._nursery = nursery
        self._counters = table_of(net).counters  # the native processor's statistics
        self._accepts: set[NetAcceptAction] = set()

    def __repr__(self) -> str:
        return f"<UnixNetProcessor accepts={len(self._accepts)}>"

    def _spawn(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        self._nursery.start_soon(fn, *args)

    # ------------------------------------------------------------- accept
    def main_accept(
        self, cont: Continuation, fd: int, opts: AcceptOptions | None = None
    ) -> NetAcceptAction:
        """Accept on a listening socket someone else opened (ATS ``main_accept``:
        traffic_manager's fd; here also systemd's). The fd is taken over.

        Raises:
          TypeError: ``cont`` is not a :class:`Continuation`, or ``opts`` not
            an :class:`~trionet.AcceptOptions`.
          ValueError: ``fd`` is not an int in 0..2**31-1.
        """
        check_int("UnixNetProcessor.main_accept", "fd", fd, 0, C_INT_MAX)
        base = opts if opts is not None else AcceptOptions()
        return self.accept(cont, dataclasses.replace(base, fd=fd))

    def accept(
        self,
        cont: Continuation,
        opts: AcceptOptions | int | None = None,
        *,
        callback_on_open: bool = False,
    ) -> NetAcceptAction:
        """Listen as ``opts`` says and deliver each connection to ``cont`` as
        ``handle_event(NET_EVENT_ACCEPT, vc)`` under ``cont.mutex``.

        Args:
          cont: the acceptor continuation.
          opts: :class:`~trionet.AcceptOptions` (or a port number).
          callback_on_open: also deliver ``NET_EVENT_ACCEPT_SUCCEED`` once the
            port is open, or ``NET_EVENT_ACCEPT_FAILED`` with ``-errno`` if it
            cannot be (ATS ``f_callback_on_open``).

        Returns:
          A :class:`NetAcceptAction`; cancelling it stops accepting.

        Error handling:
          A port that cannot be opened, or a fatal accept error, reaches
          ``cont`` as ``EVENT_ERROR`` with ``-errno`` (and is logged).
        """
        action = NetAcceptAction(cont)
        spec = AcceptOptions.coerce(opts if opts is not None else AcceptOptions())
        self._accepts.add(action)
        self._spawn(self._accept_task, action, spec, bool(callback_on_open))
        return action

    def stop_accept(self) -> None:
        """Stop every accept this processor runs (ATS ``stop_accept``)."""
        for action in list(self._accepts):
            action.cancel()

    async def _accept_task(
        self, action: NetAcceptAction, opts: AcceptOptions, callback_on_open: bool
    ) -> None:
        failures: list[OSError] = []
        handler = functools.partial(self._accepted, action)
        try:
            with action._scope:
                try:
                    async with trio.open_nursery() as nursery:
                        action.server = await nursery.start(self.net.serve, handler, opts)
                        action._listening.set()
                        if callback_on_open:
                            await self._notify(action, NET_EVENT_ACCEPT_SUCCEED, action)
                except* OSError as group:
                    failures.extend(leaves(group))
        finally:
            action._listening.set()
            self._accepts.discard(action)
        if failures:
            opening = action.server is None
            await self._accept_failed(action, failures[0], opening and callback_on_open)

    async def _accept_failed(self, action: NetAcceptAction, exc: OSError, on_open: bool) -> None:
        code = exc.errno or _UNKNOWN_ERRNO
        if not isinstance(exc, AcceptError):  # serve() already logged AcceptErrors
            logger.error("accept for %r could not open its port: %s", action.continuation, exc)
        await self._notify(action, NET_EVENT_ACCEPT_FAILED if on_open else EVENT_ERROR, -code)

    async def _notify(self, action: Action, event: int, data: object) -> None:
        ret = await call_locked(action.continuation, event, data, lambda: not action.cancelled)
        if ret is None:
            logger.error("%r broke the contract; the processor goes on", action.continuation)

    async def _accepted(self, action: NetAcceptAction, conn: Connection) -> None:
        """serve()'s handler: ATS ``acceptEvent`` -- wrap, announce, run."""
        if action.cancelled:
            return
        await run_vc(
            conn, self, action.continuation, NET_EVENT_ACCEPT, lambda: not action.cancelled
        )

    # ------------------------------------------------------------ connect
    def connect_re(
        self,
        cont: Continuation,
        addr: tuple[str, int],
        options: ConnectOptions | None = None,
    ) -> ConnectAction:
        """Connect to ``addr`` (ATS ``connect_re``) through
        :meth:`~trionet.NetProcessor.connect`; later deliver ``NET_EVENT_OPEN`` with the
        :class:`NetVConnection` (after the TCP -- and TLS -- handshake) or
        ``NET_EVENT_OPEN_FAILED`` with ``-errno``: ``-ECONNREFUSED`` etc.,
        ``-ENET_CONNECT_TIMEOUT``, ``-ENET_THROTTLING``, or
        ``-ENET_CONNECT_FAILED`` when there is no errno (resolution, TLS).

        Returns:
          A :class:`ConnectAction`; cancel it to abandon the connect.

        Raises:
          TypeError: ``addr`` is not ``(host, port)`` or ``cont`` not a Continuation.
        """
        host, port = _split_addr(addr)
        action = ConnectAction(cont)
        self._spawn(self._connect_task, action, host, port, options, _errno_re)
        return action

    def connect_s(
        self,
        cont: Continuation,
        addr: tuple[str, int],
        timeout: float = 30.0,
        options: ConnectOptions | None = None,
    ) -> ConnectAction:
        """ATS 8.x ``connect_s``: :meth:`connect_re` with a ``timeout``-second
        connect timeout, failing with ``-ENET_CONNECT_TIMEOUT`` when it passes
        and ``-ENET_CONNECT_FAILED`` for any other failure.

        Raises:
          TypeError: ``addr`` is not ``(host, port)`` or ``cont`` not a Continuation.
          ValueError: ``timeout`` is zero, negative or infinite.
        """
        host, port = _split_addr(addr)
        opts = dataclasses.replace(options or ConnectOptions(), connect_timeout=timeout)
        action = ConnectAction(cont)
        self._spawn(self._connect_task, action, host, port, opts, _errno_s)
        return action

    async def _connect_task(
        self,
        action: ConnectAction,
        host: str,
        port: int,
        options: ConnectOptions | None,
        code_of: Callable[[OSError], int],
    ) -> None:
        conn: Connection | None = None
        failure: int | None = None
        with action._scope:
            try:
                conn = await self.net.connect(host, port, options)
            except (ConnectError, OSError) as exc:
                failure = code_of(exc)
                logger.debug("connect_re to %s:%d failed: %s", host, port, exc)
            except (TypeError, ValueError) as exc:  # bad host/port/options
                logger.error("connect_re to %r:%r: %s", host, port, exc)
                failure = -ENET_CONNECT_FAILED
        if action.cancelled:
            if conn is not None:
                conn.close()
            return
        if conn is None:
            if failure is not None:
                await self._notify(action, NET_EVENT_OPEN_FAILED, failure)
            return
        await self._opened(action, conn)

    async def _opened(self, action: ConnectAction, conn: Connection) -> None:
        await run_vc(conn, self, action.continuation, NET_EVENT_OPEN, lambda: not action.cancelled)


@asynccontextmanager
async def open_net_processor(
    net: NetProcessor | None = None,
    *,
    default_inactivity_timeout: float | None = DEFAULT_INACTIVITY_TIMEOUT,
) -> AsyncIterator[UnixNetProcessor]:
    """Start the shim (ATS ``UnixNetProcessor::start``)::

        async with trionet.iocore.open_net_processor() as unp:
            unp.main_accept(acceptor, fd, opts)
            ...

    Args:
      net: the native :class:`~trionet.NetProcessor` to drive (its limits,
        throttle and statistics apply); a fresh one by default.
      default_inactivity_timeout: seconds, for VCs with no inactivity timeout
        of their own (ATS's 86400 by default). ``0`` disables it, as in ATS
        (``None`` and ``math.inf`` too): a VC then gets an inactivity timeout
        only from its options or ``set_inactivity_timeout``.

    Resource handling:
      Leaving the block cancels every accept, VC and scheduled event: all
      listening sockets and connections are closed.

    Raises:
      TypeError: ``net`` is not a :class:`~trionet.NetProcessor`.
      ValueError: ``default_inactivity_timeout`` is not a number of seconds.
    """
    if net is None:
        net = NetProcessor()
    elif not isinstance(net, NetProcessor):
        raise TypeError(f"net={net!r}: must be a trionet.NetProcessor or None")
    check_seconds("open_net_processor", "default_inactivity_timeout", default_inactivity_timeout)
    default = float(default_inactivity_timeout or 0.0)  # None: none, as 0 is in ATS
    async with trio.open_nursery() as nursery:
        unp = UnixNetProcessor(net, nursery, default)
        try:
            yield unp
        finally:
            nursery.cancel_scope.cancel()
