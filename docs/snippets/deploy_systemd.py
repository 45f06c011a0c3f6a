"""How-to: systemd socket activation (and PROXY protocol behind a load balancer)."""

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    # Behind HAProxy with PROXY protocol, remote_address is the real client.
    print(f"client {conn.remote_address[0]} port {conn.remote_address[1]}", flush=True)
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main() -> None:
    # The sockets systemd opened for us (LISTEN_FDS): no bind, no privileges,
    # and connections queue in the kernel while the service restarts.
    listeners = trionet.inherited_listeners(
        inactivity_timeout=30,
        proxy_protocol=True,  # every connection starts with a PROXY v1/v2 header...
        proxy_protocol_trusted=["127.0.0.0/8", "10.0.0.0/8"],  # ...sent by these hosts only
    )
    if not listeners:
        raise SystemExit("no sockets passed: run me from a .socket unit")
    net = trionet.NetProcessor(max_connections=10_000)
    async with trio.open_nursery() as nursery:
        server = await net.start_server(nursery, echo, *listeners)
        print(f"serving on port {server.ports[0]}", flush=True)
        # systemctl stop sends SIGTERM: 10 s for open connections to finish.
        await trionet.stop_on_signals(server, grace=10)


if __name__ == "__main__":
    trio.run(main)
