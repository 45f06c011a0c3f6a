"""Several upstreams for one :class:`~trionet.TcpProxy`: which target each
session tries, in which order, and passive health (ATS's parent proxies,
HAProxy's ``retries`` + ``option redispatch``, nginx's ``max_fails``).

I/O-free bookkeeping, like the throttle: the proxy asks :meth:`UpstreamPool.plan`
for the order of targets to try for one session, then reports what happened
to each attempt (:meth:`~UpstreamPool.connected`, :meth:`~UpstreamPool.failed`,
:meth:`~UpstreamPool.closed`). Time is passed in (``trio.current_time()`` in
the proxy), so the back-off is tested on trio's ``MockClock``.

Passive health, in full:

* A target whose connects fail ``max_fails`` times in a row is marked down
  and skipped for ``fail_backoff`` seconds.
* When the back-off has passed, the next session tries it *first* (a probe
  with real traffic, failing over to the others if it fails), and no other
  session probes it until that probe's back-off has passed again. A success
  marks it up; a failure marks it down again for twice as long, up to
  :data:`MAX_FAIL_BACKOFF` (or ``fail_backoff``, if that is longer).
* Every target down and none due for a probe: the session still tries them
  all, least recently failed first. Marks are only a guess about the past; a
  proxy that refused every client because its guesses were stale would turn
  a blip into an outage (nginx does the same when every server is down).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, final

from .._base._addr import host_port
from .._core._stats import Reading, Statistic

__all__ = [
    "BALANCES",
    "DEFAULT_FAIL_BACKOFF",
    "DEFAULT_MAX_FAILS",
    "MAX_FAIL_BACKOFF",
    "Balance",
    "Target",
    "UpstreamPool",
    "UPSTREAM_LABEL",
    "UPSTREAM_STATISTICS",
    "UpstreamStatistics",
    "upstream_readings",
]

Balance = Literal["round-robin", "least-conn"]
BALANCES: Final[tuple[Balance, ...]] = ("round-robin", "least-conn")
# nginx's max_fails default is 1, HAProxy's "fall" 3: one refused connect is
# often a restart in progress, three in a row a target that is gone.
DEFAULT_MAX_FAILS: Final = 3
# How long a target marked down is skipped before a session probes it again
# (nginx's fail_timeout is 10 s); each failed probe doubles it, up to
# MAX_FAIL_BACKOFF, so a target that stays dead costs one attempt every five
# minutes rather than one every ten seconds.
DEFAULT_FAIL_BACKOFF: Final = 10.0
MAX_FAIL_BACKOFF: Final = 300.0


@final
@dataclass(frozen=True, slots=True)
class UpstreamStatistics:
    """One upstream target of a :class:`~trionet.TcpProxy` (in
    :attr:`ProxyStatistics.upstreams <trionet.ProxyStatistics.upstreams>`).

    Attributes:
      target: ``"host:port"``.
      sessions: sessions connected to it.
      failures: connect attempts to it that failed (refused, timed out,
        unresolvable, TLS failed).
      open: sessions with it now (a gauge).
      down: marked down by passive health (``max_fails`` failures in a row,
        not yet followed by a success).
      downs: times it was marked down.
    """

    target: str
    sessions: int = 0
    failures: int = 0
    open: int = 0
    down: bool = False
    downs: int = 0


# How the stats page shows each target (TcpProxy.readings): one reading per
# statistic and target, labelled upstream="host:port" -- a labelled series in
# /metrics, proxy.process.tcp_proxy.upstream.<host:port>.<name> in /stats
# (Reading.record). The names avoid the proxy's own totals':
# "upstream.failures" would be trionet_tcp_proxy_upstream_failures, the
# metric of proxy.process.tcp_proxy.upstream_failures (sessions no target
# took), a different figure -- hence "connect_failures" (attempts).
UPSTREAM_LABEL: Final = "upstream"
UPSTREAM_STATISTICS: Final[dict[str, Statistic]] = {
    "sessions": Statistic(
        "proxy.process.tcp_proxy.upstream.sessions", "Sessions connected to this upstream target."
    ),
    "failures": Statistic(
        "proxy.process.tcp_proxy.upstream.connect_failures",
        "Connect attempts to this upstream target that failed.",
    ),
    "open": Statistic(
        "proxy.process.tcp_proxy.upstream.sessions_open",
        "Sessions with this upstream target now.",
        gauge=True,
    ),
    "down": Statistic(
        "proxy.process.tcp_proxy.upstream.down",
        "1 while this upstream target is marked down by passive health, else 0 "
        "(a fleet's total: the workers that marked it down).",
        gauge=True,
    ),
    "downs": Statistic(
        "proxy.process.tcp_proxy.upstream.downs",
        "Times this upstream target was marked down.",
    ),
}


def upstream_readings(upstreams: Sequence[UpstreamStatistics]) -> list[Reading]:
    """The stats page's readings of ``upstreams``: per statistic of
    :data:`UPSTREAM_STATISTICS`, one reading per target, labelled
    ``upstream="host:port"`` (every target, also with only one)."""
    return [
        Reading(stat, int(getattr(target, name)), labels=((UPSTREAM_LABEL, target.target),))
        for name, stat in UPSTREAM_STATISTICS.items()
        for target in upstreams
    ]


@final
class Target:
    """One upstream and its health (mutable; the pool's own)."""

    __slots__ = (
        "backoff",
        "consecutive_failures",
        "down",
        "downs",
        "failures",
        "host",
        "label",
        "last_failure",
        "open",
        "port",
        "retry_at",
        "sessions",
    )

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.label = host_port(host, port)
        self.sessions = self.failures = self.open = self.downs = 0
        self.consecutive_failures = 0
        self.down = False
        self.backoff = 0.0  # the current back-off; 0 while up
        self.retry_at = 0.0  # while down: when the next probe is due
        self.last_failure = float("-inf")

    def __repr__(self) -> str:
        state = "down" if self.down else "up"
        return f"<Target {self.label} {state} open={self.open}>"


@final
class UpstreamPool:
    """Targets, the balancer's cursor, and each target's health.

    Args:
      targets: ``(host, port)`` pairs, already checked (the proxy does).
      balance: ``"round-robin"``: sessions go to the targets in turn;
        ``"least-conn"``: to the target with the fewest open sessions (ties
        in turn).
      max_fails: failures in a row that mark a target down, >= 1.
      fail_backoff: seconds a target marked down is skipped, > 0.
    """

    __slots__ = ("_next", "balance", "fail_backoff", "max_fails", "targets")

    def __init__(
        self,
        targets: Sequence[tuple[str, int]],
        balance: Balance,
        max_fails: int,
        fail_backoff: float,
    ) -> None:
        self.targets: tuple[Target, ...] = tuple(Target(h, p) for h, p in targets)
        self.balance: Balance = balance
        self.max_fails = max_fails
        self.fail_backoff = fail_backoff
        self._next = 0

    def plan(self, now: float) -> list[Target]:
        """The targets to try for one session, in order: a target due for a
        probe first, then the balancer's choice, then the other targets that
        are up (so a failed connect moves on to the next one); when every
        target is down and none is due, all of them, least recently failed
        first."""
        ring = self._ring()
        due = [t for t in ring if t.down and t.retry_at <= now]
        for target in due:
            # One probe per back-off: the sessions arriving meanwhile skip it.
            target.retry_at = now + target.backoff
        up = [t for t in ring if not t.down]
        if due or up:
            return due + up
        return sorted(self.targets, key=lambda t: t.last_failure)

    def _ring(self) -> list[Target]:
        """Every target, rotated to the balancer's choice."""
        start = self._next
        self._next = (start + 1) % len(self.targets)
        ring = list(self.targets[start:] + self.targets[:start])
        if self.balance == "least-conn":
            ring.sort(key=lambda t: t.open)  # stable: ties keep the rotation
        return ring

    def connected(self, target: Target) -> bool:
        """A session's connect to ``target`` succeeded (the session is open
        until :meth:`closed`). Returns True if this marked it up again."""
        target.sessions += 1
        target.open += 1
        target.consecutive_failures = 0
        was_down, target.down, target.backoff = target.down, False, 0.0
        return was_down

    def failed(self, target: Target, now: float) -> bool:
        """A connect to ``target`` failed at ``now``. Returns True if this
        marked it down (it was up)."""
        target.failures += 1
        target.consecutive_failures += 1
        target.last_failure = now
        if target.down:  # a failed probe: down again, for longer
            target.backoff = min(target.backoff * 2, max(MAX_FAIL_BACKOFF, self.fail_backoff))
            target.retry_at = now + target.backoff
            return False
        if target.consecutive_failures < self.max_fails:
            return False
        target.down = True
        target.downs += 1
        target.backoff = self.fail_backoff
        target.retry_at = now + target.backoff
        return True

    def closed(self, target: Target) -> None:
        """A session with ``target`` ended."""
        target.open -= 1

    def statistics(self) -> tuple[UpstreamStatistics, ...]:
        """A snapshot of every target, in the order they were given."""
        return tuple(
            UpstreamStatistics(t.label, t.sessions, t.failures, t.open, t.down, t.downs)
            for t in self.targets
        )
