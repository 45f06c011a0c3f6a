"""Steps that run on an inbound connection before its handler: the PROXY
protocol header, then the TLS handshake (ATS: the PROXY protocol on inbound
ports, ``SSLNetVConnection``'s handshake before the session starts).

Both run inside the connection's cancel scope (so its timeouts and a server
shutdown apply) with their own time limits; a failure is counted, logged at
debug level in one line (no traceback: a scanner or a broken client is not an
error of ours), and the connection is closed without reaching the handler.
"""

from __future__ import annotations

import logging
import math
from typing import cast

import trio

from .._base._addr import Network, SocketAddress, in_networks
from .._base._errors import ProxyProtocolError
from .._base._options import AcceptOptions
from .._core._connection import Connection
from .._core._stats import Counters
from .._core._table import ConnectionTable
from .._core._tls import describe_tls_failure, tls_server_handshake
from ._proxy_protocol import ProxyHeader, apply_proxy_header, receive_proxy_header

__all__ = ["has_steps", "prepare_inbound"]

logger = logging.getLogger("trionet.server")


def has_steps(opts: AcceptOptions) -> bool:
    """Does a connection accepted with ``opts`` have steps to run before its
    handler? (Plain TCP pays this test, not a coroutine.)"""
    return opts.proxy_protocol or opts.ssl_context is not None


async def prepare_inbound(conn: Connection, opts: AcceptOptions, table: ConnectionTable) -> bool:
    """Read the PROXY header, then run the TLS handshake, as ``opts`` asks.

    Returns False (the connection closed, the failure counted and logged
    at debug level in one line) if either step failed or timed out.
    """
    counters = table.counters
    if opts.proxy_protocol:
        header = await _read_proxy_header(conn, opts, counters)
        if header is None or not _admit_relayed_client(conn, header, opts, table):
            conn.close()
            return False
    if opts.ssl_context is not None and not await _tls_handshake(conn, opts, counters):
        conn.close()
        return False
    return True


async def _read_proxy_header(
    conn: Connection, opts: AcceptOptions, counters: Counters
) -> ProxyHeader | None:
    # AcceptOptions keeps the networks it was given as a tuple of ipaddress networks.
    trusted = cast(tuple[Network, ...], opts.proxy_protocol_trusted)
    if not _trusted(conn.peer_address, trusted):
        counters.proxy_protocol_errors += 1
        logger.debug("connection #%d: PROXY header from untrusted %r", conn.id, conn.peer_address)
        return None
    why: object = "timed out"
    with trio.move_on_after(opts.proxy_protocol_timeout):
        try:
            header = await receive_proxy_header(conn)
        except (ProxyProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            why = exc
        else:
            apply_proxy_header(conn, header)
            return header
    counters.proxy_protocol_errors += 1
    logger.debug("connection #%d from %r: bad PROXY header: %s", conn.id, conn.peer_address, why)
    return None


def _admit_relayed_client(
    conn: Connection, header: ProxyHeader, opts: AcceptOptions, table: ConnectionTable
) -> bool:
    """The per-client limit, for the client a PROXY header relays (ATS
    ``per_client.max_connections_in`` keyed on the real client, not the
    balancer). Headers without a source (LOCAL health checks) are not counted."""
    source = header.source
    if table.throttle.per_client_max is None or source is None or opts.backdoor:
        return True
    host = source[0]
    if not conn._relay_client(host):  # counted in per_client_connections_throttled_in
        logger.debug("connection #%d: per-client limit reached for %s (relayed)", conn.id, host)
        conn.note_session("throttled")
        return False
    return True


async def _tls_handshake(conn: Connection, opts: AcceptOptions, counters: Counters) -> bool:
    assert opts.ssl_context is not None
    timeout = opts.tls_handshake_timeout
    with trio.move_on_after(math.inf if timeout is None else timeout) as hs_scope:
        try:
            await tls_server_handshake(conn, opts.ssl_context)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            counters.tls_handshake_errors += 1
            logger.debug(
                "connection #%d from %r: TLS handshake failed: %s",
                conn.id,
                conn.remote_address,
                describe_tls_failure(exc),
            )
            return False
        return True
    if hs_scope.cancelled_caught:
        counters.tls_handshake_timeouts += 1
        logger.debug(
            "connection #%d from %r: TLS handshake timed out after %s s",
            conn.id,
            conn.remote_address,
            timeout,
        )
    return False


def _trusted(address: SocketAddress, networks: tuple[Network, ...]) -> bool:
    """Is the socket peer allowed to send a PROXY header? Only if its address
    is in ``networks`` (an IPv4 peer on a dual-stack socket matches either
    spelling of its network, :mod:`trionet._base._addr`). A Unix socket's
    peer always is: who may connect is what the socket file's permissions say
    (``AcceptOptions.mode``/``owner``/``group``), and it has no address."""
    if isinstance(address, str):
        return True
    return in_networks(address[0], networks)
