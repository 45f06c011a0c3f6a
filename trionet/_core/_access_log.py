"""The session log (HAProxy's ``option tcplog``, ATS's access log): one
record per closed inbound connection, on logger ``trionet.access``.

Turned on with ``NetProcessor(access_log=True)`` (the ``trionet`` command
does by default). Each record is an INFO record whose structured fields are
in the record (``extra``), so a JSON formatter carries them as they are and
a text formatter shows them as one line::

    203.0.113.7:51000 -> :8080 #12 eof 0.532s in=17 out=12 upstream=10.0.0.5:80

Fields: ``client`` (the real client: the PROXY header's source when there
was one), ``listen_port``, ``connection`` (the connection's id, as other log
lines name it: ``connection #12``), ``duration`` (seconds), ``bytes_in`` /
``bytes_out`` (payload received from / sent to the client), ``end`` (how it
ended, :data:`SESSION_ENDS`), and what the handler added with
:meth:`Connection.note_session` (a proxy session's ``upstream``).

Who knows which ending (each is decided once, where the record is written):

* the accept loop refuses a client at a connection limit (``throttled``) or
  a connection-rate limit (``rate_limited``), with no connection behind it:
  ``connection`` is None, duration and bytes 0;
* the connection itself: a timeout ended it (``timed_out``: ``inactivity``,
  ``active``, ``evicted``), an I/O call found it reset (``broken``);
* the server's connection task: the handler raised (``handler_error``), the
  shutdown's grace deadline cut it (``shutdown``) or ``serve()`` was
  cancelled (``cancelled``), the PROXY header or TLS handshake failed
  (``handshake_failed``);
* the handler, through :meth:`Connection.note_session`: a proxy whose
  upstream connect failed (``upstream_failed``, ``upstream_timeout``) or
  whose session was reset on the upstream's side (``reset``);
* otherwise the handler returned: ``eof``.

Off (the library's default), it costs the connection task one test of a
bool: no record is built.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Literal, cast, get_args

import trio

from .._base._addr import SocketAddress, host_port

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "RESERVED_FIELDS",
    "address_text",
    "SESSION_ENDS",
    "SessionEnd",
    "Outcome",
    "log_refused",
    "log_session",
    "session_end",
]

logger = logging.getLogger("trionet.access")

SessionEnd = Literal[
    "eof",
    "reset",
    "inactivity",
    "active",
    "evicted",
    "throttled",
    "rate_limited",
    "handler_error",
    "shutdown",
    "cancelled",
    "handshake_failed",
    "upstream_failed",
    "upstream_timeout",
]
SESSION_ENDS: Final[tuple[str, ...]] = get_args(SessionEnd)

# Names note_session refuses: the fields every record has, and the
# attributes of a LogRecord (``extra`` cannot replace them: logging raises).
RESERVED_FIELDS: Final = (
    frozenset({"client", "listen_port", "connection", "duration", "bytes_in", "bytes_out"})
    | frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
    | {"message", "asctime"}
)

Outcome = Literal["returned", "handler_error", "shutdown", "cancelled", "handshake_failed"]
"""How the server's connection task ended (what only it knows)."""

# The record's message is formatted from its own fields (a mapping argument),
# so the text formatter knows they are shown and does not repeat them.
_LINE: Final = (
    "%(client)s -> :%(listen_port)d #%(connection)s %(end)s %(duration).3fs "
    "in=%(bytes_in)d out=%(bytes_out)d"
)
_UPSTREAM: Final = " upstream=%(upstream)s"
_ATTEMPTS: Final = " attempts=%(attempts)s"  # shown after a failover (more than one)
_REFUSED: Final = "%(client)s -> :%(listen_port)d #- %(end)s 0.000s in=0 out=0"


def session_end(conn: Connection, outcome: Outcome) -> SessionEnd:
    """How ``conn``'s session ended, from what the task knows (``outcome``),
    what the handler noted, and the connection's own state, in that order of
    precedence (a handler's exception first: it is a bug to look at)."""
    if outcome == "handler_error":
        return outcome
    noted = conn.session_notes.get("end")
    if noted is not None:
        return cast(SessionEnd, noted)  # note_session checked it
    if conn.timed_out is not None:
        return conn.timed_out
    if outcome != "returned":
        return outcome
    return "reset" if conn.broken else "eof"


def address_text(address: SocketAddress | str | bytes) -> str:
    """An address for a log line: ``host:port`` (``[::1]:80``) for an IP
    socket's, the path for a Unix socket's (``unix`` when unnamed)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return host_port(str(address[0]), address[1])
    if isinstance(address, bytes):
        address = address.decode("utf-8", "backslashreplace")
    return str(address) or "unix"


def log_session(conn: Connection, listen_port: int, outcome: Outcome) -> None:
    """Write ``conn``'s record (once, after it closed)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    notes = dict(conn.session_notes)
    fields: dict[str, object] = {
        "client": address_text(conn.remote_address),
        "listen_port": listen_port,
        "connection": conn.id,
        "duration": round(trio.current_time() - conn.opened_at, 6),
        "bytes_in": conn.bytes_received,
        "bytes_out": conn.bytes_sent,
        "end": session_end(conn, outcome),
    }
    notes.pop("end", None)
    fields.update(notes)
    line = _LINE + _UPSTREAM if "upstream" in fields else _LINE
    if fields.get("attempts", 1) != 1:
        line += _ATTEMPTS
    logger.info(line, fields, extra=fields)


def log_refused(address: SocketAddress, listen_port: int, end: SessionEnd = "throttled") -> None:
    """Write the record of a client refused at accept (no connection was made)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "client": address_text(address),
        "listen_port": listen_port,
        "connection": None,
        "duration": 0.0,
        "bytes_in": 0,
        "bytes_out": 0,
        "end": end,
    }
    logger.info(_REFUSED, fields, extra=fields)
