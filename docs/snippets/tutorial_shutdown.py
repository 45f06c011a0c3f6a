"""Tutorial, step 4: graceful shutdown on Ctrl-C or SIGTERM."""

import signal

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(port: int = 7007, grace: float = 5.0) -> None:
    net = trionet.NetProcessor()
    options = trionet.AcceptOptions(host="127.0.0.1", port=port)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(net.serve, echo, options)
        print(f"listening on port {server.ports[0]}")
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        # Close the listening socket now; let open connections finish for up
        # to `grace` seconds, then cancel them. serve() returns when all are closed.
        server.shutdown(grace)
        await server.wait_closed()
    print(f"stopped after {net.statistics().total_accepts} connections")


if __name__ == "__main__":
    trio.run(main)
