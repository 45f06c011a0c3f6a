"""How-to: connecting."""

import trio

import trionet

# One resolver shared by every connect: answers are reused for 60 s.
RESOLVER = trionet.CachingResolver(ttl=60, max_entries=10_000)


def connect_options() -> trionet.ConnectOptions:
    return trionet.ConnectOptions(
        connect_timeout=5,  # resolution + every attempt, together
        happy_eyeballs_delay=0.25,  # start the next address after 250 ms (RFC 8305)
        resolver=RESOLVER,
        inactivity_timeout=60,  # then the usual timeouts apply to the connection
    )


async def fetch_greeting(net: trionet.NetProcessor, host: str, port: int) -> bytes | None:
    try:
        conn = await net.connect(host, port, connect_options())
    except trionet.ConnectTimeoutError as exc:
        print(exc)  # "connection timed out after 5000 ms: host:port"
        return None
    except trionet.ResolveError as exc:
        print(exc)  # the name does not resolve
        return None
    except trionet.ThrottledError:
        return None  # this processor is at max_connections
    except trionet.ConnectError as exc:
        print(exc, exc.errno)  # refused, unreachable...: errno kept
        return None
    async with conn:
        return await conn.receive_some()


async def first_to_answer(net: trionet.NetProcessor, port: int, hosts: list[str]) -> str | None:
    # Cancelling a connect closes its socket at any stage -- resolution
    # included -- so racing connects and cancelling the losers leaks nothing.
    winner: list[str] = []
    async with trio.open_nursery() as nursery:

        async def attempt(host: str) -> None:
            try:
                conn = await net.connect(host, port, connect_options())
            except trionet.ConnectError:
                return  # this one lost
            async with conn:
                winner.append(host)
                nursery.cancel_scope.cancel()

        for host in hosts:
            nursery.start_soon(attempt, host)
    return winner[0] if winner else None
