"""How-to: deploying on many cores with worker processes."""

import trionet


async def echo(conn: trionet.Connection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def worker(ctx: trionet.WorkerContext) -> None:
    # Runs in every worker process, each with its own trio loop and processor;
    # ctx.serve makes its limits the fleet's: 10 000 connections in all.
    net = trionet.NetProcessor(max_connections=10_000)
    print(f"worker {ctx.worker_id} of {ctx.workers} serving", flush=True)
    await ctx.serve(net, echo)  # until the supervisor asks it to stop


def main(port: int = 7007, workers: int = 4) -> int:
    # The supervisor binds the port, starts the workers (SO_REUSEPORT where
    # available), restarts any that die, and on SIGTERM/SIGINT stops them
    # gracefully. Returns the exit status.
    listen = trionet.AcceptOptions(host="127.0.0.1", port=port, inactivity_timeout=30)
    return trionet.run_workers(worker, listen, workers=workers, grace=10)


if __name__ == "__main__":
    raise SystemExit(main())
