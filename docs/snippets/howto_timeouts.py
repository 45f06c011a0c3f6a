"""How-to: timeouts and keep-alive eviction."""

import trionet

REQUEST_TIMEOUT = 60.0  # a request in progress may stall this long
KEEP_ALIVE_TIMEOUT = 10.0  # an idle client between requests may wait this long


def processor() -> trionet.NetProcessor:
    # Keep at most 1000 idle keep-alive connections: past that, the ones idle
    # the longest are closed first (timed_out == "evicted").
    return trionet.NetProcessor(max_idle_connections=1000)


async def keep_alive(conn: trionet.Connection) -> None:
    """A line-based request/response protocol with HTTP-style keep-alive."""
    while True:
        # Waiting for the next request: short timeout, and eligible for eviction.
        conn.idle = True
        conn.inactivity_timeout = KEEP_ALIVE_TIMEOUT
        request = await conn.receive_some()
        if not request:
            return
        # Serving a request: not evictable, and a longer timeout.
        conn.idle = False
        conn.inactivity_timeout = REQUEST_TIMEOUT
        await conn.send_all(request.upper())


async def with_deadline(conn: trionet.Connection) -> None:
    # An active timeout bounds a connection's whole life, busy or idle: set it
    # once, e.g. after authentication, and the connection ends an hour later.
    conn.active_timeout = 3600
    while data := await conn.receive_some():
        await conn.send_all(data)
