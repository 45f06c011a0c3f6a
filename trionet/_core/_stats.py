"""Statistics: live counters (mutable, on the hot path) and frozen snapshots.

The counters are plain attribute increments on one ``__slots__`` object that
every connection of a processor holds a direct reference to, so counting a
read costs two attribute stores. :class:`NetStatistics` is the frozen
snapshot users see; :meth:`NetStatistics.as_records` renames the fields to
ATS's record names (``proxy.process.net.*``) for tools that know ATS.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

__all__ = ["GAUGES", "RECORD_NAMES", "NetStatistics"]


@dataclass(frozen=True, slots=True)
class NetStatistics:
    """A snapshot of a :class:`NetProcessor`'s (or one server's) statistics.

    Gauges (current values): ``connections_currently_open`` (inbound and
    outbound connections not yet closed), ``accepts_currently_open``
    (listening sockets with a running accept task), ``idle_connections``
    (connections marked ``conn.idle``). Everything else is a counter that only
    grows. ``calls_to_read_nodata`` counts receives that returned no data (end
    of stream: trio waits for readiness inside ``recv``, so ATS's "read
    returned EAGAIN" is not observable); ``handler_errors`` counts handlers that
    raised, not connections the peer reset.
    """

    connections_currently_open: int = 0
    accepts_currently_open: int = 0
    idle_connections: int = 0
    total_accepts: int = 0
    connections_throttled_in: int = 0
    per_client_connections_throttled_in: int = 0
    connections_rate_limited_in: int = 0
    accept_errors_transient: int = 0
    accept_errors_resource: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    calls_to_read: int = 0
    calls_to_read_nodata: int = 0
    calls_to_write: int = 0
    handler_errors: int = 0
    inactivity_timeouts: int = 0
    active_timeouts: int = 0
    default_inactivity_timeout_applied: int = 0
    keep_alive_evictions: int = 0
    connects_total: int = 0
    connect_failures: int = 0
    connect_timeouts: int = 0
    connections_throttled_out: int = 0
    tls_handshake_timeouts: int = 0
    tls_handshake_errors: int = 0
    proxy_protocol_errors: int = 0

    def as_records(self) -> dict[str, int]:
        """The statistics under ATS record names, e.g.
        ``{"proxy.process.net.connections_currently_open": 3, ...}``."""
        return {RECORD_NAMES[f.name]: getattr(self, f.name) for f in fields(self)}


# ATS's names where ATS has the statistic; trionet-only statistics follow the
# same scheme under proxy.process.net (or proxy.process.ssl for TLS).
RECORD_NAMES: Final[dict[str, str]] = {
    "connections_currently_open": "proxy.process.net.connections_currently_open",
    "accepts_currently_open": "proxy.process.net.accepts_currently_open",
    "idle_connections": "proxy.process.net.idle_connections",
    "total_accepts": "proxy.process.tcp.total_accepts",
    "connections_throttled_in": "proxy.process.net.connections_throttled_in",
    "per_client_connections_throttled_in": "proxy.process.net.per_client.connections_throttled_in",
    "connections_rate_limited_in": "proxy.process.net.connections_rate_limited_in",
    "accept_errors_transient": "proxy.process.net.accept_errors_transient",
    "accept_errors_resource": "proxy.process.net.accept_errors_resource",
    "read_bytes": "proxy.process.net.read_bytes",
    "write_bytes": "proxy.process.net.write_bytes",
    "calls_to_read": "proxy.process.net.calls_to_read",
    "calls_to_read_nodata": "proxy.process.net.calls_to_read_nodata",
    "calls_to_write": "proxy.process.net.calls_to_write",
    "handler_errors": "proxy.process.net.handler_errors",
    "inactivity_timeouts": "proxy.process.net.inactivity_timeouts",
    "active_timeouts": "proxy.process.net.active_timeouts",
    "default_inactivity_timeout_applied": "proxy.process.net.default_inactivity_timeout_applied",
    "keep_alive_evictions": "proxy.process.net.keep_alive_evictions",
    "connects_total": "proxy.process.net.connects_total",
    "connect_failures": "proxy.process.net.connect_failures",
    "connect_timeouts": "proxy.process.net.connect_timeouts",
    "connections_throttled_out": "proxy.process.net.connections_throttled_out",
    "tls_handshake_timeouts": "proxy.process.ssl.handshake_timeouts",
    "tls_handshake_errors": "proxy.process.ssl.handshake_errors",
    "proxy_protocol_errors": "proxy.process.net.proxy_protocol_errors",
}

GAUGES: Final[frozenset[str]] = frozenset(
    {"connections_currently_open", "accepts_currently_open", "idle_connections"}
)


class Counters:
    """The mutable twin of :class:`NetStatistics`, incremented in place on the
    hot path (one per processor; its servers and connections share it)."""

    __slots__ = tuple(f.name for f in fields(NetStatistics))

    if TYPE_CHECKING:
        # The slots are generated from NetStatistics' fields; every one is an int.
        def __getattr__(self, name: str) -> int: ...
        def __setattr__(self, name: str, value: int) -> None: ...

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def snapshot(self) -> NetStatistics:
        return NetStatistics(**{name: getattr(self, name) for name in self.__slots__})
