"""An echo server on trionet's native API.

    python -m trionet.examples.echo_server --port 7007 --max-connections 1000 \\
        --inactivity-timeout 30

Prints where it listens; Ctrl-C (or SIGTERM) stops it gracefully: the port
closes at once, connections get ``--grace`` seconds to finish, and a second
Ctrl-C stops at once (``trionet.stop_on_signals``). Exits 0 either way.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(args: argparse.Namespace) -> int:
    net = trionet.NetProcessor(max_connections=args.max_connections)
    opts = trionet.AcceptOptions(
        host=args.host, port=args.port, inactivity_timeout=args.inactivity_timeout
    )
    async with trio.open_nursery() as nursery:
        try:
            server = await net.start_server(nursery, echo, opts)
        except OSError as exc:  # the port is taken, the address is not ours...
            print(f"echo_server: {exc}", file=sys.stderr, flush=True)
            return 1
        for listener in server.listeners:
            print(
                f"echo server listening on {listener.address[0]} port {listener.port}", flush=True
            )
        await trionet.stop_on_signals(server, grace=args.grace, announce=partial(print, flush=True))
    stats = net.statistics()
    print(f"stopped after {stats.total_accepts} connections", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Echo server on trionet (native API).")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7007, help="port (default 7007; 0 = any)")
    p.add_argument("--max-connections", type=int, default=None, help="connection limit")
    p.add_argument(
        "--inactivity-timeout", type=float, default=None, help="seconds of idle before closing"
    )
    p.add_argument("--grace", type=float, default=5.0, help="shutdown grace seconds (default 5)")
    return p.parse_args(argv)


def run() -> None:
    """Run from the command line: exit with the program's status, or with one
    line naming a bad option value (no traceback)."""
    try:
        sys.exit(trio.run(main, parse_args()))
    except ValueError as exc:  # bad option values name themselves
        sys.exit(f"echo_server: {exc}")


if __name__ == "__main__":
    run()
