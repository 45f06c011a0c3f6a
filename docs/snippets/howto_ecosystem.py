"""How-to: trionet under other trio servers."""

import contextlib

import h11
import trio
import trio_websocket

import trionet


# --------------------------------------------------- listeners for trio servers
async def echo(conn: trionet.Connection) -> None:
    # trio.serve_listeners runs this task, not trionet: enforce_timeouts()
    # makes the connection's timeouts cancel it quietly, as serve() would.
    with conn.enforce_timeouts():
        while data := await conn.receive_some():
            await conn.send_all(data)


async def serve_with_trio(net: trionet.NetProcessor, port: int) -> None:
    options = trionet.AcceptOptions(port=port, inactivity_timeout=30)
    listeners = await net.open_listeners(options)
    await trio.serve_listeners(echo, listeners)


async def websocket_echo(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    with contextlib.suppress(trio_websocket.ConnectionClosed):
        while True:
            await ws.send_message(await ws.get_message())


async def serve_websockets(net: trionet.NetProcessor, port: int) -> None:
    listeners = await net.open_listeners(trionet.AcceptOptions(port=port))
    # WebSocketServer's annotation names trio's own listener classes only.
    server = trio_websocket.WebSocketServer(websocket_echo, listeners)  # type: ignore[arg-type]
    await server.run()


# ------------------------------------------------- protocols on a Connection
async def websocket_handler(conn: trionet.Connection) -> None:
    # Run by net.serve(): the WebSocket runs on the Connection, under its
    # timeouts and the processor's limits and statistics.
    async with trio.open_nursery() as nursery:
        request = await trio_websocket.wrap_server_stream(nursery, conn)
        ws = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                await ws.send_message(await ws.get_message())


async def http_handler(conn: trionet.Connection) -> None:
    """HTTP/1.1 with keep-alive: h11 parses, the Connection carries the bytes."""
    http = h11.Connection(h11.SERVER)
    while True:
        try:
            event = http.next_event()
        except h11.RemoteProtocolError:
            return  # a malformed request: close the connection
        if event is h11.NEED_DATA:
            # Between requests the connection may be evicted (max_idle_connections).
            conn.idle = http.their_state is h11.IDLE
            http.receive_data(await conn.receive_some())
        elif isinstance(event, h11.EndOfMessage):  # a whole request: answer it
            conn.idle = False
            body = b"hello from trionet\n"
            response = h11.Response(status_code=200, headers=[("content-length", str(len(body)))])
            for part in (response, h11.Data(data=body), h11.EndOfMessage()):
                await conn.send_all(http.send(part) or b"")
            if http.our_state is h11.MUST_CLOSE:
                return
            http.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed):
            return
