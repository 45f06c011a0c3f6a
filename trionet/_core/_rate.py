"""Connection-rate limits: token buckets for new connections, no I/O.

HAProxy's ``rate-limit sessions`` / ``maxconnrate`` and ATS's accept
throttling bound how fast connections are *opened*, which the concurrent
connection limits do not: a client opening and closing 10,000 short
connections a second never holds many at once. A token bucket is the usual
shape: ``burst`` tokens at most, refilled at ``rate`` per second, one taken per
admitted connection. A full bucket admits ``burst`` connections at once, then
``rate`` per second on average.

:class:`AcceptRate` holds one bucket for the processor and, optionally, one
per client address. It is plain synchronous bookkeeping over a clock value the
caller passes in (``trio.current_time()`` in the accept loop), so every rule
is tested with exact numbers; the accept loop decides what a "no" means
(wait with the clients in the backlog, or accept and close).

The per-client table is bounded (:data:`MAX_TRACKED_CLIENTS`). A bucket that
has refilled to its burst carries no information (a new bucket would be the
same), so it can be dropped at any time; when the table is full, full buckets
are dropped first, and if every client is still limited the oldest entries go
(each of those clients starts again with a full burst: the table's memory is
bounded whatever the client population, at the price of a hostile population
larger than the table getting a burst each now and then).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, Literal, TypeAlias, final

from .._base._addr import Network, client_key, in_networks

__all__ = ["MAX_TRACKED_CLIENTS", "AcceptRate", "RateRefusal", "TokenBucket", "default_burst"]

# Per-client buckets kept at most. A bucket is about 150 bytes with its key:
# 16384 of them is a few MiB, far more clients than are limited at one time.
MAX_TRACKED_CLIENTS: Final = 16384
# Float refills (0.02 s x 50/s) may land a hair under a whole token; a token
# this close to complete counts as complete, so exact schedules stay exact.
_EPSILON: Final = 1e-9

RateRefusal: TypeAlias = Literal["rate", "client rate"]


def default_burst(rate: float) -> int:
    """The burst when none is given: one second's worth, at least 1."""
    return max(1, math.ceil(rate))


@final
class TokenBucket:
    """``burst`` tokens at most, refilled continuously at ``rate`` per second.

    Args:
      rate: tokens added per second (> 0).
      burst: the bucket's size (>= 1); it starts full.
      now: the clock value at creation.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate: float = rate
        self.burst: int = burst
        self.tokens: float = float(burst)
        self.stamp: float = now

    def refill(self, now: float) -> float:
        """Add what ``rate`` gave since the last call; return the tokens now held."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def take(self, now: float) -> bool:
        """Take one token if there is one (True), else change nothing (False)."""
        if self.refill(now) + _EPSILON < 1.0:
            return False
        self.tokens = max(0.0, self.tokens - 1.0)
        return True

    def delay(self, now: float) -> float:
        """Seconds until a token is available (0 if one is now)."""
        missing = 1.0 - self.refill(now)
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def full(self, now: float) -> bool:
        """Refilled to its burst: forgetting it changes nothing."""
        return self.refill(now) + _EPSILON >= self.burst


@final
class AcceptRate:
    """The connection-rate limits of one processor.

    Args:
      rate / burst: new connections per second over the processor, and how
        many may come at once (``rate=None``: no global limit).
      per_client_rate / per_client_burst: the same per client address
        (``None``: no per-client limit).
      exempt: networks whose clients the per-client limit does not apply to
        (the processor's ``per_client_exempt``).
      max_clients: per-client buckets kept at most (see the module docstring).
      now: the clock value at creation.
    """

    __slots__ = ("_exempt", "_max_clients", "buckets", "client_burst", "client_rate", "overall")

    def __init__(
        self,
        *,
        rate: float | None,
        burst: int,
        per_client_rate: float | None,
        per_client_burst: int,
        exempt: Iterable[Network] = (),
        max_clients: int = MAX_TRACKED_CLIENTS,
        now: float = 0.0,
    ) -> None:
        self.overall: TokenBucket | None = None if rate is None else TokenBucket(rate, burst, now)
        self.client_rate: float | None = per_client_rate
        self.client_burst: int = per_client_burst
        self.buckets: dict[str, TokenBucket] = {}
        self._exempt = tuple(exempt)
        self._max_clients = max_clients

    def pause_for(self, now: float) -> float:
        """Seconds the accept loops should wait before the next ``accept()``
        ("pause" mode: clients stay in the backlog meanwhile); 0 to go on."""
        return 0.0 if self.overall is None else self.overall.delay(now)

    def admit(self, host: str | None, now: float) -> RateRefusal | None:
        """Take the tokens one new connection from ``host`` needs (``None``:
        no client address, e.g. a Unix socket or a PROXY protocol port: only
        the processor's bucket applies).

        Returns:
          None if admitted (tokens taken); ``"rate"`` if the processor's
          bucket is empty, ``"client rate"`` if the client's is. A refused
          connection takes no token from either.
        """
        overall = self.overall
        client = self._client_bucket(host, now)
        if overall is not None and overall.delay(now) > 0.0:
            return "rate"
        if client is not None and not client.take(now):
            return "client rate"
        if overall is not None:
            overall.take(now)
        return None

    def _client_bucket(self, host: str | None, now: float) -> TokenBucket | None:
        rate = self.client_rate
        if rate is None or host is None:
            return None
        key = client_key(host)
        bucket = self.buckets.get(key)
        if bucket is not None:
            return bucket
        if self._exempt and in_networks(host, self._exempt):
            return None
        if len(self.buckets) >= self._max_clients:
            self._make_room(now)
        bucket = self.buckets[key] = TokenBucket(rate, self.client_burst, now)
        return bucket

    def _make_room(self, now: float) -> None:
        """Drop full buckets; if that frees less than an eighth of the table,
        drop the oldest entries until it does (so the next sweep is at least
        ``max_clients / 8`` new clients away: the cost stays amortised O(1))."""
        buckets = self.buckets
        for key in [k for k, b in buckets.items() if b.full(now)]:
            del buckets[key]
        target = self._max_clients - max(1, self._max_clients // 8)
        while len(buckets) > target:
            del buckets[next(iter(buckets))]  # dicts keep insertion order: oldest first
