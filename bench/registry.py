"""What the harness can run: server variants, scenarios, comparisons (the extension point).

A *variant* is a server process (a script in ``bench/servers/`` plus arguments);
a *scenario* is one load-generator mode with its parameters; a *comparison*
is a ratio between two variants' medians, with the target the issues set.
Another module (e.g. ``bench/workers.py``) adds its own with
:func:`register_variant` / :func:`register_comparison` and calls
:func:`bench.runner.run_matrix` with the names it wants.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SERVERS_DIR = Path(__file__).resolve().parent / "servers"

Mode = Literal["pingpong", "connrate", "idle"]


@dataclass(frozen=True)
class Variant:
    """One kind of server process.

    Args:
      name: short key used on the command line and in the results.
      script: file in ``bench/servers/``; run as ``python script --port 0 *args``
        and must print ``PORT <n>`` on stdout once it listens.
      args: extra arguments for the script.
      description: one line for the report.
      pin: pin the server to its own core (False for multi-process servers
        that should use every core; see README).
      available: returns None when the variant can run here, else the reason.
    """

    name: str
    script: str
    args: tuple[str, ...] = ()
    description: str = ""
    pin: bool = True
    available: Callable[[], str | None] = field(default=lambda: None)

    @property
    def script_path(self) -> Path:
        return SERVERS_DIR / self.script


@dataclass(frozen=True)
class Scenario:
    """One load-generator run against a fresh server.

    ``metric`` is the headline field of the load generator's JSON;
    ``higher_is_better`` says which way a ratio is good. Duration-like
    parameters come from the run's :class:`Profile`, so one scenario serves
    both ``--quick`` and the full run.
    """

    name: str
    mode: Mode
    conns: int
    size: int = 64
    description: str = ""

    @property
    def metric(self) -> str:
        return "bytes_per_conn" if self.mode == "idle" else "ops_per_s"

    @property
    def higher_is_better(self) -> bool:
        return self.mode != "idle"


@dataclass(frozen=True)
class Target:
    """``metric`` of the comparison's ratio must be ``>=`` or ``<=`` ``value``."""

    metric: str
    op: Literal[">=", "<="]
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass(frozen=True)
class Comparison:
    """``numerator`` / ``denominator`` on every scenario both ran, with targets by mode."""

    label: str
    numerator: str
    denominator: str
    targets: dict[str, Target] = field(default_factory=dict)  # keyed by Mode or scenario name


@dataclass(frozen=True)
class Profile:
    """Repetitions and durations: ``QUICK`` (smoke, < 2 min) or ``FULL``."""

    name: str
    reps: int
    warmup: float  # seconds of load before the measured window (pingpong, connrate)
    duration: float  # measured window (pingpong, connrate)
    idle_conns: int
    idle_settle: float  # seconds between the last connection opening and the RSS reading
    idle_window: float  # seconds of idle CPU measurement


QUICK = Profile(
    "quick", reps=1, warmup=0.3, duration=1.0, idle_conns=2000, idle_settle=0.5, idle_window=2.0
)
FULL = Profile(
    "full", reps=5, warmup=1.0, duration=5.0, idle_conns=10_000, idle_settle=1.0, idle_window=10.0
)

VARIANTS: dict[str, Variant] = {}
SCENARIOS: dict[str, Scenario] = {}
COMPARISONS: list[Comparison] = []
BASELINE = "trio"


def register_variant(variant: Variant) -> Variant:
    """Add (or replace) a server variant; returns it."""
    VARIANTS[variant.name] = variant
    return variant


def register_scenario(scenario: Scenario) -> Scenario:
    """Add (or replace) a scenario; returns it."""
    SCENARIOS[scenario.name] = scenario
    return scenario


def register_comparison(comparison: Comparison) -> Comparison:
    """Add a ratio to report; returns it."""
    COMPARISONS.append(comparison)
    return comparison


def _uvloop_missing() -> str | None:
    return None if importlib.util.find_spec("uvloop") else "uvloop is not installed"


# Idle timeout of the timeout variant: far beyond the idle window, so no deadline
# passes while CPU is measured ("no measurable work between deadlines").
TIMEOUT_SECONDS = "60"

register_variant(
    Variant(
        "trionet",
        "trionet_echo.py",
        ("--max-connections", "100000"),
        "trionet NetProcessor, throttle on (max 100000, pause)",
    )
)
register_variant(
    Variant(
        "trionet-timeout",
        "trionet_echo.py",
        ("--max-connections", "100000", "--inactivity-timeout", TIMEOUT_SECONDS),
        f"as trionet, AcceptOptions(inactivity_timeout={TIMEOUT_SECONDS})",
    )
)
register_variant(
    Variant(
        "trionet-every-call",
        "trionet_echo.py",
        (
            "--max-connections",
            "100000",
            "--inactivity-timeout",
            TIMEOUT_SECONDS,
            "--schedule-interval",
            "1",
        ),
        "as trionet-timeout, NetProcessor(schedule_interval=1): every call a full checkpoint",
    )
)
register_variant(Variant("trio", "trio_echo.py", (), "bare trio.serve_tcp"))
register_variant(
    Variant(
        "asyncio", "asyncio_echo.py", ("--loop", "asyncio"), "asyncio streams, default event loop"
    )
)
register_variant(
    Variant(
        "uvloop",
        "asyncio_echo.py",
        ("--loop", "uvloop"),
        "asyncio streams on uvloop",
        available=_uvloop_missing,
    )
)

register_scenario(Scenario("pp-1x64", "pingpong", 1, 64, "ping-pong, 1 connection, 64 B"))
register_scenario(Scenario("pp-1x4k", "pingpong", 1, 4096, "ping-pong, 1 connection, 4 KiB"))
register_scenario(Scenario("pp-100x64", "pingpong", 100, 64, "ping-pong, 100 connections, 64 B"))
register_scenario(Scenario("pp-100x4k", "pingpong", 100, 4096, "ping-pong, 100 conns, 4 KiB"))
register_scenario(
    Scenario("connrate", "connrate", 50, 64, "connect, send 64 B, read echo, close; 50 concurrent")
)
register_scenario(Scenario("idle", "idle", 10_000, 64, "idle connections (count per profile)"))

# Issue 4 item 5: a server holding idle connections with timeouts set does "no
# measurable work between deadlines": zero CPU ticks over the idle window.
IDLE_CPU_ZERO = ("trionet-timeout",)

# Issue 3 item 11 targets (throttle and statistics on) and issue 4 item 5.
register_comparison(
    Comparison(
        "trionet / bare trio",
        "trionet",
        BASELINE,
        {
            "pingpong": Target("ops_per_s", ">=", 0.97),
            "connrate": Target("ops_per_s", ">=", 1.0),
            "idle": Target("bytes_per_conn", "<=", 1.1),
        },
    )
)
# Issue 14's targets: throttle, statistics and an inactivity timeout on.
register_comparison(
    Comparison(
        "trionet (timeout on) / bare trio, issue 14",
        "trionet-timeout",
        BASELINE,
        {
            "pp-100x64": Target("ops_per_s", ">=", 1.5),
            "pp-100x4k": Target("ops_per_s", ">=", 1.5),
            "connrate": Target("ops_per_s", ">=", 2.0),
            "idle": Target("bytes_per_conn", "<=", 0.8),
        },
    )
)
register_comparison(
    Comparison(
        "inactivity timeout set / not set",
        "trionet-timeout",
        "trionet",
        {
            "pingpong": Target("ops_per_s", ">=", 0.97),
        },
    )
)
