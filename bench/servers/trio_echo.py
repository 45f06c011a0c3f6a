"""Bare ``trio.serve_tcp`` echo server (the baseline every ratio is taken against).

python bench/servers/trio_echo.py [--port 0]
"""

from __future__ import annotations

import argparse
from functools import partial

import trio
from _common import BACKLOG, RECEIVE_SIZE, announce, parse_args, raise_nofile


async def echo(stream: trio.SocketStream) -> None:
    # serve_tcp lets a handler's exception crash the server; trionet logs a
    # reset at debug level and goes on, so do the same here.
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def main(args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:
        listeners: list[trio.SocketListener] = await nursery.start(
            partial(trio.serve_tcp, host=args.host, backlog=BACKLOG), echo, args.port
        )
        announce(listeners[0].socket.getsockname()[1])


if __name__ == "__main__":
    raise_nofile()
    trio.run(main, parse_args("bare trio.serve_tcp echo server"))
