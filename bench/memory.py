"""Where an idle connection's bytes go: a tracemalloc diff per source line.

    python -m bench.memory                      # trio, trionet, trionet-timeout; 2000 conns
    python -m bench.memory trionet --conns 5000 --top 30

The idle scenario of ``python -m bench`` reports RSS bytes per connection; this
explains the figure. It runs the server in this process (the same echo loops as
``bench/servers/``) under ``tracemalloc``, opens ``--conns`` blocking client
sockets to it, and prints the Python-heap growth per connection, split by the
source line that allocated it (client-side sockets are filtered out). The total
is a little below the RSS figure (RSS also counts allocator slack and pages).
"""

from __future__ import annotations

import argparse
import gc
import socket
import tracemalloc
from functools import partial

import trio

import trionet

RECEIVE_SIZE = 65536
KINDS = ("trio", "trionet", "trionet-timeout")
# Handlers started so far: the snapshot is taken once every connection opened
# has its handler waiting in receive (a busy machine accepts late).
_started = [0]


async def _trio_echo(stream: trio.SocketStream) -> None:
    _started[0] += 1
    try:
        while data := await stream.receive_some(RECEIVE_SIZE):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def _trionet_echo(conn: trionet.Connection) -> None:
    _started[0] += 1
    while data := await conn.receive_some(RECEIVE_SIZE):
        await conn.send_all(data)


async def _start(kind: str, nursery: trio.Nursery) -> int:
    """Start the ``kind`` echo server in ``nursery``; return its port."""
    if kind == "trio":
        serve = partial(trio.serve_tcp, host="127.0.0.1", backlog=1024)
        listeners: list[trio.SocketListener] = await nursery.start(serve, _trio_echo, 0)
        port: int = listeners[0].socket.getsockname()[1]
        return port
    net = trionet.NetProcessor(max_connections=100_000)
    timeout = 60.0 if kind == "trionet-timeout" else None
    opts = trionet.AcceptOptions(host="127.0.0.1", port=0, inactivity_timeout=timeout)
    server: trionet.Server = await nursery.start(net.serve, _trionet_echo, opts)
    return server.ports[0]


async def _open(port: int, count: int, into: list[socket.socket]) -> None:
    """Open ``count`` connections, letting the server accept every 200."""
    for i in range(count):
        into.append(socket.create_connection(("127.0.0.1", port)))
        if i % 200 == 199:
            await trio.sleep(0.05)
    for _ in range(600):  # at most 30 s for the server to accept them all
        if _started[0] >= len(into):
            break
        await trio.sleep(0.05)
    else:
        raise RuntimeError(f"{_started[0]} of {len(into)} connections accepted after 30 s")
    await trio.sleep(0.5)


def _snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, socket.__file__),  # the client sockets
            tracemalloc.Filter(False, __file__),
            tracemalloc.Filter(False, tracemalloc.__file__),
        ]
    )


def measure(kind: str, conns: int, top: int) -> tuple[float, list[str]]:
    """Per-connection heap growth of the ``kind`` server and its ``top`` source lines."""
    result: tuple[float, list[str]] = (0.0, [])

    async def main() -> None:
        nonlocal result
        _started[0] = 0
        clients: list[socket.socket] = []
        try:
            async with trio.open_nursery() as nursery:
                port = await _start(kind, nursery)
                await _open(port, 10, clients)  # warm every code path first
                before = _snapshot()
                await _open(port, conns, clients)
                stats = _snapshot().compare_to(before, "lineno")
                nursery.cancel_scope.cancel()
        finally:
            for client in clients:
                client.close()
        total = sum(s.size_diff for s in stats) / conns
        lines = [
            f"{s.size_diff / conns:7.0f} B {s.count_diff / conns:5.2f} obj  "
            f"{_where(s.traceback[0])}"
            for s in stats[:top]
        ]
        result = (total, lines)

    tracemalloc.start()
    try:
        trio.run(main)
    finally:
        tracemalloc.stop()
    return result


def _where(frame: tracemalloc.Frame) -> str:
    """``file:line`` with the path shortened to the package (``trio/_socket.py:476``)."""
    name = frame.filename
    if "site-packages/" in name:
        name = name.rsplit("site-packages/", 1)[1]
    elif "/trionet/" in name:
        name = "trionet/" + name.rsplit("/trionet/", 1)[1]
    return f"{name}:{frame.lineno}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    p.add_argument("kinds", nargs="*", help=f"servers to measure, of {KINDS} (default: all)")
    p.add_argument("--conns", type=int, default=2000, help="idle connections (default 2000)")
    p.add_argument("--top", type=int, default=20, help="source lines to show (default 20)")
    args = p.parse_args(argv)
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or args.conns < 1 or args.top < 0:
        p.error(f"kinds must be among {KINDS} (got {unknown}); --conns >= 1; --top >= 0")
    for kind in args.kinds or KINDS:
        total, lines = measure(kind, args.conns, args.top)
        print(f"{kind}: {total:,.0f} bytes of Python heap per idle connection ({args.conns})")
        print("\n".join(lines))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
