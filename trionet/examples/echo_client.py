"""An echo client on trionet's native API: a port of Netty's EchoClient.

    python -m trionet.examples.echo_server --port 7007 &
    python -m trionet.examples.echo_client --port 7007 --count 1000
    python -m trionet.examples.echo_client --port 7007 --duration 5 --size 4096

Netty's ``EchoClientHandler`` sends one ``SIZE``-byte message when the channel
becomes active (``channelActive``) and writes back whatever it reads
(``channelRead``), so the message circulates between client and server. Here
``net.connect()`` returning is ``channelActive`` and the receive loop is
``channelRead``. The client stops after ``--count`` round trips (``count *
size`` bytes echoed) or after ``--duration`` seconds, checks that every byte
came back in order, and prints what it did.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import trio

import trionet


@dataclass
class Tally:
    sent: int = 0
    received: int = 0
    corrupt_at: int | None = None  # offset of the first byte that came back wrong


def pattern(size: int) -> bytes:
    """Netty's first message: bytes 0, 1, 2, ... (mod 256)."""
    return bytes(i % 256 for i in range(size))


async def echo_loop(
    conn: trionet.Connection, message: bytes, limit: int | None, tally: Tally
) -> None:
    """Send ``message``, then write back what arrives until ``limit`` bytes
    (if given) went both ways or the server closes. Counts into ``tally`` as
    it goes, so a caller that cancels it (``--duration``) still has the counts."""
    size = len(message)
    first = message if limit is None else message[:limit]
    await conn.send_all(first)  # channelActive
    tally.sent += len(first)
    while limit is None or tally.received < limit:
        data = await conn.receive_some()
        if not data:
            break  # the server closed
        # The stream that comes back is the message repeated: check each byte.
        if tally.corrupt_at is None:
            for i, byte in enumerate(data):
                if byte != message[(tally.received + i) % size]:
                    tally.corrupt_at = tally.received + i
                    break
        tally.received += len(data)
        # channelRead: write it back, but not beyond the limit.
        back = data if limit is None else data[: max(0, limit - tally.sent)]
        if back:
            await conn.send_all(back)
            tally.sent += len(back)


async def main(args: argparse.Namespace) -> int:
    net = trionet.NetProcessor()
    opts = trionet.ConnectOptions(connect_timeout=args.connect_timeout)
    start = trio.current_time()
    try:
        conn = await net.connect(args.host, args.port, opts)
    except trionet.ConnectError as exc:
        print(f"echo_client: {exc}", file=sys.stderr, flush=True)
        return 1
    connected = trio.current_time()
    local = conn.local_address
    print(
        f"connected to {args.host} port {args.port} from {local[0]} port {local[1]} "
        f"in {(connected - start) * 1000:.1f} ms",
        flush=True,
    )
    limit = None if args.count is None else args.count * args.size
    tally = Tally()
    async with conn:
        with trio.move_on_after(args.duration if args.duration is not None else float("inf")):
            await echo_loop(conn, pattern(args.size), limit, tally)
    elapsed = trio.current_time() - connected
    print(
        f"echoed {tally.received} bytes in {tally.received // args.size} round trips "
        f"of {args.size} bytes in {elapsed:.3f} s",
        flush=True,
    )
    if tally.corrupt_at is not None:
        print(f"echo_client: byte {tally.corrupt_at} came back wrong", file=sys.stderr)
        return 1
    if limit is not None and tally.received < limit:
        print(
            f"echo_client: server closed after {tally.received} of {limit} bytes", file=sys.stderr
        )
        return 1
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Echo client on trionet (port of Netty's EchoClient).")
    p.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7007, help="server port (default 7007)")
    p.add_argument("--size", type=int, default=256, help="message size in bytes (default 256)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--count", type=int, default=None, help="round trips to make (default 100)")
    stop.add_argument("--duration", type=float, default=None, help="seconds to run instead")
    p.add_argument(
        "--connect-timeout", type=float, default=30.0, help="connect timeout seconds (default 30)"
    )
    args = p.parse_args(argv)
    if args.size < 1:
        p.error(f"--size {args.size}: must be >= 1")
    if args.count is not None and args.count < 1:
        p.error(f"--count {args.count}: must be >= 1")
    if args.duration is not None and not args.duration > 0:
        p.error(f"--duration {args.duration}: must be > 0")
    if args.count is None and args.duration is None:
        args.count = 100
    return args


def run() -> None:
    """Run from the command line: exit with the program's status, or with one
    line naming a bad option value (no traceback)."""
    try:
        sys.exit(trio.run(main, parse_args()))
    except ValueError as exc:  # bad option values name themselves
        sys.exit(f"echo_client: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
