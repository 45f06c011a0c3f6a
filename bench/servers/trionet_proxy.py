"""trionet's TcpProxy (splice(2) on by default), for bench/proxy.py.

python bench/servers/trionet_proxy.py --upstream-port N [--port 0] [--no-zero-copy] [--chunk N]
"""

from __future__ import annotations

import argparse

import trio
from _common import BACKLOG, announce, parse_args, raise_nofile

import trionet


async def main(args: argparse.Namespace) -> None:
    # The CLI's defaults: a connection cap that waits (pause), statistics on.
    net = trionet.NetProcessor(max_connections=100000, throttle="pause")
    proxy = trionet.TcpProxy(
        net, args.host, args.upstream_port, chunk=args.chunk, zero_copy=args.zero_copy
    )
    opts = trionet.AcceptOptions(host=args.host, port=args.port, backlog=BACKLOG)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, proxy, opts)
        announce(server.ports[0])


if __name__ == "__main__":
    raise_nofile()
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--upstream-port", type=int, required=True)
    extra.add_argument("--no-zero-copy", dest="zero_copy", action="store_false")
    extra.add_argument("--chunk", type=int, default=65536, help="TcpProxy(chunk=...)")
    trio.run(main, parse_args("trionet TcpProxy", extra))
