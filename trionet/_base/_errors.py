"""The exceptions trionet raises, named by what went wrong rather than where.

Every error that comes from the operating system keeps its ``errno`` and is
chained (``raise ... from exc``) to the ``OSError`` it translates, so callers
can match on either the trionet class or the errno.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = [
    "AcceptError",
    "ConnectError",
    "ConnectTimeoutError",
    "ProxyProtocolError",
    "ResolveError",
    "TLSError",
    "ThrottledError",
    "TrionetError",
    "UnsupportedOptionError",
    "leaves",
    "named_error",
]

# ATS passes these (negated) to NET_EVENT_OPEN_FAILED; the shim reuses them and
# ThrottledError carries ENET_THROTTLING as its errno so the shim can forward it.
ENET_THROTTLING = 20101
ENET_CONNECT_TIMEOUT = 20102
ENET_CONNECT_FAILED = 20103


class TrionetError(Exception):
    """Base class of every trionet-specific exception."""


class UnsupportedOptionError(TrionetError, OSError):
    """A socket option was asked for that this platform (or this process's
    privileges) cannot provide. Raised when the option is applied, at
    :meth:`NetProcessor.serve` or :meth:`NetProcessor.connect` time, never
    silently ignored."""


class AcceptError(TrionetError, OSError):
    """A listening socket failed with an errno that ATS classes as fatal
    (anything but the transient and resource-exhaustion classes). The message
    names the port and the errno."""


class ConnectError(TrionetError, OSError):
    """An outbound connection could not be established. The message ends with
    ``: host:port`` (as Netty annotates its connect exceptions); ``errno`` is
    the errno of the underlying failure where there was one."""


class ConnectTimeoutError(ConnectError, TimeoutError):
    """The connect timeout passed before the connection was established.
    Message: ``connection timed out after 5000 ms: example.com:80``."""


class ResolveError(ConnectError):
    """A host name could not be resolved (chained to the ``socket.gaierror``)."""


class TLSError(ConnectError):
    """A TLS handshake on an outbound connection failed (certificate
    verification, protocol mismatch...); the message names the host and the
    reason."""


class ThrottledError(ConnectError):
    """``connect()`` was refused because the processor is at
    ``max_connections`` (ATS ``-ENET_THROTTLING``)."""


class ProxyProtocolError(TrionetError, ValueError):
    """A PROXY protocol header was malformed, oversized, or incomplete."""


_E = TypeVar("_E", bound=ConnectError)


def named_error(cls: type[_E], code: int | None, message: str) -> _E:
    """``cls(message)`` with ``errno`` set: ``str()`` is then exactly the message
    (``OSError(errno, msg)`` would print ``[Errno 111] msg``), as Netty's
    ``connection timed out after 5000 ms: example.com:80``."""
    err = cls(message)
    err.errno = code
    return err


_X = TypeVar("_X", bound=BaseException)


def leaves(group: BaseExceptionGroup[_X]) -> list[_X]:
    """The exceptions of ``group`` and of every group nested in it, in order."""
    out: list[_X] = []
    for exc in group.exceptions:
        out.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
