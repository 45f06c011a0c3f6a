"""A bare trio TCP proxy (the ~30 lines anyone would write), for bench/proxy.py.

python bench/servers/trio_proxy.py --upstream-port N [--port 0]
"""

from __future__ import annotations

import argparse
from functools import partial

import trio
from _common import BACKLOG, RECEIVE_SIZE, announce, parse_args, raise_nofile


async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(RECEIVE_SIZE):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def main(args: argparse.Namespace) -> None:
    async def handle(client: trio.SocketStream) -> None:
        up = await trio.open_tcp_stream(args.host, args.upstream_port)
        async with client, up, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, up)
            nursery.start_soon(pump, up, client)

    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, host=args.host, backlog=BACKLOG), handle, args.port
        )
        announce(listeners[0].socket.getsockname()[1])


if __name__ == "__main__":
    raise_nofile()
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--upstream-port", type=int, required=True)
    trio.run(main, parse_args("bare trio TCP proxy", extra))
