"""Tutorial, step 3: a client."""

import sys

import trio

import trionet


async def ask(net: trionet.NetProcessor, host: str, port: int, message: bytes) -> bytes:
    # connect() returns once the TCP handshake is done; the connect timeout
    # covers name resolution and every connection attempt together.
    options = trionet.ConnectOptions(connect_timeout=5, inactivity_timeout=30)
    conn = await net.connect(host, port, options)
    async with conn:  # closed (and its slot freed) however the block ends
        await conn.send_all(message)
        await conn.send_eof()  # "that's all": the echo server then closes its side
        reply = b""
        while chunk := await conn.receive_some():
            reply += chunk
    return reply


async def main(host: str = "127.0.0.1", port: int = 7007) -> int:
    net = trionet.NetProcessor()
    try:
        reply = await ask(net, host, port, b"hello, trionet")
    except trionet.ConnectError as exc:  # refused, unreachable, timed out...
        print(f"could not connect: {exc}", file=sys.stderr)
        return 1
    print(reply.decode())
    return 0


if __name__ == "__main__":
    sys.exit(trio.run(main))
