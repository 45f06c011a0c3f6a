"""Connection accounting for the throttle: synchronous, no I/O, testable alone.

ATS checks ``check_net_throttle(ACCEPT)`` against
``proxy.config.net.connections_throttle`` before each accept and keeps a
per-client count for ``per_client.max_connections_in``. This is the same
bookkeeping as data: what is open, per client, and whether one more may be
admitted. The accept loop decides what to do with a "no" (wait or close).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

from .._base._addr import Network, client_key, normalize_networks, parse_address

__all__ = ["ThrottleMode", "Throttle"]

ThrottleMode: TypeAlias = Literal["pause", "close"]
# Exported and described as trionet.ThrottleMode.
THROTTLE_MODES: Final = ("pause", "close")


class Throttle:
    """Counts open connections, globally and per client address.

    Args:
      max_connections: limit on open connections (inbound + outbound), or None.
      per_client_max: limit on inbound connections from one address, or None.
      exempt: networks whose clients the per-client limit does not apply to.
    """

    __slots__ = (
        "_exempt",
        "_exempt_cache",
        "max_connections",
        "open",
        "per_client",
        "per_client_max",
    )

    def __init__(
        self,
        max_connections: int | None = None,
        per_client_max: int | None = None,
        exempt: Iterable[Network] = (),
    ) -> None:
        self.max_connections: int | None = max_connections
        self.per_client_max: int | None = per_client_max
        self._exempt = normalize_networks(exempt)
        self._exempt_cache: dict[str, bool] = {}
        self.open: int = 0
        self.per_client: dict[str, int] = {}

    def at_limit(self, need: int = 1) -> bool:
        """True when ``need`` more connections would exceed ``max_connections``
        (a proxy session needs 2: the client's and its upstream's)."""
        limit = self.max_connections
        return limit is not None and self.open + need > limit

    def client_at_limit(self, host: str) -> bool:
        """True when ``host`` already has ``per_client_max`` inbound connections
        and is not in an exempt network. ``::ffff:192.0.2.1`` and ``192.0.2.1``
        are one client (:func:`trionet._base._addr.client_key`)."""
        limit = self.per_client_max
        if limit is None or self.per_client.get(client_key(host), 0) < limit:
            return False
        return not self._is_exempt(host)

    def _is_exempt(self, host: str) -> bool:
        cached = self._exempt_cache.get(host)
        if cached is None:
            addr = parse_address(host)
            cached = addr is not None and any(addr in net for net in self._exempt)
            if len(self._exempt_cache) > 4096:
                self._exempt_cache.clear()
            self._exempt_cache[host] = cached
        return cached

    def acquire(self, host: str | None) -> None:
        """Count one more open connection (``host`` for inbound ones, else None)."""
        self.open += 1
        if host is not None:
            self.count_client(host)

    def count_client(self, host: str) -> None:
        """Count a connection already counted with ``acquire(None)`` against
        ``host`` too (a client that a PROXY protocol header named later);
        ``release(host)`` then undoes both."""
        if self.per_client_max is not None:
            host = client_key(host)
            self.per_client[host] = self.per_client.get(host, 0) + 1

    def release(self, host: str | None) -> None:
        """Undo one :meth:`acquire` with the same ``host``."""
        self.open -= 1
        if host is not None and self.per_client_max is not None:
            host = client_key(host)
            left = self.per_client.get(host, 0) - 1
            if left > 0:
                self.per_client[host] = left
            else:
                self.per_client.pop(host, None)
