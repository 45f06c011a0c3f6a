"""Tutorial, step 1: an echo server."""

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    # One task runs this per connection. receive_some() returns b"" once the
    # client has closed its side; returning closes the connection.
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(port: int = 7007) -> None:
    net = trionet.NetProcessor()
    options = trionet.AcceptOptions(host="127.0.0.1", port=port)
    await net.serve(echo, options)  # runs until cancelled


if __name__ == "__main__":
    trio.run(main)
