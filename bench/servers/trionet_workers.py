"""trionet echo server on N worker processes (``trionet.WorkerSupervisor``).

python bench/servers/trionet_workers.py [--port 0] --workers N [--sharing auto|reuseport|inherit]

The supervisor (this process) starts the workers, waits until every one of them
reports serving, and only then prints ``PORT <n>``: the harness measures this
process and its descendants as they are at that moment. Each worker runs the
same echo loop as ``trionet_echo.py`` on its own ``NetProcessor`` (the limit
is per worker). SIGTERM stops the workers gracefully (grace 1 s).
"""

from __future__ import annotations

import argparse
import signal

import trio
from _common import BACKLOG, RECEIVE_SIZE, announce, parse_args, raise_nofile

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some(RECEIVE_SIZE):
        await conn.send_all(data)


async def worker(ctx: trionet.WorkerContext) -> None:
    raise_nofile()
    net = trionet.NetProcessor(max_connections=100_000, throttle="pause")
    await ctx.serve(net, echo)


async def main(args: argparse.Namespace) -> None:
    supervisor = trionet.WorkerSupervisor(
        worker,
        trionet.AcceptOptions(host=args.host, port=args.port, backlog=BACKLOG),
        workers=args.workers,
        grace=1.0,
        sharing=args.sharing,
    )
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await supervisor.wait_ready()
            announce(supervisor.ports[0])
            async for _ in signals:
                supervisor.shutdown()
                break


if __name__ == "__main__":
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--workers", type=int, required=True)
    extra.add_argument("--sharing", default="auto", choices=("auto", "reuseport", "inherit"))
    raise_nofile()
    trio.run(main, parse_args("trionet echo server, N worker processes", extra))
