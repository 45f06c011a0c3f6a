"""A TCP proxy: bytes pumped both ways between two streams, with backpressure
and half-close (the job ATS's Net module exists for).

:func:`splice` is the pump, usable between any two half-closeable streams;
:class:`TcpProxy` is a ``serve()`` handler that connects upstream for each
inbound connection and splices the two. ``examples/tcp_proxy.py`` and
``trionet proxy`` are both built on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Literal, final

import trio

__all__ = ["SpliceResult", "splice"]

logger = logging.getLogger("trionet.proxy")

# One read's worth per direction is all a splice ever holds: the pump does not
# read again until send_all has handed the previous chunk to the kernel, so a
# slow receiver throttles a fast sender through TCP flow control (ATS's VIO
# watermarks, Netty's autoRead=false), with no unbounded buffer in between.
DEFAULT_CHUNK: Final = 64 * 1024

Ending = Literal["eof", "reset"]


@final
@dataclass(frozen=True, slots=True)
class SpliceResult:
    """How a :func:`splice` ended.

    Attributes:
      a_to_b / b_to_a: bytes copied in each direction.
      ending: ``"eof"`` when both directions ended with an orderly EOF,
        ``"reset"`` when either side broke (reset, or closed under us).
    """

    a_to_b: int
    b_to_a: int
    ending: Ending


@final
class _Pump:
    """One direction of a splice: read from ``src``, write to ``dst``, then
    forward the EOF with ``send_eof`` (half-close)."""

    __slots__ = ("broken", "chunk", "copied", "dst", "src")

    def __init__(
        self, src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream, chunk: int
    ) -> None:
        self.src, self.dst, self.chunk = src, dst, chunk
        self.copied = 0
        self.broken = False

    async def run(self, cancel_both: trio.CancelScope) -> None:
        try:
            while data := await self.src.receive_some(self.chunk):
                await self.dst.send_all(data)
                self.copied += len(data)
            await self.dst.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A reset (or a close under us, e.g. a timeout) on either side ends
            # the whole splice: the other direction has nowhere to go.
            logger.debug("splice direction broke: %r", exc)
            self.broken = True
            cancel_both.cancel()


async def splice(
    a: trio.abc.HalfCloseableStream,
    b: trio.abc.HalfCloseableStream,
    chunk: int = DEFAULT_CHUNK,
) -> SpliceResult:
    """Copy bytes ``a → b`` and ``b → a`` until both directions have ended.

    When one side sends EOF, it is forwarded to the other side with
    ``send_eof`` and the opposite direction keeps flowing (TCP half-close), so
    request/response protocols that half-close work through the proxy.

    Args:
      a, b: the two streams (e.g. a client connection and an upstream one).
      chunk: the most bytes read at once, and so held in memory, per direction.

    Returns:
      A :class:`SpliceResult` with the bytes copied each way.

    Resource handling:
      Neither stream is closed: the caller owns both (``async with``). At most
      ``chunk`` bytes per direction are in flight in the process.

    Error handling:
      ``BrokenResourceError`` / ``ClosedResourceError`` on either side end
      both directions and are reported as ``ending="reset"``, not raised.
      Cancellation (e.g. a connection's timeout) propagates as usual.

    Raises:
      ValueError: ``chunk`` is not a positive int.
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: must be an int >= 1")
    forward, backward = _Pump(a, b, chunk), _Pump(b, a, chunk)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward.run, nursery.cancel_scope)
        nursery.start_soon(backward.run, nursery.cancel_scope)
    ending: Ending = "reset" if forward.broken or backward.broken else "eof"
    return SpliceResult(forward.copied, backward.copied, ending)
