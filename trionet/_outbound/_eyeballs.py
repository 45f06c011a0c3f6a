"""Happy eyeballs (RFC 8305): race connection attempts to every address of
a name, staggered, first success wins, every other socket closed.

I/O-free in its inputs: the addresses, a ``prepare`` step (socket options,
bind) and a ``socket_factory`` are given, so the race is tested with fake
sockets and no network (``ConnectOptions.socket_factory``).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from itertools import zip_longest
from typing import final

import trio

from .._base._addr import AddrInfo, host_port
from .._base._errors import ConnectError, UnsupportedOptionError, named_error
from .._base._options import SocketFactory

__all__ = ["happy_eyeballs", "interleave"]


def interleave(addresses: Sequence[AddrInfo]) -> list[AddrInfo]:
    """RFC 8305 section 4 ordering: duplicates dropped, then alternate address
    families starting with the family of the first address (the resolver's
    preference), keeping each family's own order."""
    unique = list(dict.fromkeys(addresses))
    if not unique:
        return []
    first = unique[0][0]
    preferred = [a for a in unique if a[0] == first]
    others = [a for a in unique if a[0] != first]
    return [a for pair in zip_longest(preferred, others) for a in pair if a is not None]


@final
class _Race:
    """Shared state of one happy-eyeballs race: every socket opened (so the
    way out can close each one), the failures, and the winner."""

    __slots__ = ("errors", "fatal", "sockets", "winner")

    def __init__(self) -> None:
        self.sockets: list[trio.socket.SocketType] = []
        self.errors: list[tuple[AddrInfo, OSError]] = []
        self.winner: tuple[trio.socket.SocketType, AddrInfo] | None = None
        self.fatal: BaseException | None = None


async def happy_eyeballs(
    addresses: Sequence[AddrInfo],
    *,
    target: str,
    delay: float | None,
    prepare: Callable[[trio.socket.SocketType], Awaitable[None]],
    socket_factory: SocketFactory,
) -> tuple[trio.socket.SocketType, AddrInfo]:
    """Race connection attempts to ``addresses`` (RFC 8305) and return the
    first connected socket with the address it connected to.

    Attempts start in :func:`interleave` order. Each next attempt starts when
    the previous one fails or ``delay`` seconds after it started, whichever
    comes first (``delay=None``: only when it fails, i.e. one at a time; ``0``:
    all at once). The first attempt to connect wins; every other attempt is
    cancelled and its socket closed.

    Resource handling:
      Every socket ``socket_factory`` returns is closed before this returns or
      raises, except the winner's, which the caller owns. On cancellation the
      winner (if there was one already) is closed too.

    Raises:
      ConnectError: every attempt failed; ``errno`` from the failures (shared
        errno, else the first attempt's), ``__cause__`` the ``OSError`` (one
        attempt) or an ``ExceptionGroup`` of them (several).
      UnsupportedOptionError: a socket option could not be applied.
    """
    race = _Race()
    ordered = interleave(addresses)
    stagger = float("inf") if delay is None else delay
    try:
        async with trio.open_nursery() as nursery:
            for i, address in enumerate(ordered):
                failed = trio.Event()
                nursery.start_soon(
                    _attempt, race, address, failed, nursery.cancel_scope, prepare, socket_factory
                )
                if i + 1 < len(ordered):
                    with trio.move_on_after(stagger):
                        await failed.wait()
        if race.fatal is not None:
            raise race.fatal
        if race.winner is None:
            raise _all_failed(race.errors, target)
        return race.winner
    except BaseException:
        race.winner = None
        raise
    finally:
        winner = race.winner[0] if race.winner is not None else None
        for sock in race.sockets:
            if sock is not winner:
                sock.close()


async def _attempt(
    race: _Race,
    address: AddrInfo,
    failed: trio.Event,
    scope: trio.CancelScope,
    prepare: Callable[[trio.socket.SocketType], Awaitable[None]],
    socket_factory: SocketFactory,
) -> None:
    """One connection attempt. Never raises except Cancelled: failures are
    recorded in ``race`` (the nursery would wrap them in an ExceptionGroup)."""
    family, sockaddr = address
    try:
        sock = socket_factory(family)
    except OSError as exc:  # EMFILE, EAFNOSUPPORT (no IPv6 here)...
        race.errors.append((address, exc))
        failed.set()
        return
    race.sockets.append(sock)
    try:
        await prepare(sock)
        await sock.connect(sockaddr)
    except UnsupportedOptionError as exc:
        race.fatal = exc
        scope.cancel()
        return
    except OSError as exc:
        # Close now rather than when the race ends: a failed attempt must not
        # hold a descriptor while the others run. (A cancelled connect is
        # closed by trio itself, and again -- idempotently -- by the race.)
        sock.close()
        race.errors.append((address, exc))
        failed.set()
        return
    if race.winner is None:
        race.winner = (sock, address)
        scope.cancel()  # first success wins: cancel the others
    else:
        sock.close()  # two finished in the same scheduler batch; the first won


def _all_failed(errors: list[tuple[AddrInfo, OSError]], target: str) -> ConnectError:
    if not errors:
        return named_error(ConnectError, None, f"no address to connect to: {target}")
    codes = {exc.errno for _, exc in errors}
    code = errors[0][1].errno if len(codes) > 1 else codes.pop()
    if len(errors) == 1:
        exc = errors[0][1]
        err = named_error(ConnectError, code, f"{_reason(exc)}: {target}")
        err.__cause__ = exc
        return err
    detail = "; ".join(f"{host_port(a[1][0], a[1][1])}: {_reason(e)}" for a, e in errors)
    err = named_error(ConnectError, code, f"all {len(errors)} attempts failed ({detail}): {target}")
    err.__cause__ = ExceptionGroup(f"connection attempts to {target}", [e for _, e in errors])
    return err


def _reason(exc: OSError) -> str:
    """``Connection refused`` -- the errno's text, without trio's own
    "Error connecting to (...)" prefix (the message names the target itself)."""
    if exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc)
