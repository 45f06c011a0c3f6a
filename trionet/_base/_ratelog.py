"""A log call that speaks at most once per interval (ATS's "too many
connections" once per 10 minutes), for failures a flood could repeat."""

from __future__ import annotations

import logging
import math
import time

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """Log at most once per ``interval`` seconds (wall clock), counting what was
    suppressed; to ``log``."""

    def __init__(self, interval: float, log: logging.Logger) -> None:
        self.interval = interval
        self._log = log
        self._last = -math.inf
        self._suppressed = 0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._suppressed += 1
            return
        if self._suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, self._suppressed)
        self._last, self._suppressed = now, 0
        self._log.log(level, msg, *args)
