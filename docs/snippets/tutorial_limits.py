"""Tutorial, step 2: limits and timeouts."""

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


def make_processor() -> trionet.NetProcessor:
    # At most 1000 open connections in all and 10 per client address. At the
    # limit, trionet stops calling accept(): new clients wait in the kernel's
    # backlog until a connection closes ("pause"; throttle="close" drops them).
    return trionet.NetProcessor(max_connections=1000, per_client_max_connections=10)


def accept_options(port: int = 7007) -> trionet.AcceptOptions:
    # A client that sends nothing and reads nothing for 30 s is disconnected;
    # no connection lives longer than an hour, busy or not.
    return trionet.AcceptOptions(
        host="127.0.0.1", port=port, inactivity_timeout=30, active_timeout=3600
    )


async def main(port: int = 7007) -> None:
    net = make_processor()
    await net.serve(echo, accept_options(port))


if __name__ == "__main__":
    trio.run(main)
