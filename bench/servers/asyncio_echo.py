"""asyncio-streams echo server, on the default event loop or on uvloop.

python bench/servers/asyncio_echo.py [--port 0] [--loop asyncio|uvloop]
"""

from __future__ import annotations

import argparse
import asyncio

from _common import BACKLOG, RECEIVE_SIZE, announce, parse_args, raise_nofile


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(RECEIVE_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(echo, args.host, args.port, backlog=BACKLOG)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parse_args("asyncio-streams echo server", extra)
    raise_nofile()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
