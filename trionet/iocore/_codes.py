"""Event codes, return codes and errnos with ATS's numbers.

The numbers are ATS's own (``I_Event.h``, ``I_VConnection.h``, ``I_Net.h``), so
code ported from ATS -- and logs compared with an ATS process -- read the same.
Errors travel as *negated* errnos in the event's data, as ATS passes them
(``NET_EVENT_OPEN_FAILED`` with ``-ECONNREFUSED``, ``EVENT_ERROR`` with ``-EBADF``).
"""

from __future__ import annotations

from typing import Final

from .._base._errors import ENET_CONNECT_FAILED as _CONNECT_FAILED
from .._base._errors import ENET_CONNECT_TIMEOUT as _CONNECT_TIMEOUT
from .._base._errors import ENET_THROTTLING as _THROTTLING

__all__ = [
    "ENET_CONNECT_FAILED",
    "ENET_CONNECT_TIMEOUT",
    "ENET_THROTTLING",
    "EVENT_CALL",
    "EVENT_CONT",
    "EVENT_DONE",
    "EVENT_ERROR",
    "EVENT_IMMEDIATE",
    "EVENT_INTERVAL",
    "EVENT_NONE",
    "EVENT_POLL",
    "IO_SHUTDOWN_READ",
    "IO_SHUTDOWN_READWRITE",
    "IO_SHUTDOWN_WRITE",
    "NET_EVENT_ACCEPT",
    "NET_EVENT_ACCEPT_FAILED",
    "NET_EVENT_ACCEPT_SUCCEED",
    "NET_EVENT_OPEN",
    "NET_EVENT_OPEN_FAILED",
    "VC_EVENT_ACTIVE_TIMEOUT",
    "VC_EVENT_EOS",
    "VC_EVENT_ERROR",
    "VC_EVENT_INACTIVITY_TIMEOUT",
    "VC_EVENT_READ_COMPLETE",
    "VC_EVENT_READ_READY",
    "VC_EVENT_WRITE_COMPLETE",
    "VC_EVENT_WRITE_READY",
    "event_name",
]

# Event system (I_Event.h)
EVENT_NONE: Final = 0
EVENT_IMMEDIATE: Final = 1
EVENT_INTERVAL: Final = 2
EVENT_ERROR: Final = 3
EVENT_CALL: Final = 4
EVENT_POLL: Final = 5

# Handler return codes (I_Continuation.h)
EVENT_DONE: Final = 0
EVENT_CONT: Final = 1

# VConnection events (I_VConnection.h)
VC_EVENT_READ_READY: Final = 100
VC_EVENT_WRITE_READY: Final = 101
VC_EVENT_READ_COMPLETE: Final = 102
VC_EVENT_WRITE_COMPLETE: Final = 103
VC_EVENT_EOS: Final = 104
VC_EVENT_INACTIVITY_TIMEOUT: Final = 105
VC_EVENT_ACTIVE_TIMEOUT: Final = 106
VC_EVENT_ERROR: Final = EVENT_ERROR

# Net processor events (I_Net.h)
NET_EVENT_OPEN: Final = 200
NET_EVENT_OPEN_FAILED: Final = 201
NET_EVENT_ACCEPT: Final = 202
NET_EVENT_ACCEPT_SUCCEED: Final = 203
NET_EVENT_ACCEPT_FAILED: Final = 204

# Net errnos (I_Net.h), passed negated.
ENET_THROTTLING: Final = _THROTTLING
ENET_CONNECT_TIMEOUT: Final = _CONNECT_TIMEOUT
ENET_CONNECT_FAILED: Final = _CONNECT_FAILED

# do_io_shutdown(howto) (I_VConnection.h ShutdownHowTo_t)
IO_SHUTDOWN_READ: Final = 0
IO_SHUTDOWN_WRITE: Final = 1
IO_SHUTDOWN_READWRITE: Final = 2

_NAMES: Final[dict[int, str]] = {
    EVENT_NONE: "EVENT_NONE",
    EVENT_IMMEDIATE: "EVENT_IMMEDIATE",
    EVENT_INTERVAL: "EVENT_INTERVAL",
    EVENT_ERROR: "EVENT_ERROR",
    EVENT_CALL: "EVENT_CALL",
    EVENT_POLL: "EVENT_POLL",
    VC_EVENT_READ_READY: "VC_EVENT_READ_READY",
    VC_EVENT_WRITE_READY: "VC_EVENT_WRITE_READY",
    VC_EVENT_READ_COMPLETE: "VC_EVENT_READ_COMPLETE",
    VC_EVENT_WRITE_COMPLETE: "VC_EVENT_WRITE_COMPLETE",
    VC_EVENT_EOS: "VC_EVENT_EOS",
    VC_EVENT_INACTIVITY_TIMEOUT: "VC_EVENT_INACTIVITY_TIMEOUT",
    VC_EVENT_ACTIVE_TIMEOUT: "VC_EVENT_ACTIVE_TIMEOUT",
    NET_EVENT_OPEN: "NET_EVENT_OPEN",
    NET_EVENT_OPEN_FAILED: "NET_EVENT_OPEN_FAILED",
    NET_EVENT_ACCEPT: "NET_EVENT_ACCEPT",
    NET_EVENT_ACCEPT_SUCCEED: "NET_EVENT_ACCEPT_SUCCEED",
    NET_EVENT_ACCEPT_FAILED: "NET_EVENT_ACCEPT_FAILED",
}


def event_name(event: int) -> str:
    """``"VC_EVENT_READ_READY"`` for 100; the number itself for unknown codes
    (``EVENT_ERROR`` and ``VC_EVENT_ERROR`` share 3 and print as the former)."""
    return _NAMES.get(event, str(event))
