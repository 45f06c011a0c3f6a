"""Statistics: live counters (mutable, on the hot path) and frozen snapshots.

The counters are plain attribute increments on one ``__slots__`` object that
every connection of a processor holds a direct reference to, so counting a
read costs two attribute stores. :class:`NetStatistics` is the frozen
snapshot users see; :meth:`NetStatistics.as_records` renames the fields to
ATS's record names (``proxy.process.net.*``) for tools that know ATS.

What the stats page shows is described as data: a :class:`Statistic` names
one statistic (its ATS record name for ``/stats``, its ``trionet_`` metric
name for ``/metrics``, its help line, gauge or counter) and a :class:`Reading`
is its value now -- the total, and for a fleet of workers each live worker's
own. A reading may carry labels (a proxy's per-target figures: one reading
per target, labelled ``upstream="host:port"``): ``/metrics`` shows them as
labelled series of one family, ``/stats`` as records with the label values
in the name. Statistics of other layers (the TCP proxy's) reach the page as readings
through the same interface, so the page never imports them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final, TypeAlias, final

__all__ = [
    "GAUGES",
    "NET_STATISTICS",
    "RECORD_NAMES",
    "NetStatistics",
    "Reading",
    "ReadingsSource",
    "Statistic",
    "net_readings",
    "readings_of",
]


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

# The records' namespace, replaced by METRIC_PREFIX in /metrics names.
_RECORD_PREFIX: Final = "proxy.process."
METRIC_PREFIX: Final = "trionet_"


@final
@dataclass(frozen=True, slots=True)
class Statistic:
    """How the stats page names and shows one statistic.

    Attributes:
      record: its ATS-style record name, the key in ``/stats``
        (``"proxy.process.net.read_bytes"``).
      help: one line describing it (the ``HELP`` text in ``/metrics``, which
        adds the record name).
      gauge: a current value (``/metrics`` type ``gauge``; a fleet sums it
        over live workers only) rather than a counter that only grows.
    """

    record: str
    help: str
    gauge: bool = False

    @property
    def metric(self) -> str:
        """Its ``/metrics`` name: ``trionet_`` and the record name after
        ``proxy.process.`` with dots as underscores
        (``trionet_net_read_bytes``); counters get ``_total`` in the exposition."""
        return METRIC_PREFIX + self.record.removeprefix(_RECORD_PREFIX).replace(".", "_")


@final
@dataclass(frozen=True, slots=True)
class Reading:
    """One statistic's value as the stats page shows it.

    Several readings of one statistic, each with its own ``labels``, make
    one labelled family in ``/metrics`` (a proxy's per-target figures:
    ``trionet_tcp_proxy_upstream_sessions_total{upstream="10.0.0.5:80"}``)
    and one record each in ``/stats`` (:attr:`record`).

    Attributes:
      statistic: what it is (:class:`Statistic`).
      value: the total (for a fleet, over every worker: counters include
        workers that have exited, gauges only live ones), or, with
        ``labels``, the value of that series.
      workers: ``(worker id, value)`` per live worker, for a fleet's
        ``worker="i"`` series in ``/metrics``; empty in one process.
      labels: ``(name, value)`` Prometheus labels of this reading, e.g.
        ``(("upstream", "10.0.0.5:80"),)``; empty for a statistic's one
        unlabelled series.

    Raises:
      ValueError: a label name is not a Prometheus label name
        (``[a-zA-Z_][a-zA-Z0-9_]*``, not starting with ``__``), is
        ``worker`` (the fleet's own label) or appears twice.
    """

    statistic: Statistic
    value: int
    workers: tuple[tuple[int, int], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [name for name, _ in self.labels]
        for name in names:
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__") or name == "worker":
                raise ValueError(
                    f"Reading.labels: {name!r} of {self.statistic.record} is not a usable "
                    "label name ([a-zA-Z_][a-zA-Z0-9_]*, no leading __, not 'worker')"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"Reading.labels: a label repeats in {self.labels!r}")

    @property
    def record(self) -> str:
        """Its key in ``/stats``: the statistic's record name, with the label
        values, if any, inserted before its last part (ATS records are flat
        dotted names): ``proxy.process.tcp_proxy.upstream.sessions``
        labelled ``upstream="10.0.0.5:80"`` is
        ``proxy.process.tcp_proxy.upstream.10.0.0.5:80.sessions``."""
        record = self.statistic.record
        if not self.labels:
            return record
        head, _, last = record.rpartition(".")
        return ".".join([head, *(value for _, value in self.labels), last])


# Prometheus' label names (its data model); "__" names are reserved to it.
_LABEL_NAME: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


ReadingsSource: TypeAlias = Callable[[], Iterable[Reading]]
# Exported and described as trionet.ReadingsSource.

# One line of HELP per statistic (Prometheus shows it; ATS documents the same
# records in records.yaml).
_HELP: Final[dict[str, str]] = {
    "connections_currently_open": "Connections (inbound and outbound) not yet closed.",
    "accepts_currently_open": "Listening sockets with a running accept task.",
    "idle_connections": "Connections marked idle (keep-alive), eligible for eviction.",
    "total_accepts": "Connections accepted and handed to a handler.",
    "connections_throttled_in": "Inbound connections closed at max_connections.",
    "per_client_connections_throttled_in": "Inbound connections closed at the per-client limit.",
    "connections_rate_limited_in": "Inbound connections closed at a connection-rate limit.",
    "accept_errors_transient": "accept() failures retried at once (EAGAIN, ECONNRESET...).",
    "accept_errors_resource": "accept() failures from exhausted resources (EMFILE, ENOBUFS...).",
    "read_bytes": "Payload bytes received.",
    "write_bytes": "Payload bytes sent.",
    "calls_to_read": "Calls to receive on connections.",
    "calls_to_read_nodata": "Receive calls that returned no data (end of stream).",
    "calls_to_write": "Calls to send on connections.",
    "handler_errors": "Handlers that raised (a peer's reset is not counted).",
    "inactivity_timeouts": "Connections closed by their inactivity timeout.",
    "active_timeouts": "Connections closed by their active timeout.",
    "default_inactivity_timeout_applied": "Connections given the default inactivity timeout.",
    "keep_alive_evictions": "Idle connections closed to stay under max_idle_connections.",
    "connects_total": "Outbound connections attempted.",
    "connect_failures": "Outbound connections that failed.",
    "connect_timeouts": "Outbound connections that hit their connect timeout.",
    "connections_throttled_out": "Outbound connections refused at max_connections.",
    "tls_handshake_timeouts": "TLS handshakes that hit their timeout.",
    "tls_handshake_errors": "TLS handshakes that failed.",
    "proxy_protocol_errors": "Connections closed for a bad or missing PROXY protocol header.",
}

NET_STATISTICS: Final[dict[str, Statistic]] = {
    name: Statistic(record, _HELP[name], name in GAUGES) for name, record in RECORD_NAMES.items()
}
"""NetStatistics field -> how the page shows it."""


def readings_of(values: object, table: Mapping[str, Statistic]) -> list[Reading]:
    """One :class:`Reading` per entry of ``table`` (field name -> statistic),
    its value the attribute of that name of ``values`` (a frozen snapshot)."""
    return [Reading(stat, int(getattr(values, name))) for name, stat in table.items()]


def net_readings(stats: NetStatistics) -> list[Reading]:
    """``stats`` as the page shows it."""
    return readings_of(stats, NET_STATISTICS)


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
