"""Resolvers: IP literal detection, the getaddrinfo resolver (through trio's
custom hostname resolver hook, so no DNS is queried), the caching resolver."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

import trionet
from trionet._base._addr import host_port, resolve_literal


class ScriptedHostnameResolver(trio.abc.HostnameResolver):
    """trio's getaddrinfo hook: answers (or fails) from a table, recording calls."""

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.calls: list[tuple[Any, ...]] = []

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        self.calls.append((host, port, family, type))
        await trio.lowlevel.checkpoint()
        answer = self.table[host.decode() if isinstance(host, bytes) else host]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


def info(family: int, sockaddr: Any) -> tuple[Any, ...]:
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)


class CountingResolver:
    def __init__(self, answer: list[tuple[int, Any]] | Exception) -> None:
        self.answer = answer
        self.calls = 0

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if isinstance(self.answer, Exception):
            raise self.answer
        return [(f, (a[0], port, *a[2:])) for f, a in self.answer]


LOOP4 = [(socket.AF_INET, ("127.0.0.1", 0))]


# ------------------------------------------------------------------ literals
@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", (socket.AF_INET, ("127.0.0.1", 80))),
        ("::1", (socket.AF_INET6, ("::1", 80, 0, 0))),
        ("[::1]", (socket.AF_INET6, ("::1", 80, 0, 0))),
        ("example.com", None),
        ("localhost", None),
        ("1.2.3", None),  # inet_aton would take it; it is not a literal we pass through
    ],
)
def test_resolve_literal(host: str, expected: Any) -> None:
    assert resolve_literal(host, 80) == expected


def test_resolve_literal_with_scope_id() -> None:
    family, sockaddr = resolve_literal("fe80::1%lo", 80) or (0, ())
    assert family == socket.AF_INET6
    assert sockaddr == ("fe80::1", 80, 0, socket.if_nametoindex("lo"))


def test_host_port_brackets_ipv6() -> None:
    assert host_port("example.com", 80) == "example.com:80"
    assert host_port("::1", 443) == "[::1]:443"
    assert host_port("[::1]", 443) == "[::1]:443"


def test_resolvers_satisfy_the_protocol() -> None:
    assert isinstance(trionet.GetaddrinfoResolver(), trionet.Resolver)
    assert isinstance(trionet.CachingResolver(), trionet.Resolver)


# --------------------------------------------------------------- getaddrinfo
async def test_getaddrinfo_resolver_order_and_dedup() -> None:
    hook = ScriptedHostnameResolver(
        {
            "dual.test": [
                info(socket.AF_INET6, ("2001:db8::1", 80, 0, 0)),
                info(socket.AF_INET, ("192.0.2.1", 80)),
                info(socket.AF_INET6, ("2001:db8::1", 80, 0, 0)),  # duplicate
            ]
        }
    )
    trio.socket.set_custom_hostname_resolver(hook)
    try:
        got = await trionet.GetaddrinfoResolver().resolve("dual.test", 80, 0)
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert got == [
        (socket.AF_INET6, ("2001:db8::1", 80, 0, 0)),
        (socket.AF_INET, ("192.0.2.1", 80)),
    ]
    assert hook.calls == [(b"dual.test", 80, 0, socket.SOCK_STREAM)]


async def test_getaddrinfo_failure_is_resolve_error_chained() -> None:
    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    trio.socket.set_custom_hostname_resolver(ScriptedHostnameResolver({"nosuch.test": gai}))
    try:
        with pytest.raises(trionet.ResolveError) as err:
            await trionet.GetaddrinfoResolver().resolve("nosuch.test", 80, 0)
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert err.value.__cause__ is gai
    assert err.value.errno == socket.EAI_NONAME
    assert str(err.value) == "cannot resolve (Name or service not known): nosuch.test:80"


async def test_default_resolver_is_used_by_connect() -> None:
    # A name resolved through trio's getaddrinfo (hooked) to a refused loopback port.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        hook = ScriptedHostnameResolver({"svc.test": [info(socket.AF_INET, ("127.0.0.1", port))]})
        trio.socket.set_custom_hostname_resolver(hook)
        try:
            with pytest.raises(
                trionet.ConnectError, match=rf"^Connection refused: svc\.test:{port}$"
            ):
                await trionet.NetProcessor().connect("svc.test", port)
        finally:
            trio.socket.set_custom_hostname_resolver(None)
    assert hook.calls == [(b"svc.test", port, 0, socket.SOCK_STREAM)]


async def test_localhost_resolves_without_dns() -> None:
    got = await trionet.GetaddrinfoResolver().resolve("localhost", 8080, socket.AF_INET)
    assert (socket.AF_INET, ("127.0.0.1", 8080)) in got
    assert all(family == socket.AF_INET for family, _ in got)


# ------------------------------------------------------------------- caching
async def test_caching_resolver_hits_within_ttl_and_expires(
    autojump_clock: trio.abc.Clock,
) -> None:
    inner = CountingResolver(LOOP4)
    cache = trionet.CachingResolver(inner, ttl=30.0)
    first = await cache.resolve("a.test", 80, 0)
    await trio.sleep(29.0)
    assert await cache.resolve("A.TEST", 80, 0) == first  # names are case-insensitive
    assert (inner.calls, cache.hits, cache.misses) == (1, 1, 1)
    await trio.sleep(1.0)  # 30 s after the answer: expired
    await cache.resolve("a.test", 80, 0)
    assert (inner.calls, cache.hits, cache.misses) == (2, 1, 2)


async def test_caching_resolver_keys_on_port_and_family() -> None:
    inner = CountingResolver(LOOP4)
    cache = trionet.CachingResolver(inner)
    assert await cache.resolve("a.test", 80, 0) == [(socket.AF_INET, ("127.0.0.1", 80))]
    assert await cache.resolve("a.test", 81, 0) == [(socket.AF_INET, ("127.0.0.1", 81))]
    await cache.resolve("a.test", 80, socket.AF_INET)
    assert inner.calls == 3 and len(cache) == 3


async def test_caching_resolver_bounds_its_size_lru() -> None:
    inner = CountingResolver(LOOP4)
    cache = trionet.CachingResolver(inner, max_entries=2)
    await cache.resolve("a.test", 80, 0)
    await cache.resolve("b.test", 80, 0)
    await cache.resolve("a.test", 80, 0)  # hit: a is now the most recently used
    await cache.resolve("c.test", 80, 0)  # evicts b
    assert len(cache) == 2
    await cache.resolve("a.test", 80, 0)  # still cached
    assert inner.calls == 3
    await cache.resolve("b.test", 80, 0)  # was evicted: asked again
    assert inner.calls == 4


async def test_caching_resolver_does_not_cache_failures() -> None:
    inner = CountingResolver(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    cache = trionet.CachingResolver(inner)
    for _ in range(2):
        with pytest.raises(socket.gaierror):
            await cache.resolve("flaky.test", 80, 0)
    assert inner.calls == 2 and len(cache) == 0
    inner.answer = LOOP4
    assert await cache.resolve("flaky.test", 80, 0) == [(socket.AF_INET, ("127.0.0.1", 80))]


async def test_caching_resolver_returns_copies() -> None:
    cache = trionet.CachingResolver(CountingResolver(LOOP4))
    got = await cache.resolve("a.test", 80, 0)
    got.clear()
    assert await cache.resolve("a.test", 80, 0) == [(socket.AF_INET, ("127.0.0.1", 80))]


async def test_caching_resolver_through_connect() -> None:
    inner = CountingResolver(LOOP4)
    cache = trionet.CachingResolver(inner)
    net = trionet.NetProcessor()
    opts = trionet.ConnectOptions(resolver=cache)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        for _ in range(3):
            with pytest.raises(trionet.ConnectError, match="Connection refused"):
                await net.connect("cached.test", port, opts)
    assert (inner.calls, cache.hits) == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"ttl": 0}, ValueError, "ttl=0"),
        ({"ttl": -5}, ValueError, "ttl=-5"),
        ({"ttl": float("inf")}, ValueError, "ttl=inf"),
        ({"ttl": "60"}, ValueError, "ttl='60'"),
        ({"max_entries": 0}, ValueError, "max_entries=0"),
        ({"max_entries": 1.5}, ValueError, "max_entries=1.5"),
        ({"resolver": object()}, TypeError, "resolver=<object"),
    ],
)
def test_caching_resolver_rejects_bad_settings(kwargs: Any, exc: type, match: str) -> None:
    resolver = kwargs.pop("resolver", None)
    with pytest.raises(exc, match=match):
        trionet.CachingResolver(resolver, **kwargs)
