"""trionet: Apache Traffic Server's Net module and Netty's connect path, on trio.

Per-port accept tasks, connection throttling, inactivity and active timeouts as
cancel scopes, connect with timeout and cancellation, statistics -- in trio's
structured-concurrency style. ``trionet.iocore`` keeps ATS's
``handleEvent(event, data)`` contract for code written against it.
"""

import typing as _typing

from ._apps._tcp_proxy import ProxyStatistics as ProxyStatistics
from ._apps._tcp_proxy import SpliceResult as SpliceResult
from ._apps._tcp_proxy import TcpProxy as TcpProxy
from ._apps._tcp_proxy import splice as splice
from ._apps._upstreams import UpstreamStatistics as UpstreamStatistics
from ._apps._workers._job import WorkerMain as _WorkerMain
from ._apps._workers._runtime import WorkerContext as WorkerContext
from ._apps._workers._sockets import Sharing as _Sharing
from ._apps._workers._supervisor import WorkerStartupError as WorkerStartupError
from ._apps._workers._supervisor import WorkerSupervisor as WorkerSupervisor
from ._apps._workers._supervisor import run_workers as run_workers
from ._base._addr import SocketAddress as _SocketAddress
from ._base._errors import AcceptError as AcceptError
from ._base._errors import ConnectError as ConnectError
from ._base._errors import ConnectTimeoutError as ConnectTimeoutError
from ._base._errors import ProxyProtocolError as ProxyProtocolError
from ._base._errors import ResolveError as ResolveError
from ._base._errors import ThrottledError as ThrottledError
from ._base._errors import TLSError as TLSError
from ._base._errors import TrionetError as TrionetError
from ._base._errors import UnsupportedOptionError as UnsupportedOptionError
from ._base._options import AcceptOptions as AcceptOptions
from ._base._options import ConnectOptions as ConnectOptions
from ._base._options import Resolver as Resolver
from ._base._options import SocketOptions as SocketOptions
from ._base._version import __version__ as __version__
from ._core._connection import Connection as Connection
from ._core._stats import NetStatistics as NetStatistics
from ._core._stats import Reading as Reading
from ._core._stats import ReadingsSource as _ReadingsSource
from ._core._stats import Statistic as Statistic
from ._core._stats_page import Readiness as Readiness
from ._core._stats_page import StatisticsSource as _StatisticsSource
from ._core._stats_page import StatsCollector as StatsCollector
from ._core._throttle import ThrottleMode as _ThrottleMode
from ._core._timeouts import TimedOut as _TimedOut
from ._core._tls import TLSInfo as TLSInfo
from ._inbound._accept import Handler as _Handler
from ._inbound._conn_listener import ConnectionListener as ConnectionListener
from ._inbound._inherit import InheritedListeners as InheritedListeners
from ._inbound._inherit import inherited_listeners as inherited_listeners
from ._inbound._listen import Listener as Listener
from ._inbound._proxy_protocol import ProxyHeader as ProxyHeader
from ._inbound._proxy_protocol import parse_proxy_header as parse_proxy_header
from ._inbound._server import Server as Server
from ._inbound._signals import stop_on_signals as stop_on_signals
from ._outbound._resolve import CachingResolver as CachingResolver
from ._outbound._resolve import GetaddrinfoResolver as GetaddrinfoResolver
from ._processor import NetProcessor as NetProcessor
from ._processor import serve_stats as serve_stats

# ------------------------------------------------------------ type aliases
# Assigned here, not only imported, so that each carries its description where
# the documentation tools look for it (a name's docstring follows its assignment).
SocketAddress: _typing.TypeAlias = _SocketAddress
"""A socket address, as Python's :mod:`socket` module writes it.
``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6
(``Connection.remote_address``, ``Listener.address``, ``ProxyHeader.source``...);
the host is an IP address in text form (``"192.0.2.1"``, ``"::1"``). A Unix
domain socket's address is a ``str``: its path, ``""`` for an unnamed socket
(a Unix client's usually is), or ``"@name"`` for a Linux abstract name.
``isinstance(address, str)`` tells a Unix address from a TCP one."""

Handler: _typing.TypeAlias = _Handler
"""The connection handler :meth:`NetProcessor.serve` runs, once per
connection, as ``await handler(conn)``. An ``async def handler(conn:
Connection) -> None`` (a result is ignored), or an object with such an
``async __call__`` (:class:`TcpProxy`)."""

ThrottleMode: _typing.TypeAlias = _ThrottleMode
"""What an accept task does at ``max_connections``, ``NetProcessor(throttle=...)``.
``"pause"`` stops accepting until a connection closes, ``"close"`` accepts and
closes at once (ATS)."""

TimedOut: _typing.TypeAlias = _TimedOut
"""Why the processor ended a connection, in ``Connection.timed_out``. Its
inactivity or active timeout passed, or it was the oldest idle keep-alive
connection over ``max_idle_connections`` (``"evicted"``)."""

StatisticsSource: _typing.TypeAlias = _StatisticsSource
"""Returns a fresh :class:`NetStatistics` snapshot each time it is called,
as ``net.statistics`` does; what :func:`serve_stats` and :class:`StatsCollector` read."""

ReadingsSource: _typing.TypeAlias = _ReadingsSource
"""Returns :class:`Reading` objects each time it is called: more statistics
for the stats page, ``serve_stats(..., extra=[proxy.readings])``."""

WorkerMain: _typing.TypeAlias = _WorkerMain
"""What each worker process of :func:`run_workers` runs, ``async def
main(ctx: WorkerContext)``; a module-level function, which the worker imports
by name."""

Sharing: _typing.TypeAlias = _Sharing
"""How the worker processes of :func:`run_workers` share a port. One socket
per worker with ``SO_REUSEPORT`` (``"reuseport"``); one socket the supervisor
opens and every worker inherits (``"inherit"``); or ``"reuseport"`` where the
platform has it and ``"inherit"`` elsewhere (``"auto"``)."""
