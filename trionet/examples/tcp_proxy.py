"""A TCP proxy on trionet's native API -- the job ATS's Net module exists for.

    python -m trionet.examples.tcp_proxy --port 8080 --upstream 127.0.0.1:7007 \\
        --max-connections 1000 --inactivity-timeout 30 --connect-timeout 5

For each client connection it connects to the upstream server
(``NetProcessor.connect``, with a connect timeout) and pumps bytes both ways
(``trionet.splice``: backpressure -- one chunk in flight per direction -- and
half-close: an EOF from one side is forwarded with ``send_eof`` while the other
direction keeps flowing). Client and upstream connections share one processor,
so ``--max-connections`` counts both and the throttle applies to the pair;
``--inactivity-timeout`` applies on both sides, and either side timing out ends
the session. Ctrl-C (or SIGTERM) stops gracefully and prints the statistics;
a second one stops at once, cutting the sessions still open (exit status 0
either way).

``trionet proxy`` is the same proxy (both use ``trionet.TcpProxy``);
``trionet.examples.ats_tunnel`` is this program written against the iocore shim.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio

import trionet


def make_proxy(args: argparse.Namespace) -> tuple[trionet.NetProcessor, trionet.TcpProxy]:
    net = trionet.NetProcessor(max_connections=args.max_connections, throttle=args.throttle)
    host, port = args.upstream
    upstream = trionet.ConnectOptions(
        connect_timeout=args.connect_timeout, inactivity_timeout=args.inactivity_timeout
    )
    return net, trionet.TcpProxy(net, host, port, upstream)


def print_statistics(net: trionet.NetProcessor, proxy: trionet.TcpProxy) -> None:
    p, n = proxy.statistics(), net.statistics()
    print(
        f"sessions: {p.sessions}, upstream failures: {p.upstream_failures} "
        f"({p.upstream_timeouts} timed out), resets: {p.resets}, timeouts: {p.timeouts}",
        flush=True,
    )
    print(
        f"bytes read: {n.read_bytes}, written: {n.write_bytes}, "
        f"throttled: {n.connections_throttled_in + n.connections_throttled_out}, "
        f"open now: {n.connections_currently_open}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> int:
    net, proxy = make_proxy(args)
    listen = trionet.AcceptOptions(
        host=args.host, port=args.port, inactivity_timeout=args.inactivity_timeout
    )
    async with trio.open_nursery() as nursery:
        try:
            server = await net.start_server(nursery, proxy, listen)
        except OSError as exc:  # the port is taken, the address is not ours...
            print(f"tcp_proxy: {exc}", file=sys.stderr, flush=True)
            return 1
        for listener in server.listeners:
            where = f"{listener.address[0]} port {listener.port}"
            print(f"tcp proxy listening on {where}, upstream {proxy.host} port {proxy.port}")
        sys.stdout.flush()
        await trionet.stop_on_signals(server, grace=args.grace, announce=partial(print, flush=True))
    print_statistics(net, proxy)
    return 0


def upstream(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="TCP proxy on trionet (native API).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any)")
    p.add_argument("--upstream", type=upstream, required=True, metavar="HOST:PORT")
    p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--max-connections", type=int, default=None, help="client + upstream")
    p.add_argument("--throttle", choices=("pause", "close"), default="pause")
    p.add_argument("--inactivity-timeout", type=float, default=None, help="seconds, both sides")
    p.add_argument("--grace", type=float, default=5.0, help="shutdown grace seconds (default 5)")
    return p.parse_args(argv)


def run() -> None:
    """Run from the command line: exit with the program's status, or with one
    line naming a bad option value (no traceback)."""
    try:
        sys.exit(trio.run(main, parse_args()))
    except ValueError as exc:  # bad option values name themselves
        sys.exit(f"tcp_proxy: {exc}")


if __name__ == "__main__":
    run()
