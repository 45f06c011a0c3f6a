"""systemd's notify protocol (``sd_notify``), for ``Type=notify`` and
``Type=notify-reload`` units: ``READY=1`` once serving, ``RELOADING=1`` ...
``READY=1`` around a reload, ``STOPPING=1`` on shutdown, ``STATUS=`` lines,
and ``WATCHDOG=1`` keep-alives when the unit sets ``WatchdogSec=``.

The protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX
``SOCK_DGRAM`` socket named by ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
an abstract socket); a few lines of socket code, so no dependency. Without
``$NOTIFY_SOCKET`` every call does nothing. Only the main process notifies
(systemd's default ``NotifyAccess=main``): worker processes do not inherit the
variables (see the supervisor).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final, final

import trio

__all__ = ["NOTIFY_ENV", "STATUS_INTERVAL", "SystemdNotifier", "notify_loop"]

logger = logging.getLogger("trionet.workers")

# The variables systemd sets for the main process; a worker must not see them.
NOTIFY_ENV: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# How often STATUS= is refreshed (systemctl status shows the last one).
STATUS_INTERVAL: Final = 5.0


@final
class SystemdNotifier:
    """Sends notifications to systemd; does nothing without an address.

    Attributes:
      address: the socket address (``"\\0name"`` for an abstract one), or
        None when there is nobody to notify.
      watchdog: seconds within which systemd expects ``WATCHDOG=1``
        (``$WATCHDOG_USEC``), or None when the watchdog is off.
    """

    def __init__(self, address: str | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog = watchdog
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` describe.

        ``WATCHDOG_USEC`` counts only when ``WATCHDOG_PID`` is unset or names
        this process. An address that is neither a path nor ``@name`` (systemd's
        ``vsock:`` form) is logged once and ignored.
        """
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address: str | None = None
        if raw.startswith("/"):
            address = raw
        elif raw.startswith("@"):
            address = "\0" + raw[1:]
        elif raw:
            logger.warning("NOTIFY_SOCKET=%r: not a path or @name; not notifying systemd", raw)
        watchdog: float | None = None
        pid = env.get("WATCHDOG_PID", "")
        usec = env.get("WATCHDOG_USEC", "")
        ours = not pid or pid == str(os.getpid())
        if address is not None and ours and usec.isdigit() and int(usec) > 0:
            watchdog = int(usec) / 1e6
        return cls(address, watchdog)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"READY=1"``...) as one datagram; True if it was sent.

        Error handling:
          A send that fails (systemd gone, its queue full) is logged once at
          WARNING and otherwise ignored: serving matters more than telling.
        """
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode("utf-8", "replace"), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                shown = self.address.replace("\0", "@")
                logger.warning("cannot notify systemd at %s: %s", shown, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (start-up or a reload done), with a ``STATUS=`` line."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC=`` (``Type=notify-reload``
        requires both): a reload began; :meth:`ready` ends it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: a shutdown began."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """A ``STATUS=`` line (what ``systemctl status`` shows)."""
        return self.notify(*_status(text))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str | None) -> list[str]:
    return [] if text is None else ["STATUS=" + " ".join(text.split())]


async def notify_loop(
    notifier: SystemdNotifier,
    status: Callable[[], str],
    status_interval: float = STATUS_INTERVAL,
) -> None:
    """Refresh ``STATUS=`` every ``status_interval`` seconds and, when the
    watchdog is on, send ``WATCHDOG=1`` every half of its period (systemd's
    advice), until cancelled. Returns at once without a notifier address."""
    if not notifier.enabled:
        return
    # Sent from this trio loop: if it stops running, the keep-alives stop and
    # systemd's watchdog restarts the service, which is the point.
    next_status = trio.current_time() + status_interval
    while True:
        now = trio.current_time()
        if now >= next_status:
            notifier.status(status())
            next_status = now + status_interval
        wake = next_status
        if notifier.watchdog is not None:
            notifier.notify("WATCHDOG=1")
            wake = min(wake, now + notifier.watchdog / 2)
        await trio.sleep_until(wake)
