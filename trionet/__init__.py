"""trionet: Apache Traffic Server's Net module and Netty's connect path, on trio.

Per-port accept tasks, connection throttling, inactivity and active timeouts as
cancel scopes, connect with timeout and cancellation, statistics -- in trio's
structured-concurrency style. ``trionet.iocore`` keeps ATS's
``handleEvent(event, data)`` contract for code written against it.
"""

from ._apps._tcp_proxy import ProxyStatistics as ProxyStatistics
from ._apps._tcp_proxy import SpliceResult as SpliceResult
from ._apps._tcp_proxy import TcpProxy as TcpProxy
from ._apps._tcp_proxy import splice as splice
from ._apps._workers._runtime import WorkerContext as WorkerContext
from ._apps._workers._supervisor import WorkerStartupError as WorkerStartupError
from ._apps._workers._supervisor import WorkerSupervisor as WorkerSupervisor
from ._apps._workers._supervisor import run_workers as run_workers
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
from ._core._stats_page import StatsCollector as StatsCollector
from ._core._tls import TLSInfo as TLSInfo
from ._inbound._conn_listener import ConnectionListener as ConnectionListener
from ._inbound._inherit import InheritedListeners as InheritedListeners
from ._inbound._inherit import inherited_listeners as inherited_listeners
from ._inbound._listen import Listener as Listener
from ._inbound._proxy_protocol import ProxyHeader as ProxyHeader
from ._inbound._proxy_protocol import parse_proxy_header as parse_proxy_header
from ._inbound._server import Server as Server
from ._outbound._resolve import CachingResolver as CachingResolver
from ._outbound._resolve import GetaddrinfoResolver as GetaddrinfoResolver
from ._processor import NetProcessor as NetProcessor
from ._processor import serve_stats as serve_stats
