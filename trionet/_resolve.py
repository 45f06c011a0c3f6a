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

import ipaddress
import math
import re
import socket
from collections import OrderedDict
from typing import Any, Final, Protocol, TypeVar, final, runtime_checkable

import idna
import trio

from ._errors import ConnectError, ResolveError

__all__ = [
    "Address",
    "CachingResolver",
    "GetaddrinfoResolver",
    "Resolver",
    "check_host",
    "format_target",
    "host_problem",
    "resolve_literal",
]

Address = tuple[int, Any]
"""``(family, sockaddr)``: ``(AF_INET, (ip, port))`` or
``(AF_INET6, (ip, port, flowinfo, scope_id))``."""

_FAMILIES = (socket.AF_INET, socket.AF_INET6)

# RFC 1035 section 2.3.4: a name is at most 255 octets on the wire, which
# leaves 253 characters in dotted form; a label is at most 63 octets.
MAX_NAME: Final = 253
MAX_LABEL: Final = 63
# C0 controls, DEL and C1 controls. getaddrinfo() takes a C string, so a NUL
# ends the name early ("localhost\x00.example.com" would reach 127.0.0.1, past
# an allow-list that checked the whole string); the others are in no host
# name and would put line breaks or escape sequences into logs.
_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
# A last label that inet_aton() reads as a number ("127.1", "2130706433",
# "0x7f.1"): the system resolver takes such a "name" as an IPv4 address in a
# non-standard spelling, another way round a check on the name (the WHATWG URL
# standard treats these as IPv4 addresses for the same reason).
_NUMERIC_LABEL: Final = re.compile(r"(?:[0-9]+|0[xX][0-9a-fA-F]*)")


_E = TypeVar("_E", bound=ConnectError)


def named_error(cls: type[_E], code: int | None, message: str) -> _E:
    """``cls(message)`` with ``errno`` set: ``str()`` is then exactly the message
    (``OSError(errno, msg)`` would print ``[Errno 111] msg``), as Netty's
    ``connection timed out after 5000 ms: example.com:80``."""
    err = cls(message)
    err.errno = code
    return err


@runtime_checkable
class Resolver(Protocol):
    """Resolves a host name to socket addresses.

    ``resolve(host, port, family)`` returns a list of ``(family, sockaddr)``
    pairs, in the order the connection attempts should consider them.
    ``family`` is ``socket.AF_INET``, ``socket.AF_INET6`` or ``0`` (either).
    A failed lookup should raise :class:`trionet.ResolveError` (a plain
    ``OSError`` such as ``socket.gaierror`` is wrapped into one by ``connect``).
    """

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]: ...


def format_target(host: str, port: int) -> str:
    """``host:port`` for messages, with IPv6 literals bracketed (``[::1]:80``)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def host_problem(host: str) -> str | None:
    """Why ``host`` can be neither an IP literal nor a host name, or ``None``
    if it is one of the two. Used for every name trionet resolves, binds or
    sends as TLS SNI, so what is checked is what is connected to.

    Refused: the empty string; any control character (NUL above all); names
    longer than 253 characters or with an empty label or one longer than 63
    (after IDNA encoding); a last label that is a number (``"127.1"``, which
    the system resolver reads as ``127.0.0.1``); non-ASCII names IDNA 2008
    (UTS 46, as trio encodes them) cannot encode, or would change other than in
    case (``"local\\u00adhost"`` is sent as ``localhost``: the caller must
    write the name that is looked up). IP literals, bracketed IPv6 and scope
    ids (``"fe80::1%eth0"``) pass unchanged.
    """
    if not host:
        return "an empty string"
    control = _CONTROL.search(host)
    if control is not None:
        return f"a control character, {control.group()!r} at position {control.start()}"
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        pass
    else:
        return None
    if host.isascii():
        return _name_problem(host)
    # trio hands an ASCII name to getaddrinfo as it is and encodes any other
    # with the idna package (IDNA 2008, UTS 46 mapping): check that encoding.
    try:
        encoded = idna.encode(host, uts46=True).decode("ascii")
        same = idna.decode(encoded) == host.lower()
    except UnicodeError as exc:  # idna.IDNAError is one
        return f"not a valid internationalised name: {exc}"
    if not same:
        return f"IDNA encodes it as {encoded!r}; write that name"
    return _name_problem(encoded)


def _name_problem(name: str) -> str | None:
    """Length and label checks on an ASCII (or IDNA-encoded) name."""
    dotted = name[:-1] if name.endswith(".") else name
    if len(dotted) > MAX_NAME:
        return f"{len(dotted)} characters long, more than {MAX_NAME}"
    labels = dotted.split(".")
    for label in labels:
        if not label:
            return "an empty label"
        if len(label) > MAX_LABEL:
            return f"a label of {len(label)} characters, more than {MAX_LABEL}"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return "ends in a number, which would be read as an IPv4 address; write the address"
    return None


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


def resolve_literal(host: str, port: int) -> Address | None:
    """The address of an IP literal (``"10.0.0.1"``, ``"::1"``, ``"[::1]"``,
    ``"fe80::1%eth0"``), or ``None`` if ``host`` is a name to be resolved.

    This is Netty's ``isResolved`` fast path: no resolver is consulted for a
    literal. The conversion uses ``getaddrinfo`` with ``AI_NUMERICHOST``, which
    never touches DNS and does not block, so it runs inline.
    """
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        return None
    # ipaddress accepts it; getaddrinfo fills in the sockaddr (scope id for %iface).
    flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
    try:
        infos = socket.getaddrinfo(bare, port, 0, socket.SOCK_STREAM, 0, flags)
    except socket.gaierror:
        return None  # e.g. an unknown interface name after '%': let a resolver decide
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr


def check_addresses(resolver: object, host: str, result: object) -> list[Address]:
    """Validate what a resolver returned (``TypeError`` naming the bad value)."""
    if not isinstance(result, list | tuple):
        raise TypeError(f"resolver {resolver!r} returned {result!r} for {host!r}: expected a list")
    out: list[Address] = []
    for item in result:
        ok = (
            isinstance(item, tuple)
            and len(item) == 2
            and item[0] in _FAMILIES
            and isinstance(item[1], tuple)
            and len(item[1]) >= 2
        )
        if not ok:
            raise TypeError(
                f"resolver {resolver!r} returned {item!r} for {host!r}: "
                "expected (AF_INET or AF_INET6, sockaddr tuple)"
            )
        out.append((int(item[0]), item[1]))
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
        a name :func:`host_problem` refuses (control characters, over-long
        names or labels, IDNA failures).
    """

    def __repr__(self) -> str:
        return "GetaddrinfoResolver()"

    async def resolve(self, host: str, port: int, family: int) -> list[Address]:
        check_host(host, port)
        try:
            infos = await trio.socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            target = format_target(host, port)
            raise named_error(
                ResolveError, exc.errno, f"cannot resolve ({exc.strerror}): {target}"
            ) from exc
        seen: dict[Address, None] = {}
        for fam, _, _, _, sockaddr in infos:
            if fam in _FAMILIES:
                seen.setdefault((int(fam), sockaddr), None)
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

    A name :func:`host_problem` refuses raises :class:`ResolveError` before the
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
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise ValueError(f"CachingResolver.ttl={ttl!r}: must be a number of seconds > 0")
        if math.isinf(ttl):
            raise ValueError(f"CachingResolver.ttl={ttl!r}: must be finite")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"CachingResolver.max_entries={max_entries!r}: must be an int >= 1")
        self.resolver: Resolver = resolver if resolver is not None else GetaddrinfoResolver()
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[str, int, int], tuple[float, list[Address]]] = (
            OrderedDict()
        )

    def __repr__(self) -> str:
        return f"CachingResolver({self.resolver!r}, ttl={self.ttl}, max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached answer."""
        self._entries.clear()

    async def resolve(self, host: str, port: int, family: int) -> list[Address]:
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
