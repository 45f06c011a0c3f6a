"""The ``trionet`` command: ``trionet echo`` and ``trionet proxy``.

Each sub-command builds a :class:`NetProcessor` and one server from its
options, prints the bound addresses, optionally serves the stats page (with
``--workers``, the supervisor serves one page for the fleet), and
stops gracefully on SIGINT/SIGTERM (a second signal stops at once; with
``--workers``, the supervisor's policy: a second SIGINT, not a repeated
SIGTERM, see ``trionet._apps._workers._signals``). SIGHUP reloads with
``--workers`` (a new generation of worker processes); a single process has
nothing to reload into, so SIGHUP stops it gracefully, with its summary.
Under systemd (``$NOTIFY_SOCKET``) both notify readiness and shutdown. Bad
option values are reported by argparse naming the option
(``argument --upstream: 'foo': expected HOST:PORT``), never as a traceback;
what can only fail once running (a port taken, a worker that cannot start)
ends the command with status 1 and one line on stderr. ``--config FILE``
reads the options from a TOML file first (:mod:`trionet._apps._config`);
``--check`` lists every problem of the options and the file and exits (0 or
1). Logging is configured here, once per process (:mod:`trionet._apps._logging`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, Final, Literal, final

import trio

from .._base._addr import SocketAddress, host_port
from .._base._errors import leaves
from .._base._options import DEFAULT_PROXY_PROTOCOL_TRUSTED, AcceptOptions, ConnectOptions
from .._core._connection import Connection
from .._core._stats_page import STATS_INACTIVITY_TIMEOUT, Readiness
from .._inbound._server import Handler, Server
from .._inbound._signals import stop_on_signals
from .._processor import NetProcessor
from ._cli_args import (
    PROG,
    ParseProblem,
    bind_host,
    build_parser,
    collect_problems,
    command_parser,
    drop_bad_values,
)
from ._config import Config, ConfigError, load_config
from ._logging import configure_logging
from ._tcp_proxy import TcpProxy
from ._workers._notify import SystemdNotifier, notify_loop
from ._workers._runtime import WorkerContext
from ._workers._signals import SUPERVISOR_SIGNALS, Action, forward_signals
from ._workers._supervisor import WorkerStartupError, WorkerSupervisor

__all__ = ["build_parser", "check", "main", "parse"]

# How worker processes (--workers N) get the command line: they re-parse it.
_ARGV_ENV: Final = "TRIONET_CLI_ARGV"


# ------------------------------------------------------------------ running
class _UsageError(Exception):
    """An option value argparse could not check alone (e.g. an unreadable
    certificate); reported like argparse's own errors, with status 2."""


@final
@dataclasses.dataclass
class _Command:
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
    worker_timeout: float | None = 30.0  # with --workers; None: no hang check


async def _echo(conn: Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Errors that involve more than one option (argparse exits with status 2)."""
    for problem in _combination_problems(args):
        parser.error(problem)


def _combination_problems(args: argparse.Namespace) -> Iterator[str]:
    """Each problem of more than one option (``--check`` lists them all)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        given, missing = ("--tls-cert", "--tls-key")
        if args.tls_cert is None:
            given, missing = missing, given
        yield f"argument {given}: needs {missing} as well"
    if args.proxy_protocol_trusted and not args.proxy_protocol:
        yield "argument --proxy-protocol-trusted: needs --proxy-protocol"
    if args.command == "proxy":
        yield from _upstream_problems(args)
    if args.accept_burst is not None and args.max_accept_rate is None:
        yield "argument --accept-burst: needs --max-accept-rate"
    if args.per_client_accept_burst is not None and args.per_client_max_accept_rate is None:
        yield "argument --per-client-accept-burst: needs --per-client-max-accept-rate"
    if args.command == "proxy" and args.max_connections is not None and args.max_connections < 2:
        # A proxy session holds two slots, its client's and its upstream's
        # (TcpProxy reserves them together), so 1 could never serve anyone.
        yield (
            f"argument --max-connections: '{args.max_connections}': a proxy session "
            "needs 2 connections (client and upstream); give at least 2"
        )
    if isinstance(args.port, str) and args.workers > 1:
        listen = "--listen" if args.command == "proxy" else "--port"
        yield (
            f"argument {listen}: 'unix:{args.port}': one process serves a Unix socket "
            "(--workers share a TCP port with SO_REUSEPORT)"
        )


_PROXY_VERSIONS: Final[dict[str | None, Literal[1, 2]]] = {"v1": 1, "v2": 2}


def _upstream_problems(args: argparse.Namespace) -> Iterator[str]:
    """The proxy's upstream options that only make sense together."""
    for option in ("--upstream-ca", "--upstream-sni", "--upstream-alpn"):
        if getattr(args, option[2:].replace("-", "_")) is not None and not args.upstream_tls:
            yield f"argument {option}: needs --upstream-tls"
    seen = set()
    for host, port in args.upstream or ():
        if (host, port) in seen:
            yield f"argument --upstream: '{host_port(host, port)}': given twice"
        seen.add((host, port))


def _upstream_tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client context for --upstream-tls: verification on (the system's
    CAs, or only those of --upstream-ca)."""
    if not args.upstream_tls:
        return None
    ca = args.upstream_ca
    if ca is not None and not os.path.isfile(ca):
        raise _UsageError(f"argument --upstream-ca: {ca!r}: no such file")
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise _UsageError(f"argument --upstream-ca: cannot load {ca!r}: {exc}") from None


def _proxy(args: argparse.Namespace, net: NetProcessor) -> TcpProxy:
    """The TcpProxy ``trionet proxy`` runs, from its options."""
    upstream = ConnectOptions(
        connect_timeout=args.connect_timeout,
        inactivity_timeout=args.inactivity_timeout,
        active_timeout=args.active_timeout,
        ssl_context=_upstream_tls_context(args),
        server_hostname=args.upstream_sni,
        alpn_protocols=args.upstream_alpn,
        send_proxy_protocol=_PROXY_VERSIONS.get(args.send_proxy),
    )
    return TcpProxy(
        net,
        args.upstream,
        options=upstream,
        balance=args.balance,
        max_fails=args.max_fails,
        fail_backoff=args.fail_backoff,
        zero_copy=args.zero_copy,
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


def _plan(args: argparse.Namespace) -> _Command:
    net = NetProcessor(
        max_connections=args.max_connections,
        throttle=args.throttle,
        per_client_max_connections=args.per_client_max,
        access_log=args.access_log,
        max_accept_rate=args.max_accept_rate,
        accept_burst=args.accept_burst,
        per_client_max_accept_rate=args.per_client_max_accept_rate,
        per_client_accept_burst=args.per_client_accept_burst,
    )
    where: dict[str, Any] = {"host": bind_host(args.host), "port": args.port}
    if isinstance(args.port, str):  # --listen unix:/path
        where = {"path": args.port}
    listen = AcceptOptions(
        **where,
        inactivity_timeout=args.inactivity_timeout,
        active_timeout=args.active_timeout,
        ssl_context=_tls_context(args.tls_cert, args.tls_key),
        proxy_protocol=args.proxy_protocol,
        proxy_protocol_trusted=tuple(args.proxy_protocol_trusted) or DEFAULT_PROXY_PROTOCOL_TRUSTED,
    )
    stats = None
    if args.stats_port is not None:
        stats = AcceptOptions(
            host=bind_host(args.stats_host),
            port=args.stats_port,
            inactivity_timeout=STATS_INACTIVITY_TIMEOUT,
        )
    plan = _Command(args.command, net, _echo, listen, stats, args.grace, "")
    plan.worker_timeout = args.worker_timeout or None
    if args.command == "proxy":
        plan.proxy = plan.handler = _proxy(args, net)
        plan.suffix = ", forwarding to " + ", ".join(host_port(h, p) for h, p in args.upstream)
        if len(args.upstream) > 1:
            plan.suffix += f" ({args.balance})"
        if args.upstream_tls:
            plan.suffix += " over TLS"
    if listen.ssl_context is not None:
        plan.suffix += " (TLS)"
    return plan


def _address(listener_address: SocketAddress) -> str:
    if isinstance(listener_address, str):
        return f"unix:{listener_address}"
    return host_port(str(listener_address[0]), listener_address[1])


def _say(plan: _Command, text: str) -> None:
    # One write per line: worker processes share the supervisor's stdout, and
    # print() writes the text and the newline separately, which interleaves
    # when the stream is unbuffered (python -u, PYTHONUNBUFFERED). A single
    # write of under PIPE_BUF bytes to a pipe is atomic.
    sys.stdout.write(f"{PROG} {plan.command}: {plan.who}{text}\n")
    sys.stdout.flush()


def _summary(plan: _Command) -> str:
    stats = plan.processor.statistics()
    if plan.proxy is not None:
        p = plan.proxy.statistics()
        done = f"{p.sessions} sessions ({p.upstream_failures} upstream failures)"
    else:
        done = f"{stats.total_accepts} connections accepted"
    return f"stopped: {done}, {stats.read_bytes} bytes in, {stats.write_bytes} bytes out"


def _announce_page(plan: _Command, page: Server | None) -> None:
    for listener in page.listeners if page is not None else ():
        url = f"http://{_address(listener.address)}"
        _say(plan, f"statistics on {url}/stats and {url}/metrics, health on {url}/readyz")


# ------------------------------------------------------------- one process
# Shutdown order, for a load balancer watching /readyz: /readyz turns 503,
# then the listeners close, then the connections drain within the grace, and
# the stats page closes last, once the server has.
async def _run(plan: _Command) -> int:
    readiness = Readiness()
    notifier = SystemdNotifier.from_environ()
    status = partial(_status_line, plan)
    try:
        async with trio.open_nursery() as nursery:
            server = await plan.processor.start_server(nursery, plan.handler, plan.listen)
            readiness.watch(server)
            for listener in server.listeners:
                _say(plan, f"listening on {_address(listener.address)}{plan.suffix}")
            page = None
            if plan.stats is not None:
                extra = [plan.proxy.readings] if plan.proxy is not None else []
                serve_page = partial(plan.processor.serve_stats, readiness=readiness, extra=extra)
                page = await nursery.start(serve_page, plan.stats)
                _announce_page(plan, page)
            notifier.ready(status())
            nursery.start_soon(notify_loop, notifier, status)

            def announce(line: str) -> None:
                readiness.not_ready("shutting down")  # before stop_on_signals shuts down
                notifier.stopping(line)
                _say(plan, line)

            # SIGHUP: a single process cannot start its successor beside itself
            # (that takes --workers), so it stops as for SIGTERM, with the
            # summary, instead of dying silently by the default action.
            await stop_on_signals(server, grace=plan.grace, signals=_STOP, announce=announce)
            if page is not None:
                page.shutdown(0)
            nursery.cancel_scope.cancel()  # the notifications
    finally:
        notifier.close()
    _say(plan, _summary(plan))
    return 0


_STOP: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _status_line(plan: _Command) -> str:
    return f"{plan.processor.statistics().connections_currently_open} open connections"


# ------------------------------------------------------- --workers N
# The supervisor (this process) binds the port and starts N interpreters; each
# re-parses the command line from the environment and serves with its own
# processor. ctx.serve makes its limits the fleet's and publishes its
# statistics; the supervisor serves the one stats page, summing them.
async def _serve_in_worker(ctx: WorkerContext) -> None:
    # The command line again, and its --config file, read afresh.
    args, plan = parse(json.loads(os.environ[_ARGV_ENV]))
    # A fresh interpreter: it logs as the supervisor does, each line saying
    # which worker wrote it.
    configure_logging(args.log_level, args.log_format, fields={"worker": ctx.worker_id})
    plan.who = f"worker {ctx.worker_id}: "
    listen = ctx.listen_options(ssl_context=plan.listen.ssl_context)
    await ctx.serve(plan.processor, plan.handler, listen=listen)
    _say(plan, _summary(plan))


async def _supervise(plan: _Command, workers: int) -> int:
    # An SSLContext cannot be sent to another process: each worker builds its own.
    listen = dataclasses.replace(plan.listen, ssl_context=None)
    supervisor = WorkerSupervisor(
        _serve_in_worker,
        listen,
        workers=workers,
        grace=plan.grace,
        stats=plan.stats,
        worker_timeout=plan.worker_timeout,
    )
    status = 1
    with trio.open_signal_receiver(*SUPERVISOR_SIGNALS) as signals:
        async with trio.open_nursery() as nursery:

            async def supervise(task_status: trio.TaskStatus[Any]) -> None:
                nonlocal status
                status = await supervisor.run(task_status=task_status)
                nursery.cancel_scope.cancel()

            await nursery.start(supervise)
            host = plan.listen.host or "*"
            for port in supervisor.ports:
                _say(plan, f"listening on {host_port(host, port)}{plan.suffix} ({workers} workers)")
            _announce_page(plan, supervisor.stats_server)
            nursery.start_soon(forward_signals, supervisor, signals, partial(_announce, plan))
    return status


def _announce(plan: _Command, name: str, action: Action) -> None:
    if action == "stop":
        _say(plan, f"{name}: shutting down (grace {plan.grace:g} s)")
    elif action == "reload":
        _say(plan, f"{name}: reloading (starting new workers; the old ones drain)")
    else:
        _say(plan, f"{name} again: stopping now")


# ------------------------------------------------------------------- main
def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, _Command]:
    """Parse and check the command line, and build what it asks for, without
    binding anything.

    With ``--config FILE``, the file's settings come first and the command
    line overrides them (see :mod:`trionet._apps._config`).

    Raises:
      SystemExit: status 2 after argparse's usage message, whose last line
        names the option and the value (``argument --port: '99999': a port is
        0..65535``), or after one line per problem of the ``--config`` file;
        status 0 after ``--help``/``--version``.
    """
    parser = build_parser()
    config = _read_config(parser, argv)
    args = parser.parse_args(argv)
    if config is not None:
        config.fill_lists(args)
    _check_combinations(parser, args)
    try:
        plan = _plan(args)
    except (_UsageError, ValueError) as exc:
        # ValueError: an option object refusing a value the types above let
        # through; its message names the field and the value.
        parser.error(str(exc))
    return args, plan


def _peek(argv: Sequence[str]) -> argparse.Namespace:
    """The sub-command, ``--config`` and ``--check``, before the real parse
    (which needs the file's settings first). A malformed command line is
    left to the real parse to report."""
    pre = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    pre.add_argument("command", nargs="?")
    pre.add_argument("--config")
    pre.add_argument("--check", action="store_true")
    try:
        known, _ = pre.parse_known_args(argv)
    except argparse.ArgumentError:
        known = argparse.Namespace(command=None, config=None, check=False)
    return known


def _read_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Config | None:
    """Load ``--config`` into the sub-command's defaults; exit with status 2
    and one line per problem if the file has any."""
    peek = _peek(argv)
    sub = command_parser(parser, peek.command)
    if peek.config is None or sub is None:
        return None
    try:
        config = load_config(peek.config, sub, peek.command)
    except ConfigError as exc:
        problems = [str(exc)]
    else:
        problems = config.problems
    if problems:
        sub.print_usage(sys.stderr)
        sub.exit(2, "".join(f"{sub.prog}: error: {problem}\n" for problem in problems))
    config.apply(sub)
    return config


def check(argv: Sequence[str]) -> list[str]:
    """Every problem of the command line and its ``--config`` file, one line
    each (``trionet ... --check``); an empty list if there is none.

    The problems of the file and of each option value come first, all of
    them; then those of several options together. Only when there is none of
    those are the certificate files loaded and the host names looked up
    (``--host`` must name a local address), as a start would; nothing is bound.
    """
    parser = build_parser()
    peek = _peek(argv)
    sub = command_parser(parser, peek.command)
    problems: list[str] = []
    config = None
    if peek.config is not None and sub is not None:
        try:
            config = load_config(peek.config, sub, peek.command)
        except ConfigError as exc:
            problems.append(str(exc))
        else:
            problems.extend(config.problems)
            config.apply(sub)
    # From here a bad option value is recorded, and parsing goes on.
    values = collect_problems(parser)
    try:
        args = parser.parse_args(argv)
    except ParseProblem as exc:
        return [*problems, *values, str(exc)]
    problems.extend(values)
    drop_bad_values(sub or parser, args)
    if config is not None:
        config.fill_lists(args)
    problems.extend(_combination_problems(args))
    if problems:
        return problems  # building the plan needs good values
    try:
        _plan(args)
    except (_UsageError, ValueError) as exc:
        problems.append(str(exc))
    problems.extend(_host_problems(args))
    return problems


def _run_check(argv: Sequence[str], command: str | None) -> int:
    problems = check(argv)
    who = f"{PROG} {command}" if command else PROG
    for problem in problems:
        print(f"{who}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{who}: configuration OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trionet`` command (and ``python -m trionet``).

    Args:
      argv: the arguments (default ``sys.argv[1:]``).

    Returns:
      The exit status: 0 after a graceful stop, 1 if serving failed (e.g. the
      port is taken, a worker kept failing at start-up), 2 for a usage error.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    peek = _peek(argv)
    if peek.check:
        return _run_check(argv, peek.command)
    args, plan = parse(argv)
    if (problem := _unresolvable(args)) is not None:
        print(f"{PROG} {args.command}: {problem}", file=sys.stderr)
        return 1
    configure_logging(args.log_level, args.log_format)
    status = 1
    try:
        if args.workers > 1:
            os.environ[_ARGV_ENV] = json.dumps(argv)
            status = trio.run(_supervise, plan, args.workers)
        else:
            status = trio.run(_run, plan)
    except* OSError as group:
        # Binding failed (port taken, address not local...): say so plainly.
        for error in leaves(group):
            print(f"{PROG} {args.command}: {error}", file=sys.stderr)
    except* WorkerStartupError as startup:
        # The supervisor stopped every worker: one line, the worker's own error.
        for failed in leaves(startup):
            print(f"{PROG} {args.command}: {failed}", file=sys.stderr)
    return status


def _unresolvable(args: argparse.Namespace) -> str | None:
    """The first of ``--host``/``--stats-host`` that names no address, as an
    error line naming the option (binding would only say "Name or service not
    known"). A DNS look-up, so not part of :func:`parse`."""
    return next(_host_problems(args), None)


def _host_problems(args: argparse.Namespace) -> Iterator[str]:
    """Each of ``--host``/``--stats-host`` that names no address (see above)."""
    hosts = [("--host", args.host)]
    if args.stats_port is not None:
        hosts.append(("--stats-host", args.stats_host))
    for option, text in hosts:
        host = bind_host(text)
        if host is None:
            continue
        try:
            socket.getaddrinfo(
                host, None, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE | socket.AI_ADDRCONFIG
            )
        except socket.gaierror as exc:
            yield f"argument {option}: {text!r}: cannot resolve it ({exc.strerror})"
