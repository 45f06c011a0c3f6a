"""How-to: statistics and the stats page."""

import prometheus_client
import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(port: int = 7007, stats_port: int = 9100) -> None:
    net = trionet.NetProcessor(max_connections=1000)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.serve, echo, trionet.AcceptOptions(host="127.0.0.1", port=port))
        # http://127.0.0.1:9100/stats (JSON) and /metrics (Prometheus); the
        # page binds to loopback unless given another host.
        await nursery.start(net.serve_stats, stats_port)


def print_summary(net: trionet.NetProcessor) -> None:
    stats = net.statistics()  # a frozen snapshot
    print(f"{stats.connections_currently_open} open, {stats.total_accepts} accepted")
    for record, value in stats.as_records().items():
        if value:
            print(f"{record} = {value}")


def export_with_my_metrics(net: trionet.NetProcessor) -> None:
    # An application that already exposes Prometheus metrics adds trionet's
    # to its own registry instead of running the stats page.
    prometheus_client.REGISTRY.register(trionet.StatsCollector(net.statistics))
