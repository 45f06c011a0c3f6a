"""trionet: Apache Traffic Server's Net module and Netty's connect path, on trio.

Per-port accept tasks, connection throttling, inactivity and active timeouts as
cancel scopes, connect with timeout and cancellation, statistics -- in trio's
structured-concurrency style. ``trionet.iocore`` keeps ATS's
``handleEvent(event, data)`` contract for code written against it.
"""

from ._connection import Connection as Connection
from ._errors import AcceptError as AcceptError
from ._errors import ConnectError as ConnectError
from ._errors import ConnectTimeoutError as ConnectTimeoutError
from ._errors import ProxyProtocolError as ProxyProtocolError
from ._errors import ResolveError as ResolveError
from ._errors import ThrottledError as ThrottledError
from ._errors import TLSError as TLSError
from ._errors import TrionetError as TrionetError
from ._errors import UnsupportedOptionError as UnsupportedOptionError
from ._inherit import InheritedListeners as InheritedListeners
from ._inherit import inherited_listeners as inherited_listeners
from ._listen import Listener as Listener
from ._options import AcceptOptions as AcceptOptions
from ._options import ConnectOptions as ConnectOptions
from ._options import SocketOptions as SocketOptions
from ._proxy import ProxyStatistics as ProxyStatistics
from ._proxy import SpliceResult as SpliceResult
from ._proxy import TcpProxy as TcpProxy
from ._proxy import splice as splice
from ._proxy_protocol import ProxyHeader as ProxyHeader
from ._proxy_protocol import parse_proxy_header as parse_proxy_header
from ._resolve import CachingResolver as CachingResolver
from ._resolve import GetaddrinfoResolver as GetaddrinfoResolver
from ._resolve import Resolver as Resolver
from ._server import NetProcessor as NetProcessor
from ._server import Server as Server
from ._stats import NetStatistics as NetStatistics
from ._stats_page import StatsCollector as StatsCollector
from ._stats_page import serve_stats as serve_stats
from ._tls import TLSInfo as TLSInfo
from ._workers import WorkerContext as WorkerContext
from ._workers import WorkerStartupError as WorkerStartupError
from ._workers import WorkerSupervisor as WorkerSupervisor
from ._workers import run_workers as run_workers

__version__ = "0.1.0"
