"""Zero-copy splicing: the proxy's bytes moved socket -> pipe -> socket inside
the kernel with Linux ``splice(2)`` (``os.splice``), never through Python.

:class:`KernelPump` is one direction of a :func:`~trionet.splice` between two
plain-TCP :class:`~trionet.Connection` objects: it has the same interface and
the same endings as the user-space pump in ``_tcp_proxy`` (which it replaces
where :func:`kernel_pumps` gives one), so everything around it --
half-close, aborts, timeouts, a shutdown's cut -- is the same code.

Each direction borrows one pipe from the run's :class:`PipePool` and returns
it at the end, unless the pipe still holds bytes (a session that ended with
bytes in flight): those bytes belong to a dead session, so that pipe is
closed, never handed to the next one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
from typing import Final, Literal, Protocol, final

import trio

from .._core._connection import Connection
from .._core._wire import count_received, count_sent, raw_socket

__all__ = [
    "PIPE_SIZE",
    "POOL_LIMIT",
    "SPLICE_AVAILABLE",
    "KernelPump",
    "PipePool",
    "kernel_pumps",
    "pipe_size",
    "pipe_pool",
]

logger = logging.getLogger("trionet.proxy")

# os.splice exists on Linux only (Python 3.10+); elsewhere the proxy copies
# through user space as before.
SPLICE_AVAILABLE: Final = sys.platform == "linux" and hasattr(os, "splice")
# SPLICE_F_MOVE: move page references instead of copying where the kernel can
# (a hint; it never hurts). SPLICE_F_NONBLOCK: the pipe end never blocks; the
# socket end does not either, trio's sockets being non-blocking. EAGAIN then
# means "wait", and the wait is trio's (wait_readable / wait_writable).
_FLAGS: Final = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_AVAILABLE else 0
_F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ: Final = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# A pipe per direction of this size (in the kernel, never in the process):
# measured on a 1 GiB stream through the proxy, 1 MiB pipes moved it ~1.5x
# faster than the 64 KiB default, with under half the CPU (fewer splice calls
# and wake-ups per byte). Capped by fs.pipe-max-size (1 MiB by default), above
# which F_SETPIPE_SZ is refused to unprivileged processes.
PIPE_SIZE: Final = 1024 * 1024
# Idle pipes kept per trio run (two fds each). Past it a returned pipe is
# closed: a burst of sessions does not leave hundreds of fds behind. Kept
# small because Linux charges a pipe's capacity, used or not, to the user's
# pipe quota (fs.pipe-user-pages-soft, 64 MiB: 64 pipes of 1 MiB), past which
# new pipes get two pages.
POOL_LIMIT: Final = 16
# A direction that keeps moving bytes without ever waiting yields to the
# scheduler after this many rounds (each round is at most two splice calls,
# up to a pipe's worth of bytes): a bulk transfer stays fair to the other
# tasks, and a request/response session, which waits between messages, pays
# no extra schedule point at all (wait_readable is one).
_ROUNDS_PER_YIELD: Final = 4
# A read this short emptied the socket (a splice takes all there is, up to a
# pipe's worth): once it has gone on, the pump waits for the socket instead of
# asking it again. Request/response traffic saves one of three splice calls
# per message (measured: 30 µs each on the loaded 2-core VM); bulk reads are
# longer and keep asking, which there is cheaper than a wait.
_SHORT_READ: Final = 16 * 1024

Ending = Literal["eof", "reset"]


class _Spliced(Protocol):
    """What this module needs from a connection's socket end
    (:class:`~trionet._core._wire.Wire`) besides its public members and the
    wire's accounting functions (``count_received``/``count_sent``, which
    count a splice call exactly as the wire primitive counts its own): its
    errno translation."""

    def _translate(self, exc: OSError) -> Exception: ...


def kernel_pumps(a: object, b: object) -> tuple[KernelPump, KernelPump] | None:
    """The two directions of a splice in the kernel between ``a`` and ``b``
    (pipes of :func:`pipe_size` bytes), or None where it cannot run.

    Only between two open plain-TCP (or Unix-socket) :class:`Connection`
    objects on a platform with ``os.splice``, and when two pipes can be had: TLS must go through its
    ``SSLStream`` (the kernel would forward ciphertext, or plaintext where
    ciphertext is due), and other streams have no socket (or no accounting)
    to splice. A :class:`Connection` never holds bytes of its own that were
    read from the socket and not yet delivered (the PROXY header reader
    peeks; it never reads past the header), so nothing needs sending first.
    """
    if not (SPLICE_AVAILABLE and isinstance(a, Connection) and isinstance(b, Connection)):
        return None
    if a.tls is not None or b.tls is not None or a.closed or b.closed:
        return None
    pool, size = pipe_pool(), pipe_size()
    taken: list[_Pipe] = []
    try:
        while len(taken) < 2:
            taken.append(pool.take(size))
    except OSError as exc:
        # No pipe (out of descriptors): this session copies through the
        # process instead; it is not refused for want of a pipe.
        logger.debug("splice: no pipe (%r), copying through the process", exc)
        for pipe in taken:
            pool.give_back(pipe, size)
        return None
    forward, backward = taken
    return KernelPump(a, b, forward, pool, size), KernelPump(b, a, backward, pool, size)


def pipe_size() -> int:
    """:data:`PIPE_SIZE`, or ``fs.pipe-max-size`` if that is lower."""
    global _pipe_size
    if _pipe_size is None:
        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                _pipe_size = min(PIPE_SIZE, int(f.read()))
        except (OSError, ValueError):
            _pipe_size = PIPE_SIZE  # F_SETPIPE_SZ falls back if refused
    return _pipe_size


_pipe_size: int | None = None


@final
class _Pipe:
    """A pipe's two ends, its real capacity and how many bytes it holds."""

    __slots__ = ("held", "r", "size", "w")

    def __init__(self, r: int, w: int, size: int) -> None:
        self.r, self.w, self.size = r, w, size
        self.held = 0

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@final
class PipePool:
    """The pipes of one trio run that no session is using, by requested size.

    Bounded (:data:`POOL_LIMIT` idle pipes); closed when the run ends (a
    system task's ``finally``), so no pipe outlives its run or leaks into the
    next one (each test of a suite is a run).
    """

    __slots__ = ("_idle", "closed", "created")

    def __init__(self) -> None:
        self._idle: dict[int, list[_Pipe]] = {}
        self.closed: bool = False
        self.created: int = 0  # pipes opened over the run (for tests and debugging)

    @property
    def idle(self) -> int:
        """Pipes waiting in the pool."""
        return sum(len(pipes) for pipes in self._idle.values())

    def take(self, size: int) -> _Pipe:
        """An empty pipe of (at least, where the kernel allows) ``size`` bytes.

        Raises:
          OSError: the pipe could not be made (EMFILE...); the caller falls
            back to copying through user space.
        """
        pipes = self._idle.get(size)
        if pipes:
            return pipes.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.created += 1
        try:
            # F_SETPIPE_SZ rounds up to a power of two of pages; above
            # /proc/sys/fs/pipe-max-size (or the user's pipe quota) it is
            # refused and the pipe keeps its default size: still correct,
            # only more splice calls per byte.
            real = fcntl.fcntl(w, _F_SETPIPE_SZ, size)
        except OSError:
            real = fcntl.fcntl(w, _F_GETPIPE_SZ)
        return _Pipe(r, w, real)

    def give_back(self, pipe: _Pipe, size: int) -> None:
        """Keep ``pipe`` (taken with ``size``) for the next session if it is
        empty and there is room; else close it. Never raises."""
        if pipe.held or self.closed or self.idle >= POOL_LIMIT:
            _close_quietly(pipe)
            return
        self._idle.setdefault(size, []).append(pipe)

    def close(self) -> None:
        """Close every idle pipe; pipes given back later are closed too."""
        self.closed = True
        for pipes in self._idle.values():
            for pipe in pipes:
                _close_quietly(pipe)
        self._idle.clear()


def _close_quietly(pipe: _Pipe) -> None:
    try:
        pipe.close()
    except OSError as exc:  # pragma: no cover - only a bug could make close fail
        logger.warning("closing a splice pipe failed: %r", exc)


_POOL: Final[trio.lowlevel.RunVar[PipePool]] = trio.lowlevel.RunVar("trionet_pipe_pool")


def pipe_pool() -> PipePool:
    """The current trio run's :class:`PipePool` (made on first use, with a
    system task that closes it when the run ends)."""
    try:
        return _POOL.get()
    except LookupError:
        pass
    pool = PipePool()
    _POOL.set(pool)
    trio.lowlevel.spawn_system_task(_close_at_run_end, pool, name="trionet pipe pool")
    return pool


async def _close_at_run_end(pool: PipePool) -> None:
    try:
        await trio.sleep_forever()
    finally:
        pool.close()


@final
class KernelPump:
    """One direction of a splice in the kernel: ``src`` socket -> pipe ->
    ``dst`` socket, then the EOF forwarded with ``send_eof``.

    The same contract as the user-space pump it stands in for: ``copied`` is
    the bytes delivered to ``dst`` (handed to its socket); ``ending`` is None
    while it runs, then ``"eof"`` or ``"reset"`` (after which it has cancelled
    ``cancel_both``). Both connections' statistics, payload counts and
    activity are counted per splice call exactly as their own
    ``receive_some`` / ``send_all`` count them, so the inactivity timeout, the
    per-session link and the kernel-progress check see what they see today.

    Backpressure: bytes are read from ``src`` only while the pipe has room,
    and the pipe drains only as fast as ``dst``'s socket takes them; a reader
    that stops fills its socket buffers and then the pipe, and the pump waits
    on ``dst`` without reading more. What the process holds per direction is
    one pipe (``size`` bytes, in the kernel; none in Python).
    """

    __slots__ = ("copied", "dst", "ending", "pipe", "pool", "size", "src")

    def __init__(
        self, src: Connection, dst: Connection, pipe: _Pipe, pool: PipePool, size: int
    ) -> None:
        """``pipe`` was taken from ``pool`` with ``size``; :meth:`run` gives
        it back (or closes it) when it ends, however it ends."""
        self.src, self.dst, self.pipe, self.pool, self.size = src, dst, pipe, pool, size
        self.copied = 0
        self.ending: Ending | None = None

    async def run(self, cancel_both: trio.CancelScope) -> None:
        pipe = self.pipe
        try:
            await self._move(pipe)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.debug("splice direction broke: %r", exc)
            self.ending = "reset"
            cancel_both.cancel()
            return
        finally:
            self.pool.give_back(pipe, self.size)
        self.ending = "eof"
        try:
            await self.dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The destination is gone; the other direction, reading from it,
            # ends with "reset" itself (as in the user-space pump).
            logger.debug("splice: send_eof not possible (%r)", exc)

    async def _move(self, pipe: _Pipe) -> None:
        """Move bytes until ``src``'s EOF has been read and the pipe is empty.

        Raises:
          trio.BrokenResourceError: either socket is broken (reset).
          trio.ClosedResourceError: either connection was closed under us.
        """
        src, dst = self.src, self.dst
        src_wire: _Spliced = src
        dst_wire: _Spliced = dst
        splice = os.splice
        eof = False
        rounds = 0
        while True:
            moved = short = False
            # The fds are read again after every wait: a connection closed
            # meanwhile has fileno() -1 (EBADF below, "closed"), never a
            # number the kernel may have given to another file since.
            if not eof:
                try:
                    n = splice(raw_socket(src).fileno(), pipe.w, pipe.size, None, None, _FLAGS)
                except BlockingIOError:
                    pass  # nothing to read, or the pipe is full: decided below
                except OSError as exc:
                    raise src_wire._translate(exc) from exc
                else:
                    count_received(src, n)
                    if n:
                        pipe.held += n
                        moved = True
                        short = n < _SHORT_READ
                    else:
                        eof = True
            if pipe.held:
                try:
                    n = splice(pipe.r, raw_socket(dst).fileno(), pipe.held, None, None, _FLAGS)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    raise dst_wire._translate(exc) from exc
                if n:
                    count_sent(dst, n)
                    pipe.held -= n
                    self.copied += n
                    moved = True
            elif eof:
                return
            if short and not pipe.held:
                # All of a short read has gone on: wait for the next bytes.
                # The wait is level-triggered (trio's epoll), so bytes that
                # came in meanwhile, or the EOF, end it at once.
                rounds = 0
                await trio.lowlevel.wait_readable(raw_socket(src).fileno())
                continue
            if moved:
                rounds += 1
                if rounds >= _ROUNDS_PER_YIELD:
                    rounds = 0
                    await trio.lowlevel.checkpoint()
                continue
            rounds = 0
            # Nothing moved. Bytes in the pipe: dst's send buffer is full (the
            # reader is slow or stopped): wait for room, read nothing more.
            # An empty pipe: src had nothing (with an empty pipe EAGAIN cannot
            # mean "pipe full").
            if pipe.held:
                await trio.lowlevel.wait_writable(raw_socket(dst).fileno())
            else:
                await trio.lowlevel.wait_readable(raw_socket(src).fileno())
