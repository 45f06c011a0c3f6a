"""TLS for connections (ATS ``SSLNetProcessor``): the handshake, and the
negotiated-session facts a ``Connection`` exposes as ``conn.tls``.

A TLS connection is still one :class:`~trionet.Connection`: a ``trio.SSLStream``
runs over the connection's wire primitive (:class:`_Transport`), and the
connection's public ``receive_some`` / ``send_all`` go through it. So handshake
and record bytes are counted in the processor's ``read_bytes`` / ``write_bytes``
and are activity for the inactivity timeout exactly like plain bytes, while the
connection's own ``bytes_received`` / ``bytes_sent`` stay payload (plaintext)
counts: the transport asks the wire not to count them as payload. What this
module needs from a connection is the :class:`TLSWire` protocol; it does not
import ``Connection``.

trionet uses ``https_compatible=False`` (trio's default): closing a TLS
connection sends ``close_notify``, and a peer that vanishes without one is a
broken connection, not a clean EOF -- the safe choice for protocols that do not
frame their own end of message.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, final

import trio

from .._base._addr import host_port, is_ip, strip_brackets
from .._base._errors import TLSError, named_error

__all__ = ["TLSInfo", "TLSWire"]

logger = logging.getLogger("trionet.tls")


@final
@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated on a TLS connection.

    Attributes:
      version: e.g. ``"TLSv1.3"``.
      cipher: the cipher suite name.
      alpn_protocol: the ALPN protocol agreed on, or None.
      server_name: the SNI name the client sent (server side) or asked for
        (client side), or None.
    """

    version: str | None
    cipher: str | None
    alpn_protocol: str | None
    server_name: str | None

    @classmethod
    def _from_stream(cls, stream: trio.SSLStream[Any], server_name: str | None) -> TLSInfo:
        cipher = stream.cipher()
        return cls(
            version=stream.version(),
            cipher=cipher[0] if cipher else None,
            alpn_protocol=stream.selected_alpn_protocol(),
            server_name=server_name,
        )


class TLSWire(Protocol):
    """What TLS needs from a connection (``trionet.Connection`` is one): its
    wire primitive, which counts the processor's statistics and records
    activity, and the two places the result goes. Private to trionet."""

    async def _wire_receive(
        self, max_bytes: int | None = None, flags: int = 0, payload: bool = True
    ) -> bytes: ...

    async def _wire_send(
        self, data: bytes | bytearray | memoryview, payload: bool = True
    ) -> None: ...

    async def _wait_wire_writable(self) -> None: ...

    def close(self) -> None: ...

    def _start_tls(self, stream: trio.SSLStream[Any]) -> None:
        """Route the connection's I/O through ``stream`` (before the handshake)."""
        ...

    def _tls_established(self, info: TLSInfo) -> None:
        """The handshake completed: ``conn.tls`` reports ``info``."""
        ...


@final
class _Transport(trio.abc.Stream):
    """A connection's wire as a ``trio.abc.Stream``, for ``trio.SSLStream`` to
    run over: every record byte is counted by the wire primitive as wire bytes
    and activity, none as payload (the connection counts the plaintext)."""

    __slots__ = ("_wire",)

    def __init__(self, wire: TLSWire) -> None:
        self._wire = wire

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._wire._wire_receive(max_bytes, 0, False)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._wire._wire_send(data, False)

    async def wait_send_all_might_not_block(self) -> None:
        await self._wire._wait_wire_writable()

    async def aclose(self) -> None:
        self._wire.close()
        await trio.lowlevel.checkpoint()


# ------------------------------------------------------------- server side
# Python's ssl module does not expose, on the server side, which name a client
# asked for: the only place it is seen is the context's sni_callback. trionet
# chains a small recorder in front of whatever callback the user set (which
# still runs, and may still switch contexts). The callback runs synchronously
# inside the handshake step of the task doing the handshake, so a context
# variable set by that task carries the name back -- no global table.
_sni_box: ContextVar[list[str | None] | None] = ContextVar("trionet_sni", default=None)
_SniCallback = Callable[[Any, str | None, ssl.SSLContext], int | None]


def _install_sni_recorder(ctx: ssl.SSLContext) -> None:
    previous: _SniCallback | None = ctx.sni_callback  # type: ignore[assignment]
    if getattr(previous, "_trionet_sni_recorder", False):
        return

    def record_sni(ssl_object: Any, name: str | None, context: ssl.SSLContext) -> int | None:
        box = _sni_box.get()
        if box is not None:
            box[0] = name
        return previous(ssl_object, name, context) if previous is not None else None

    record_sni._trionet_sni_recorder = True  # type: ignore[attr-defined]
    ctx.sni_callback = record_sni


async def tls_server_handshake(conn: TLSWire, ctx: ssl.SSLContext) -> TLSInfo:
    """Wrap an accepted connection in TLS and run the handshake.

    From the start the connection's I/O is encrypted (``conn._start_tls``);
    after it ``conn.tls`` says what was agreed. The caller bounds it with the
    handshake timeout.

    Note: the first call installs an SNI-recording ``sni_callback`` on ``ctx``,
    chained in front of the one already set (see above).

    Raises:
      trio.BrokenResourceError: the handshake failed (its ``__cause__`` is the
        ``ssl.SSLError``) or the peer went away.
    """
    _install_sni_recorder(ctx)
    stream = trio.SSLStream(_Transport(conn), ctx, server_side=True)
    conn._start_tls(stream)
    box: list[str | None] = [None]
    token = _sni_box.set(box)
    try:
        await stream.do_handshake()
    finally:
        _sni_box.reset(token)
    info = TLSInfo._from_stream(stream, box[0])
    conn._tls_established(info)
    return info


# ------------------------------------------------------------- client side
async def tls_client_handshake(
    conn: TLSWire,
    ctx: ssl.SSLContext,
    host: str,
    port: int,
    server_hostname: str | None,
    alpn_protocols: tuple[str, ...] | None,
) -> TLSInfo:
    """Wrap an outbound connection in TLS and run the handshake; the caller
    (``connect()``) runs it inside its connect timeout.

    Args:
      conn: the connected TCP connection.
      ctx: the client context (verification settings are the user's).
      host / port: what ``connect()`` was asked for, for error messages; ``host``
        is also the name verified when ``server_hostname`` is None.
      server_hostname: the name to send as SNI and verify the certificate against.
      alpn_protocols: protocols to offer. Python has no per-connection ALPN, so
        the list is set on ``ctx`` right before the TLS object is created
        (OpenSSL copies it there, with no checkpoint in between), so concurrent
        connects offering different lists on one context each offer their own;
        the context keeps the last list set.

    Raises:
      TLSError: the handshake failed; the message names the server name, the
        reason (for a certificate, OpenSSL's verification message) and ``host:port``;
        ``__cause__`` is the ``ssl.SSLError``.
    """
    name = server_hostname or strip_brackets(host)
    if alpn_protocols is not None:
        ctx.set_alpn_protocols(list(alpn_protocols))
    stream = trio.SSLStream(_Transport(conn), ctx, server_hostname=name)
    conn._start_tls(stream)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise _tls_error(exc, name, host, port) from (exc.__cause__ or exc)
    info = TLSInfo._from_stream(stream, None if is_ip(name) else name)
    conn._tls_established(info)
    return info


def _tls_error(exc: BaseException, name: str, host: str, port: int) -> Exception:
    """``TLS handshake failed for example.com (certificate verify failed:
    Hostname mismatch, ...): 10.0.0.1:443`` -- the name verified, the reason,
    and the target as every ConnectError ends."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        why = f"certificate verify failed: {cause.verify_message.rstrip('.')}"
        code = cause.errno
    elif isinstance(cause, ssl.SSLError):
        why = f"{cause.reason or cause.strerror or cause}"
        code = cause.errno
    else:
        why = f"connection lost during the handshake ({cause or exc})"
        code = None
    target = host_port(host, port)
    return named_error(TLSError, code, f"TLS handshake failed for {name} ({why}): {target}")


def describe_tls_failure(exc: BaseException) -> str:
    """One line saying why a handshake failed, for a debug log without traceback."""
    cause = exc.__cause__ or exc
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return f"{cause.reason}: {cause}"
    return str(cause) or type(cause).__name__
