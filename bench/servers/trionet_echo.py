"""trionet echo server: NetProcessor with the throttle on (statistics are always on).

python bench/servers/trionet_echo.py [--port 0] [--max-connections 100000]
                                     [--inactivity-timeout SECONDS]
                                     [--schedule-interval N]
"""

from __future__ import annotations

import argparse

import trio
from _common import BACKLOG, RECEIVE_SIZE, announce, parse_args, raise_nofile

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some(RECEIVE_SIZE):
        await conn.send_all(data)


async def main(args: argparse.Namespace) -> None:
    # --schedule-interval only when given: the script also runs another
    # checkout's trionet (bench.callgrind --baseline-tree), which may predate it.
    more = {} if args.schedule_interval is None else {"schedule_interval": args.schedule_interval}
    net = trionet.NetProcessor(max_connections=args.max_connections, throttle="pause", **more)
    opts = trionet.AcceptOptions(
        host=args.host,
        port=args.port,
        backlog=BACKLOG,
        inactivity_timeout=args.inactivity_timeout,
    )
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(net.serve, echo, opts)
        announce(server.ports[0])


if __name__ == "__main__":
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--max-connections", type=int, default=100_000)
    extra.add_argument("--inactivity-timeout", type=float, default=None)
    extra.add_argument("--schedule-interval", type=int, default=None)
    raise_nofile()
    trio.run(main, parse_args("trionet echo server", extra))
