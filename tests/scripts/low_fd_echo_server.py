"""An echo server with a tiny RLIMIT_NOFILE, for the EMFILE test.

Prints "PORT <n>" once listening; on stdin line "stats" prints the statistics as
JSON; exits on EOF of stdin.
"""

from __future__ import annotations

import json
import logging
import resource
import sys

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(limit: int) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    net = trionet.NetProcessor(accept_error_pause=0.05)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, echo, trionet.AcceptOptions(host="127.0.0.1"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        print("PORT", server.ports[0], flush=True)
        stdin = trio.lowlevel.FdStream(0)
        buf = b""
        while chunk := await stdin.receive_some():
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip() == b"stats":
                    print(json.dumps(net.statistics().as_records()), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
