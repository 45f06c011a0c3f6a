"""How-to: a TCP proxy."""

from collections.abc import Awaitable, Callable

import trio

import trionet

Handler = Callable[[trionet.Connection], Awaitable[None]]


async def main(port: int = 8080, upstream: tuple[str, int] = ("127.0.0.1", 7007)) -> None:
    # Client and upstream connections share one processor: max_connections
    # counts both, and each side has its own inactivity timeout.
    net = trionet.NetProcessor(max_connections=2000)
    to_upstream = trionet.ConnectOptions(connect_timeout=5, inactivity_timeout=60)
    proxy = trionet.TcpProxy(net, *upstream, to_upstream)
    listen = trionet.AcceptOptions(host="127.0.0.1", port=port, inactivity_timeout=60)
    await net.serve(proxy, listen)


def make_tagging_proxy(net: trionet.NetProcessor, host: str, port: int) -> Handler:
    # The same thing written out, with a twist: tell the upstream who the
    # client is before splicing the two connections.
    async def handler(client: trionet.Connection) -> None:
        try:
            upstream = await net.connect(host, port, trionet.ConnectOptions(connect_timeout=5))
        except trionet.ConnectError:
            return  # closes the client connection
        async with upstream:
            with upstream.enforce_timeouts():  # the upstream's timeouts end the session too
                await upstream.send_all(f"client {client.remote_address[0]}\n".encode())
                await trionet.splice(client, upstream)

    return handler


def make_failover_proxy(
    net: trionet.NetProcessor, backends: list[tuple[str, int]]
) -> trionet.TcpProxy:
    # Several backends: sessions go to the one with the fewest open sessions,
    # a failed connect moves on to the next within the 6 s, and each backend
    # learns the client's address from a PROXY v2 header.
    to_backends = trionet.ConnectOptions(connect_timeout=6, send_proxy_protocol=2)
    return trionet.TcpProxy(
        net, backends, options=to_backends, balance="least-conn", max_fails=3, fail_backoff=10
    )


if __name__ == "__main__":
    trio.run(main)


def unix_listener(path: str) -> trionet.AcceptOptions:
    # Clients on this host reach the proxy through a socket file that only the
    # file's group may open; a stale file left by a crash is replaced.
    return trionet.AcceptOptions(path=path, mode=0o660, inactivity_timeout=60)


def unix_upstream(net: trionet.NetProcessor, path: str) -> trionet.TcpProxy:
    # An upstream that listens on a Unix socket (an application server's).
    return trionet.TcpProxy(net, f"unix:{path}", 0)
