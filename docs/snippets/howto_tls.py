"""How-to: TLS on a server and on a client."""

import ssl

import trionet


def tls_options(certfile: str, keyfile: str, port: int = 8443) -> trionet.AcceptOptions:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return trionet.AcceptOptions(
        host="127.0.0.1",
        port=port,
        ssl_context=context,
        tls_handshake_timeout=5,  # seconds a client gets to finish its handshake
    )


async def hello(conn: trionet.Connection) -> None:
    # The handshake is done before the handler runs; conn.tls says what was agreed.
    assert conn.tls is not None
    info = f"{conn.tls.version} {conn.tls.alpn_protocol} {conn.tls.server_name}\n"
    await conn.send_all(info.encode())


async def fetch_greeting(net: trionet.NetProcessor, port: int, cafile: str) -> bytes:
    context = ssl.create_default_context(cafile=cafile)
    options = trionet.ConnectOptions(
        ssl_context=context,
        server_hostname="localhost",  # checked against the server's certificate
        alpn_protocols=("http/1.1",),
        connect_timeout=5,  # resolve + TCP + TLS handshake, together
    )
    conn = await net.connect("127.0.0.1", port, options)
    async with conn:
        assert conn.tls is not None and conn.tls.alpn_protocol == "http/1.1"
        return await conn.receive_some()
