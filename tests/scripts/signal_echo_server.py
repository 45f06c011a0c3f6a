"""An echo server stopped by ``trionet.stop_on_signals``, for tests/test_signals.py.

Prints "PORT <n>" once listening, each announcement of the helper, whether each
handler finished or was cancelled, and "stopped <open connections>" at the end.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    try:
        while data := await conn.receive_some():
            await conn.send_all(data)
    except trio.Cancelled:
        print("handler cancelled", flush=True)
        raise
    print("handler finished", flush=True)


async def main(grace: float) -> None:
    net = trionet.NetProcessor()
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, echo, trionet.AcceptOptions(host="127.0.0.1"))
        print("PORT", server.ports[0], flush=True)
        await trionet.stop_on_signals(server, grace=grace, announce=partial(print, flush=True))
    print("stopped", net.statistics().connections_currently_open, flush=True)


if __name__ == "__main__":
    trio.run(main, float(sys.argv[1]))
