"""Name resolution for outbound connections (Netty ``AddressResolver``).

Three pieces:

* :class:`Resolver` -- the protocol ``NetProcessor.connect`` calls for host
  names (never for IP literals: see :func:`resolve_literal`).
* :class:`GetaddrinfoResolver` -- the default, on ``trio.socket.getaddrinfo``
  (the system resolver, run in a worker thread that trio abandons on cancel).
* :class:`CachingResolver` -- wraps another resolver and remembers its answers
  for a TTL, with a bound on the number of entries.

A resolver returns ``(family, sockaddr)`` pairs in the order the connection
attempts should consider them; the happy-eyeballs step then interleaves the
families (RFC 8305 section 4) without otherwise reordering them.
"""

from __future__ import annotations

import math
import socket
from collections import OrderedDict
from typing import final

import trio

from .._base._addr import AddrInfo, as_socket_address, host_port, host_problem
from .._base._checks import is_int
from .._base._errors import ResolveError, named_error
from .._base._options import Resolver

__all__ = ["CachingResolver", "GetaddrinfoResolver", "check_addresses", "check_host"]

_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def check_host(host: str, port: int) -> None:
    """Refuse a name :func:`host_problem` finds fault with, before any lookup.

    Raises:
      ResolveError: ``errno`` ``EAI_NONAME``; the message names the host by its
        ``repr`` (a control character must not reach a log line raw).
    """
    why = host_problem(host)
    if why is not None:
        raise named_error(
            ResolveError, socket.EAI_NONAME, f"invalid host name, {why}: {host!r}:{port}"
        )


def check_addresses(resolver: object, host: str, result: object) -> list[AddrInfo]:
    """Validate what a resolver returned (``TypeError`` naming the bad value)."""
    if not isinstance(result, list | tuple):
        raise TypeError(f"resolver {resolver!r} returned {result!r} for {host!r}: expected a list")
    out: list[AddrInfo] = []
    for item in result:
        address = None
        if isinstance(item, tuple) and len(item) == 2 and item[0] in _FAMILIES:
            address = as_socket_address(item[0], item[1])
        if address is None:
            raise TypeError(
                f"resolver {resolver!r} returned {item!r} for {host!r}: "
                "expected (AF_INET, (host, port)) or (AF_INET6, (host, port, flowinfo, scope_id))"
            )
        out.append((int(item[0]), address))
    return out


@final
class GetaddrinfoResolver:
    """The default resolver: the system's ``getaddrinfo`` via
    ``trio.socket.getaddrinfo`` (a worker thread; cancelling abandons it).

    Returns the addresses in ``getaddrinfo``'s order (RFC 6724 destination
    address selection), duplicates removed.

    Raises:
      ResolveError: the lookup failed; chained to the ``socket.gaierror``,
        whose ``errno`` (an ``EAI_*`` code) it keeps. Also, before any lookup,
        a name that is no valid host name (control characters, over-long
        names or labels, IDNA failures).
    """

    def __repr__(self) -> str:
        return "GetaddrinfoResolver()"

    async def resolve(self, host: str, port: int, family: int) -> list[AddrInfo]:
        check_host(host, port)
        try:
            infos = await trio.socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            target = host_port(host, port)
            raise named_error(
                ResolveError, exc.errno, f"cannot resolve ({exc.strerror}): {target}"
            ) from exc
        seen: dict[AddrInfo, None] = {}
        for fam, _, _, _, sockaddr in infos:
            address = as_socket_address(fam, sockaddr)
            if address is not None:
                seen.setdefault((int(fam), address), None)
        return list(seen)


@final
class CachingResolver:
    """Remembers another resolver's answers for ``ttl`` seconds.

    Args:
      resolver: the resolver asked on a miss (default :class:`GetaddrinfoResolver`).
      ttl: seconds an answer stays valid, > 0 (trio's clock, so tests can use
        ``MockClock``). ``getaddrinfo`` does not report DNS TTLs, so this is a
        fixed upper bound on staleness rather than the record's own TTL.
      max_entries: entries kept, >= 1; the least recently used one is dropped
        when a new one would exceed it.

    A name that is no valid host name raises :class:`ResolveError` before the
    cache or the inner resolver sees it.
    Failures are not cached: the next connect asks again (a negative cache
    would make a transient DNS outage outlive its cause).
    Concurrent misses for the same key each ask the inner resolver; a
    connect storm to one cold name costs one lookup per connect until the
    first answer lands.
    """

    def __init__(
        self, resolver: Resolver | None = None, *, ttl: float = 60.0, max_entries: int = 1024
    ) -> None:
        if resolver is not None and not callable(getattr(resolver, "resolve", None)):
            raise TypeError(f"resolver={resolver!r}: must have an async resolve() method")
        if not (is_int(ttl) or isinstance(ttl, float)) or not ttl > 0:
            raise ValueError(f"CachingResolver.ttl={ttl!r}: must be a number of seconds > 0")
        if math.isinf(ttl):
            raise ValueError(f"CachingResolver.ttl={ttl!r}: must be finite")
        if not is_int(max_entries) or max_entries < 1:
            raise ValueError(f"CachingResolver.max_entries={max_entries!r}: must be an int >= 1")
        self.resolver: Resolver = resolver if resolver is not None else GetaddrinfoResolver()
        self.ttl: float = float(ttl)
        self.max_entries = max_entries
        self.hits: int = 0
        self.misses: int = 0
        self._entries: OrderedDict[tuple[str, int, int], tuple[float, list[AddrInfo]]] = (
            OrderedDict()
        )

    def __repr__(self) -> str:
        return f"CachingResolver({self.resolver!r}, ttl={self.ttl}, max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached answer."""
        self._entries.clear()

    async def resolve(self, host: str, port: int, family: int) -> list[AddrInfo]:
        check_host(host, port)
        key = (host.lower(), port, family)
        now = trio.current_time()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            self._entries.move_to_end(key)
            self.hits += 1
            await trio.lowlevel.checkpoint()
            return list(entry[1])
        self.misses += 1
        addresses = check_addresses(
            self.resolver, host, await self.resolver.resolve(host, port, family)
        )
        self._entries[key] = (trio.current_time() + self.ttl, addresses)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return list(addresses)
