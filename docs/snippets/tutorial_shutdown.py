"""Tutorial, step 4: graceful shutdown on Ctrl-C or SIGTERM."""

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(port: int = 7007, grace: float = 5.0) -> None:
    net = trionet.NetProcessor()
    options = trionet.AcceptOptions(host="127.0.0.1", port=port)
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, echo, options)
        print(f"listening on port {server.ports[0]}")
        # The first Ctrl-C or SIGTERM closes the listening socket and gives open
        # connections `grace` seconds to finish; a second one cancels them.
        # Returns once every connection is closed.
        await trionet.stop_on_signals(server, grace=grace)
    print(f"stopped after {net.statistics().total_accepts} connections")


if __name__ == "__main__":
    trio.run(main)
