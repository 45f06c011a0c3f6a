"""Run the matrix: one fresh server process per run, interleaved A B C A B C ...

Each run starts the variant's server script (``--port 0``; it prints
``PORT <n>``), pins it to its core, runs the load generator once against it
(the load generator reads the server's /proc counters itself, at the exact
edges of its measured window), then stops the server and keeps what it wrote
on stderr.
"""

from __future__ import annotations

import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import loadgen
from .registry import SCENARIOS, VARIANTS, Profile, Scenario, Variant

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0  # seconds for a server to print its port
NOFILE_SPARE = 100  # descriptors kept free besides the idle connections


@dataclass(frozen=True)
class CpuPlan:
    """Which cores the server and the client (and this runner) use; None = unpinned."""

    server: frozenset[int] | None
    client: frozenset[int] | None
    available: frozenset[int]

    def describe(self) -> str:
        if self.server is None:
            return f"not pinned (cores available: {sorted(self.available)})"
        client = sorted(self.client or ())
        return f"server on core {sorted(self.server)}, load generator on core {client}"


def plan_cpus() -> CpuPlan:
    """Server on the first available core, client on the second; unpinned on one core."""
    available = frozenset(os.sched_getaffinity(0))
    if len(available) < 2:
        return CpuPlan(None, None, available)
    first, second = sorted(available)[:2]
    return CpuPlan(frozenset({first}), frozenset({second}), available)


def raise_nofile() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def idle_count(requested: int) -> tuple[int, str | None]:
    """Idle connections the descriptor limit allows, and a note when reduced."""
    limit = raise_nofile()
    if limit == resource.RLIM_INFINITY or requested + NOFILE_SPARE <= limit:
        return requested, None
    count = max(limit - NOFILE_SPARE, 1)
    return count, (
        f"RLIMIT_NOFILE hard limit is {limit}: idle scenario opens {count} "
        f"connections instead of {requested}"
    )


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (a multi-process server's workers)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                children = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            todo.extend(int(c) for c in children)
    return found


@dataclass
class ServerProcess:
    """A running server script: its process, port, and stderr file."""

    variant: Variant
    proc: subprocess.Popen[bytes]
    port: int
    stderr: IO[bytes]

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def stderr_text(self, limit: int = 2000) -> str:
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace").strip()
        return text if len(text) <= limit else "..." + text[-limit:]


def _read_port(proc: subprocess.Popen[bytes], variant: Variant) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode().strip()
            if line.startswith("PORT "):
                return int(line.split()[1])
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"server {variant.name} did not print its port (exit {proc.poll()})")


@contextmanager
def server_process(variant: Variant, cpus: CpuPlan) -> Iterator[ServerProcess]:
    """Start ``variant``'s server, pinned per ``cpus``; stop it on exit.

    Resource handling:
      The server is sent SIGTERM, then SIGKILL after 5 s; its pipes and stderr
      file are closed on exit whatever happened.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, str(variant.script_path), "--port", "0", *variant.args]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO_ROOT)
        try:
            if cpus.server is not None:
                os.sched_setaffinity(proc.pid, cpus.server if variant.pin else cpus.available)
            try:
                port = _read_port(proc, variant)
            except RuntimeError as exc:
                err.seek(0)
                tail = err.read().decode(errors="replace").strip()[-500:]
                raise RuntimeError(f"{exc}; its stderr: {tail}" if tail else str(exc)) from None
            yield ServerProcess(variant, proc, port, err)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def loadgen_options(scenario: Scenario, profile: Profile, idle_conns: int) -> dict[str, Any]:
    """The load generator's options for ``scenario`` under ``profile``."""
    if scenario.mode == "idle":
        return {
            "conns": idle_conns,
            "size": scenario.size,
            "settle": profile.idle_settle,
            "window": profile.idle_window,
        }
    return {
        "conns": scenario.conns,
        "size": scenario.size,
        "warmup": profile.warmup,
        "duration": profile.duration,
    }


def run_one(
    variant: Variant, scenario: Scenario, profile: Profile, cpus: CpuPlan, idle_conns: int
) -> dict[str, Any]:
    """One fresh server, one load-generator run: the record for the results file.

    Error handling:
      A server that fails to start or dies, or a load generator that fails, is
      recorded (``"failure"``) rather than raised, so one bad run does not
      lose the others.
    """
    record: dict[str, Any] = {"variant": variant.name, "scenario": scenario.name}
    started = time.monotonic()
    try:
        with server_process(variant, cpus) as server:
            opts = loadgen_options(scenario, profile, idle_conns)
            timeout = 120.0 + profile.warmup + profile.duration + profile.idle_window
            record["result"] = loadgen.run(
                scenario.mode, server.port, server.pids(), timeout=timeout, **opts
            )
            exit_code = server.proc.poll()
            if exit_code is not None:
                record["failure"] = f"server exited with {exit_code} during the run"
            record["server_stderr"] = server.stderr_text()
    except (RuntimeError, OSError) as exc:
        record["failure"] = str(exc)
    record["wall_s"] = round(time.monotonic() - started, 3)
    return record


def run_matrix(
    variant_names: list[str],
    scenario_names: list[str],
    profile: Profile,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every scenario on every variant, ``profile.reps`` times, interleaved.

    Order: for each repetition, for each scenario, each variant in turn
    (A B C A B C ...), so slow drift on the machine spreads over all variants.

    Returns:
      ``(meta, records)``: the run's conditions and one record per run.
    """
    binary = loadgen.build()
    variants = [VARIANTS[name] for name in variant_names]
    scenarios = [SCENARIOS[name] for name in scenario_names]
    cpus = plan_cpus()
    idle_conns, note = idle_count(profile.idle_conns)
    if note:
        log(note)
    own_affinity = os.sched_getaffinity(0)
    if cpus.client is not None:
        os.sched_setaffinity(0, cpus.client)  # the runner and the load generator share a core
    meta = _meta(profile, cpus, idle_conns, note, binary, variants, scenarios)
    records: list[dict[str, Any]] = []
    total = profile.reps * len(scenarios) * len(variants)
    try:
        for rep in range(profile.reps):
            for scenario in scenarios:
                for variant in variants:
                    record = run_one(variant, scenario, profile, cpus, idle_conns)
                    record["rep"] = rep
                    records.append(record)
                    log(f"[{len(records)}/{total}] {_one_line(record)}")
    finally:
        os.sched_setaffinity(0, own_affinity)
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return meta, records


def _one_line(record: dict[str, Any]) -> str:
    head = f"rep {record.get('rep', 0)} {record['scenario']:<10} {record['variant']:<16}"
    if "failure" in record:
        return f"{head} FAILED: {record['failure']}"
    r = record["result"]
    if r["mode"] == "idle":
        body = (
            f"{r['established']} conns, {r['bytes_per_conn']:.0f} B/conn, "
            f"idle CPU {r['server_cpu_s'] * 1e3:.0f} ms / {r['window_s']:.0f} s"
        )
    else:
        body = (
            f"{r['ops_per_s']:>9.0f} ops/s, server CPU {r['server_cpu_share']:.0%}, "
            f"client CPU {r['client_cpu_share']:.0%}"
        )
    return f"{head} {body}, errors {r['errors']}"


def _meta(
    profile: Profile,
    cpus: CpuPlan,
    idle_conns: int,
    note: str | None,
    binary: Path,
    variants: list[Variant],
    scenarios: list[Scenario],
) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "profile": profile.__dict__,
        "idle_conns": idle_conns,
        "notes": [note] if note else [],
        "cpus": cpus.describe(),
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "git": _git_describe(),
        "loadgen": str(binary.relative_to(REPO_ROOT)),
        "variants": {v.name: v.description for v in variants},
        "scenarios": {s.name: s.description for s in scenarios},
    }


def _git_describe() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")
