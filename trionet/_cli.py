"""The ``trionet`` command: ``trionet echo`` and ``trionet proxy``.

Each sub-command builds a :class:`NetProcessor` and one server from its
options, prints the bound addresses, optionally serves the stats page, and
stops gracefully on SIGINT/SIGTERM (a second signal stops at once). Bad
option values are reported by argparse naming the option
(``argument --upstream: 'foo': expected HOST:PORT``), never as a traceback;
what can only fail once running (a port taken, a worker that cannot start)
ends the command with status 1 and one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import math
import os
import re
import signal
import socket
import ssl
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, Final, NoReturn, final

import trio

from . import __version__
from ._connection import Connection
from ._options import DEFAULT_PROXY_PROTOCOL_TRUSTED, AcceptOptions, ConnectOptions
from ._proxy import TcpProxy
from ._resolve import host_problem
from ._server import Handler, NetProcessor, Server
from ._stats_page import STATS_INACTIVITY_TIMEOUT
from ._workers import WorkerContext, WorkerStartupError, WorkerSupervisor

__all__ = ["build_parser", "main", "parse"]

PROG: Final = "trionet"
# How worker processes (--workers N) get the command line: they re-parse it.
_ARGV_ENV: Final = "TRIONET_CLI_ARGV"
# More worker processes than this is a typo (or a fork bomb), not a deployment:
# ATS runs one net thread per core, and no machine this runs on has 1024.
MAX_WORKERS: Final = 1024

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# ----------------------------------------------------------- argument types
# Each raises ArgumentTypeError with the bad value quoted; argparse prefixes
# the option's name, so the user reads "argument --port: '99999': ...".
def _whole(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        # int() refuses more than 4300 digits: say so rather than "not a number".
        digits = text.strip().lstrip("+-").replace("_", "")
        why = "too large" if digits.isdigit() else expected
        raise argparse.ArgumentTypeError(f"{text!r}: {why}") from None


def _port(text: str) -> int:
    value = _whole(text, "expected a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0..65535")
    return value


def _positive_int(text: str) -> int:
    value = _whole(text, "expected a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _workers(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_WORKERS} workers")
    return value


def _seconds(text: str, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, e.g. 30 or 0.5") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        rule = "zero or more" if allow_zero else "a positive number of"
        raise argparse.ArgumentTypeError(f"{text!r}: must be {rule} seconds")
    return value or 0.0  # "-0" is 0, not -0.0 ("grace -0 s")


def _grace(text: str) -> float:
    return _seconds(text, allow_zero=True)


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a network, e.g. 10.0.0.0/8") from None


# A host name as getaddrinfo takes it: dot-separated labels of letters, digits,
# '-' and '_' (seen in real names), 63 bytes each, 253 in all, after IDNA for a
# non-ASCII name. Anything else is refused here, naming the option, rather than
# sent to the resolver: a NUL (C would cut the name there), spaces, control
# characters; and format, private-use and unassigned characters, which IDNA
# would drop or pass on (``local\u00adhost`` is ``localhost`` after IDNA).
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")


def _host_problem(text: str) -> str | None:
    """Why ``text`` is not a host the CLI takes, or ``None``. The library's own
    check (:func:`trionet._resolve.host_problem`: control characters, lengths,
    IDNA, a numeric last label) first, so the CLI refuses what the options
    would; then the shell-facing rule that every label is letters, digits,
    ``-`` or ``_`` (no spaces or other separators)."""
    why = host_problem(text)
    if why is not None:
        return why
    try:
        ipaddress.ip_address(text)  # also IPv6 with a %scope
        return None
    except ValueError:
        pass
    if any(unicodedata.category(c)[0] in "CZ" for c in text):
        return "a separator or unassigned character"
    name = text.encode("idna").decode("ascii")  # host_problem checked it encodes
    labels = name.removesuffix(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "a label with a character other than letters, digits, '-' and '_'"
    return None


def _host(text: str) -> str:
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text  # [::1]
    if host and (why := _host_problem(host)) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an IP address or a host name: {why}")
    return host


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:80
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if (why := _host_problem(host)) is not None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 ({host!r}: {why})"
        )
    return host, int(port)


def _bind_host(host: str) -> str | None:
    """The ``AcceptOptions.host`` for ``--host``/``--stats-host``.

    ``::`` alone binds IPv6 only (trionet sets ``IPV6_V6ONLY``, so that an
    IPv4 socket can share the port); "every address" means both families,
    which is ``host=None``: ``::`` and ``0.0.0.0`` on one port. ``0.0.0.0``
    stays IPv4 only, as written.
    """
    if host == "":
        return None
    try:
        if ipaddress.ip_address(host) == ipaddress.IPv6Address("::"):
            return None
    except ValueError:
        pass
    return host


# ------------------------------------------------------------------- parser
@final
class _Parser(argparse.ArgumentParser):
    """argparse, with its error message kept on one line.

    Most messages quote the value with repr(), which escapes a newline; a few
    (``unrecognized arguments: ...``) print arguments as given, and an argument
    with a newline or another control character would split the error line or
    write raw control characters to the terminal. They are escaped here.
    """

    def error(self, message: str) -> NoReturn:
        super().error("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def _common_options() -> _Parser:
    """Options every sub-command takes (a parent parser)."""
    p = _Parser(add_help=False)
    listen = p.add_argument_group("listening")
    listen.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; '::' for every address, IPv6 and IPv4; "
        "'0.0.0.0' for every IPv4 address)",
    )
    limits = p.add_argument_group("limits and timeouts")
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        metavar="N",
        help="open connections allowed, inbound and outbound together (default: no limit)",
    )
    limits.add_argument(
        "--throttle",
        choices=("pause", "close"),
        default="pause",
        help="at the limit: 'pause' accepting (clients wait in the backlog; default) "
        "or accept and 'close' at once (ATS)",
    )
    limits.add_argument(
        "--per-client-max",
        type=_positive_int,
        metavar="N",
        help="inbound connections allowed from one client address",
    )
    limits.add_argument(
        "--inactivity-timeout",
        type=_seconds,
        metavar="S",
        help="close a connection after S seconds without traffic",
    )
    limits.add_argument(
        "--active-timeout",
        type=_seconds,
        metavar="S",
        help="close a connection S seconds after it opened, busy or not",
    )
    limits.add_argument(
        "--grace",
        type=_grace,
        default=5.0,
        metavar="S",
        help="on SIGINT/SIGTERM, give open connections S seconds to finish (default 5)",
    )
    scale = p.add_argument_group("scale-out and security")
    scale.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help=f"worker processes sharing the port with SO_REUSEPORT (default 1, at most "
        f"{MAX_WORKERS}; limits apply per worker; with --stats-port P, worker i's page is on "
        "port P+i)",
    )
    scale.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain")
    scale.add_argument("--tls-key", metavar="FILE", help="private key for --tls-cert")
    scale.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="expect a PROXY protocol v1/v2 header on every connection (behind HAProxy...)",
    )
    scale.add_argument(
        "--proxy-protocol-trusted",
        type=_network,
        action="append",
        default=[],
        metavar="NET",
        help="accept PROXY headers only from this network (repeatable; default: loopback "
        "only; '0.0.0.0/0' and '::/0' trust every source)",
    )
    ops = p.add_argument_group("operations")
    ops.add_argument(
        "--stats-port",
        type=_port,
        metavar="PORT",
        help="serve statistics on http://127.0.0.1:PORT/stats (JSON) and /metrics (Prometheus)",
    )
    ops.add_argument(
        "--stats-host",
        type=_host,
        default="127.0.0.1",
        help="address for the stats page (default 127.0.0.1; '::' for every address)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The ``trionet`` argument parser (sub-commands ``echo`` and ``proxy``)."""
    parser = _Parser(
        prog=PROG,
        description="Network servers on trionet: an echo server and a TCP proxy with "
        "connection limits, timeouts and a statistics page.",
        epilog="Run 'trionet COMMAND --help' for a command's options. "
        "SIGINT/SIGTERM stop gracefully; a second one stops at once.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    echo = commands.add_parser(
        "echo",
        parents=[common],
        help="echo every byte back",
        description="An echo server: every byte a client sends is sent back.",
    )
    echo.add_argument("--port", type=_port, default=7007, help="port (default 7007; 0 = any)")
    proxy = commands.add_parser(
        "proxy",
        parents=[common],
        help="forward connections to an upstream server",
        description="A TCP proxy: each client connection is forwarded to the upstream "
        "server, bytes flowing both ways with backpressure and half-close.",
        epilog="example: trionet proxy --listen 8080 --upstream 127.0.0.1:80 "
        "--max-connections 1000 --inactivity-timeout 30 --stats-port 9100",
    )
    proxy.add_argument(
        "--listen",
        "--port",
        dest="port",
        type=_port,
        required=True,
        metavar="PORT",
        help="port to listen on (0 = any)",
    )
    proxy.add_argument(
        "--upstream",
        type=_host_port,
        required=True,
        metavar="HOST:PORT",
        help="where to forward connections",
    )
    proxy.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds to resolve and connect upstream (default 10)",
    )
    return parser


# ------------------------------------------------------------------ running
class _UsageError(Exception):
    """An option value argparse could not check alone (e.g. an unreadable
    certificate); reported like argparse's own errors, with status 2."""


@final
@dataclasses.dataclass
class _Plan:
    """What to run, built from the parsed options."""

    command: str
    processor: NetProcessor
    handler: Handler
    listen: AcceptOptions
    stats: AcceptOptions | None
    grace: float
    suffix: str  # after "listening on ADDRESS"
    proxy: TcpProxy | None = None
    who: str = ""  # "worker 3: " in worker processes


async def _echo(conn: Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Errors that involve more than one option (argparse exits with status 2)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        given, missing = ("--tls-cert", "--tls-key")
        if args.tls_cert is None:
            given, missing = missing, given
        parser.error(f"argument {given}: needs {missing} as well")
    if args.proxy_protocol_trusted and not args.proxy_protocol:
        parser.error("argument --proxy-protocol-trusted: needs --proxy-protocol")
    if args.command == "proxy" and args.max_connections is not None and args.max_connections < 2:
        # A proxy session holds two slots, its client's and its upstream's
        # (TcpProxy reserves them together), so 1 could never serve anyone.
        parser.error(
            f"argument --max-connections: '{args.max_connections}': a proxy session "
            "needs 2 connections (client and upstream); give at least 2"
        )
    if args.stats_port and args.workers > 1:  # one page per worker, on P..P+N-1
        last = args.stats_port + args.workers - 1
        if last > 65535:
            parser.error(
                f"argument --stats-port: '{args.stats_port}': with --workers {args.workers} "
                f"the pages take ports {args.stats_port}..{last}, past 65535"
            )


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if cert is None or key is None:
        return None
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not os.path.isfile(path):
            raise _UsageError(f"argument {option}: {path!r}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise _UsageError(
            f"argument --tls-cert: cannot load {cert!r} with {key!r}: {exc}"
        ) from None
    return context


def _plan(args: argparse.Namespace) -> _Plan:
    net = NetProcessor(
        max_connections=args.max_connections,
        throttle=args.throttle,
        per_client_max_connections=args.per_client_max,
    )
    listen = AcceptOptions(
        host=_bind_host(args.host),
        port=args.port,
        inactivity_timeout=args.inactivity_timeout,
        active_timeout=args.active_timeout,
        ssl_context=_tls_context(args.tls_cert, args.tls_key),
        proxy_protocol=args.proxy_protocol,
        proxy_protocol_trusted=tuple(args.proxy_protocol_trusted) or DEFAULT_PROXY_PROTOCOL_TRUSTED,
    )
    stats = None
    if args.stats_port is not None:
        stats = AcceptOptions(
            host=_bind_host(args.stats_host),
            port=args.stats_port,
            inactivity_timeout=STATS_INACTIVITY_TIMEOUT,
        )
    plan = _Plan(args.command, net, _echo, listen, stats, args.grace, "")
    if args.command == "proxy":
        host, port = args.upstream
        upstream = ConnectOptions(
            connect_timeout=args.connect_timeout,
            inactivity_timeout=args.inactivity_timeout,
            active_timeout=args.active_timeout,
        )
        plan.proxy = plan.handler = TcpProxy(net, host, port, upstream)
        plan.suffix = f", forwarding to {_join(host, port)}"
    if listen.ssl_context is not None:
        plan.suffix += " (TLS)"
    return plan


def _join(host: str, port: object) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(listener_address: tuple[object, ...]) -> str:
    return _join(str(listener_address[0]), listener_address[1])


def _say(plan: _Plan, text: str) -> None:
    # One write per line: worker processes share the supervisor's stdout, and
    # print() writes the text and the newline separately, which interleaves
    # when the stream is unbuffered (python -u, PYTHONUNBUFFERED). A single
    # write of under PIPE_BUF bytes to a pipe is atomic.
    sys.stdout.write(f"{PROG} {plan.command}: {plan.who}{text}\n")
    sys.stdout.flush()


def _summary(plan: _Plan) -> str:
    stats = plan.processor.statistics()
    if plan.proxy is not None:
        p = plan.proxy.statistics()
        done = f"{p.sessions} sessions ({p.upstream_failures} upstream failures)"
    else:
        done = f"{stats.total_accepts} connections accepted"
    return f"stopped: {done}, {stats.read_bytes} bytes in, {stats.write_bytes} bytes out"


async def _serve_stats(plan: _Plan, nursery: trio.Nursery, offset: int = 0) -> Server | None:
    if plan.stats is None:
        return None
    opts = plan.stats
    if opts.port and offset:  # one page per worker, on consecutive ports
        opts = dataclasses.replace(opts, port=opts.port + offset)
    page: Server = await nursery.start(plan.processor.serve_stats, opts)
    for listener in page.listeners:
        url = f"http://{_address(listener.address)}"
        _say(plan, f"statistics on {url}/stats and {url}/metrics")
    return page


# ------------------------------------------------------------- one process
async def _stop_on_signal(plan: _Plan, servers: list[Server], cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            if any(s.stopping for s in servers):
                _say(plan, f"{signal.Signals(signum).name} again: stopping now")
                cancel.cancel()
                return
            _say(plan, f"{signal.Signals(signum).name}: shutting down (grace {plan.grace:g} s)")
            for server in servers:
                server.shutdown(plan.grace)


async def _run(plan: _Plan) -> int:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(plan.processor.serve, plan.handler, plan.listen)
        for listener in server.listeners:
            _say(plan, f"listening on {_address(listener.address)}{plan.suffix}")
        page = await _serve_stats(plan, nursery)
        servers = [server] if page is None else [server, page]
        nursery.start_soon(_stop_on_signal, plan, servers, nursery.cancel_scope)
        for s in servers:
            await s.wait_closed()
        nursery.cancel_scope.cancel()
    _say(plan, _summary(plan))
    return 0


# ------------------------------------------------------- --workers N
# The supervisor (this process) binds the port and starts N interpreters; each
# re-parses the command line from the environment and serves with its own
# processor, so every limit applies per worker.
async def _worker_main(ctx: WorkerContext) -> None:
    args = build_parser().parse_args(json.loads(os.environ[_ARGV_ENV]))
    plan = _plan(args)
    plan.who = f"worker {ctx.worker_id}: "
    listen = ctx.listen_options(ssl_context=plan.listen.ssl_context)
    async with trio.open_nursery() as nursery:
        page = await _serve_stats(plan, nursery, offset=ctx.worker_id)
        await ctx.serve(plan.processor, plan.handler, listen=listen)
        if page is not None:
            page.shutdown(0)
    _say(plan, _summary(plan))


async def _supervise(plan: _Plan, workers: int) -> int:
    # An SSLContext cannot be sent to another process: each worker builds its own.
    listen = dataclasses.replace(plan.listen, ssl_context=None)
    supervisor = WorkerSupervisor(_worker_main, listen, workers=workers, grace=plan.grace)
    status = 1
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def supervise(task_status: trio.TaskStatus[Any]) -> None:
                nonlocal status
                status = await supervisor.run(task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(supervise)
            host = plan.listen.host or "*"
            for port in supervisor.ports:
                _say(plan, f"listening on {_join(host, port)}{plan.suffix} ({workers} workers)")
            nursery.start_soon(_forward_signals, plan, supervisor, signals)
    return status


async def _forward_signals(plan: _Plan, supervisor: WorkerSupervisor, signals: Any) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if not supervisor.stopping:
            _say(plan, f"{name}: shutting down (grace {plan.grace:g} s)")
            supervisor.shutdown()
        else:
            _say(plan, f"{name} again: stopping now")
            supervisor.kill()


# ------------------------------------------------------------------- main
def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, _Plan]:
    """Parse and check the command line, and build what it asks for, without
    binding anything.

    Raises:
      SystemExit: status 2 after argparse's usage message, whose last line
        names the option and the value (``argument --port: '99999': a port is
        0..65535``); status 0 after ``--help``/``--version``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_combinations(parser, args)
    try:
        plan = _plan(args)
    except (_UsageError, ValueError) as exc:
        # ValueError: an option object refusing a value the types above let
        # through; its message names the field and the value.
        parser.error(str(exc))
    return args, plan


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trionet`` command (and ``python -m trionet``).

    Args:
      argv: the arguments (default ``sys.argv[1:]``).

    Returns:
      The exit status: 0 after a graceful stop, 1 if serving failed (e.g. the
      port is taken, a worker kept failing at start-up), 2 for a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, plan = parse(argv)
    if (problem := _unresolvable(args)) is not None:
        print(f"{PROG} {args.command}: {problem}", file=sys.stderr)
        return 1
    status = 1
    try:
        if args.workers > 1:
            os.environ[_ARGV_ENV] = json.dumps(argv)
            status = trio.run(_supervise, plan, args.workers)
        else:
            status = trio.run(_run, plan)
    except* OSError as group:
        # Binding failed (port taken, address not local...): say so plainly.
        for error in _leaves(group):
            print(f"{PROG} {args.command}: {error}", file=sys.stderr)
    except* WorkerStartupError as group:
        # The supervisor stopped every worker: one line, the worker's own error.
        for error in _leaves(group):
            print(f"{PROG} {args.command}: {error}", file=sys.stderr)
    return status


def _unresolvable(args: argparse.Namespace) -> str | None:
    """The first of ``--host``/``--stats-host`` that names no address, as an
    error line naming the option (binding would only say "Name or service not
    known"). A DNS look-up, so not part of :func:`parse`."""
    hosts = [("--host", args.host)]
    if args.stats_port is not None:
        hosts.append(("--stats-host", args.stats_host))
    for option, text in hosts:
        host = _bind_host(text)
        if host is None:
            continue
        try:
            socket.getaddrinfo(
                host, None, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE | socket.AI_ADDRCONFIG
            )
        except socket.gaierror as exc:
            return f"argument {option}: {text!r}: cannot resolve it ({exc.strerror})"
    return None


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
