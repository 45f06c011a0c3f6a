"""The ``trionet`` command: ``trionet echo`` and ``trionet proxy``.

Each sub-command builds a :class:`NetProcessor` and one server from its
options, prints the bound addresses, optionally serves the stats page, and
stops gracefully on SIGINT/SIGTERM (a second signal stops at once; with
``--workers``, the supervisor's policy: a second SIGINT, not a repeated
SIGTERM, see ``trionet._apps._workers._signals``). Bad
option values are reported by argparse naming the option
(``argument --upstream: 'foo': expected HOST:PORT``), never as a traceback;
what can only fail once running (a port taken, a worker that cannot start)
ends the command with status 1 and one line on stderr.
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
from collections.abc import Sequence
from functools import partial
from typing import Any, Final, Literal, final

import trio

from .._base._addr import host_port
from .._base._errors import leaves
from .._base._options import DEFAULT_PROXY_PROTOCOL_TRUSTED, AcceptOptions, ConnectOptions
from .._core._connection import Connection
from .._core._stats_page import STATS_INACTIVITY_TIMEOUT
from .._inbound._server import Handler, Server
from .._inbound._signals import stop_on_signals
from .._processor import NetProcessor
from ._cli_args import PROG, bind_host, build_parser
from ._tcp_proxy import TcpProxy
from ._workers._runtime import WorkerContext
from ._workers._signals import forward_signals
from ._workers._supervisor import WorkerStartupError, WorkerSupervisor

__all__ = ["build_parser", "main", "parse"]

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


def _plan(args: argparse.Namespace) -> _Command:
    net = NetProcessor(
        max_connections=args.max_connections,
        throttle=args.throttle,
        per_client_max_connections=args.per_client_max,
    )
    listen = AcceptOptions(
        host=bind_host(args.host),
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
            host=bind_host(args.stats_host),
            port=args.stats_port,
            inactivity_timeout=STATS_INACTIVITY_TIMEOUT,
        )
    plan = _Command(args.command, net, _echo, listen, stats, args.grace, "")
    if args.command == "proxy":
        host, port = args.upstream
        upstream = ConnectOptions(
            connect_timeout=args.connect_timeout,
            inactivity_timeout=args.inactivity_timeout,
            active_timeout=args.active_timeout,
        )
        plan.proxy = plan.handler = TcpProxy(net, host, port, upstream, zero_copy=args.zero_copy)
        plan.suffix = f", forwarding to {host_port(host, port)}"
    if listen.ssl_context is not None:
        plan.suffix += " (TLS)"
    return plan


def _address(listener_address: tuple[object, ...]) -> str:
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


async def _serve_stats(plan: _Command, nursery: trio.Nursery, offset: int = 0) -> Server | None:
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
async def _run(plan: _Command) -> int:
    async with trio.open_nursery() as nursery:
        server = await plan.processor.start_server(nursery, plan.handler, plan.listen)
        for listener in server.listeners:
            _say(plan, f"listening on {_address(listener.address)}{plan.suffix}")
        page = await _serve_stats(plan, nursery)
        servers = [server] if page is None else [server, page]
        await stop_on_signals(*servers, grace=plan.grace, announce=partial(_say, plan))
    _say(plan, _summary(plan))
    return 0


# ------------------------------------------------------- --workers N
# The supervisor (this process) binds the port and starts N interpreters; each
# re-parses the command line from the environment and serves with its own
# processor, so every limit applies per worker.
async def _serve_in_worker(ctx: WorkerContext) -> None:
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


async def _supervise(plan: _Command, workers: int) -> int:
    # An SSLContext cannot be sent to another process: each worker builds its own.
    listen = dataclasses.replace(plan.listen, ssl_context=None)
    supervisor = WorkerSupervisor(_serve_in_worker, listen, workers=workers, grace=plan.grace)
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
                _say(plan, f"listening on {host_port(host, port)}{plan.suffix} ({workers} workers)")
            nursery.start_soon(forward_signals, supervisor, signals, partial(_announce, plan))
    return status


def _announce(plan: _Command, name: str, action: Literal["stop", "kill"]) -> None:
    if action == "stop":
        _say(plan, f"{name}: shutting down (grace {plan.grace:g} s)")
    else:
        _say(plan, f"{name} again: stopping now")


# ------------------------------------------------------------------- main
def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, _Command]:
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
            return f"argument {option}: {text!r}: cannot resolve it ({exc.strerror})"
    return None
