"""A log call that speaks at most once per interval (ATS's "too many
connections" once per 10 minutes), for failures a flood could repeat."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most once per ``interval`` seconds (wall clock), counting what was
    suppressed; to ``log``.

    A record that follows suppressed ones says how many were dropped, in its
    message (``(3 similar messages suppressed)``) and, when it carries
    structured fields (``extra``), as the field ``suppressed`` too, so a JSON
    log line has the count without parsing the message.
    """

    def __init__(self, interval: float, log: logging.Logger) -> None:
        self.interval = interval
        self._log = log
        self._last = -math.inf
        self._suppressed = 0

    def __call__(
        self, level: int, msg: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
            if extra is not None:
                extra = {**extra, "suppressed": self._suppressed}
        self._last, self._suppressed = now, 0
        self._log.log(level, msg, *args, extra=extra)
