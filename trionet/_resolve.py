"""Name resolution for outbound connections (Netty ``AddressResolver``).

(The default and caching resolvers are added with the connect path.)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Resolver"]


@runtime_checkable
class Resolver(Protocol):
    """Resolves a host name to socket addresses.

    ``resolve`` returns a list of ``(family, sockaddr)`` pairs, in the order
    the connection attempts should consider them.
    """

    async def resolve(self, host: str, port: int, family: int) -> list[tuple[int, Any]]: ...
