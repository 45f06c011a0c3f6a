"""``python -m bench.callgrind``: user-space instructions per echo round trip, counted by callgrind.

python -m bench.callgrind                              # trionet(-timeout), trio, asyncio, uvloop
python -m bench.callgrind --variants trionet,trio --conns 20 --rounds 200 --reps 2
python -m bench.callgrind --baseline-tree ../old       # also trionet from another checkout

Each measurement starts one echo server (``bench/servers/*.py``, the variants
of ``bench/registry.py``) under ``valgrind --tool=callgrind``, runs the C load
generator against it for a fixed amount of work (``loadgen pingpong --rounds``:
every connection does exactly R round trips, half-closes and waits for the
server's EOF), waits until the server is idle, stops it with SIGTERM and reads
the total instruction count (Ir) callgrind wrote. A run with zero round trips
(the connections opened and closed, nothing echoed) counts everything that is
not a round trip: interpreter start-up, imports, listening, accepting and
closing the connections. So

    Ir per round trip = (Ir(R rounds) - Ir(0 rounds)) / (conns * R)

Instruction counts do not depend on how busy the machine is, which makes this
the figure to quote on a noisy machine (times are not); the repetitions show
how deterministic it is (the spread column).

``--tree PATH`` (repeatable) or ``--baseline-tree PATH`` also runs the trionet
variants with the ``trionet`` package of another checkout (e.g. a git worktree
of an older commit): same server script, same harness, only the library
differs; the rows are labelled ``trionet@<commit>``. With ``--baseline-tree``
the report adds each trionet row's ratio to that tree's row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import loadgen
from .registry import BASELINE, VARIANTS, Variant
from .report import RESULTS_DIR
from .runner import REPO_ROOT

# trionet-timeout: issue 14 quotes trionet "with throttle, statistics and an
# inactivity timeout on"; the plain trionet variant has no timeout.
DEFAULT_VARIANTS = ("trionet", "trionet-timeout", "trio", "asyncio", "uvloop")
# Two runs at once on a machine with 2+ cores: the counts do not change, the wall time halves.
DEFAULT_JOBS = min(2, len(os.sched_getaffinity(0)))
# Seconds for a server under callgrind to print its port: ~15 s on an idle
# machine, 150 s seen under a load average of 300.
START_TIMEOUT = 900.0
EXIT_TIMEOUT = 300.0  # seconds for callgrind to write its file after SIGTERM
QUIET_SECONDS = 0.5  # the server slept, running nothing, for this long: it is idle
QUIET_TIMEOUT = 900.0  # give up waiting for the server to become idle
CLIENT_STALL = 900.0  # loadgen --stall: seconds without progress before it gives up
# Totals of runs of one kind may differ by this share of a run before a note says
# the runs did different work (timing alone moved them up to ~0.02%).
CONSISTENT = 0.001
# Fixed hash seed: str/bytes hashes (dict and set layouts, their probe counts)
# are then the same in every run, one source of run-to-run variation less.
HASH_SEED = "0"


class CallgrindError(RuntimeError):
    """A measurement could not be made (the message says which step failed)."""


@dataclass(frozen=True)
class Subject:
    """One row of the report: a server variant importing ``trionet`` from ``tree``.

    Attributes:
      label: the row's name: the variant's name, ``trionet@<commit>`` for another tree.
      variant: the registry entry (script and arguments).
      tree: repository root put first on ``PYTHONPATH`` (this checkout by default).
      commit: ``git rev-parse --short HEAD`` of ``tree`` (``-dirty``: ``trionet/`` changed).
    """

    label: str
    variant: Variant
    tree: Path
    commit: str


@dataclass(frozen=True)
class Settings:
    """The workload of every measured run."""

    conns: int
    rounds: int
    size: int
    reps: int
    keep_profiles: bool
    top: int  # functions listed per subject (0: none)
    jobs: int  # runs at once
    # --per-connection: a third run per subject, 0 rounds on conns + this many
    # connections; (its Ir - the 0-round run's) / this = Ir per connection.
    extra_conns: int = 0


# ------------------------------------------------------------------ trees and subjects


def tree_commit(tree: Path) -> str:
    """Short commit of the checkout at ``tree``, ``-dirty`` when ``trionet/`` has changes.

    Error handling:
      Not a git checkout (or no git): ``"unknown"``; the tree may still be measured.
    """
    try:
        head = _git(tree, "rev-parse", "--short", "HEAD")
        dirty = _git(tree, "status", "--porcelain", "--untracked-files=no", "--", "trionet")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def check_tree(tree: Path) -> Path:
    """Resolve ``tree`` and check it holds a ``trionet`` package; return the resolved path.

    Raises:
      CallgrindError: the path is not a directory with ``trionet/__init__.py``.
    """
    resolved = tree.expanduser().resolve()
    if not (resolved / "trionet" / "__init__.py").is_file():
        raise CallgrindError(f"tree={str(tree)!r}: no trionet/__init__.py there")
    return resolved


def is_trionet(variant: Variant) -> bool:
    """Does this variant's server import ``trionet`` (and so depend on the tree)?"""
    return variant.script.startswith("trionet")


def make_subjects(variant_names: list[str], trees: list[Path]) -> list[Subject]:
    """This checkout's variants, then the trionet variants again for each other tree.

    Labels stay unique: a second tree at the same commit gets ``#2`` appended.
    """
    own = tree_commit(REPO_ROOT)
    subjects = [Subject(n, VARIANTS[n], REPO_ROOT, own) for n in variant_names]
    seen = {s.label for s in subjects}
    for tree in trees:
        commit = tree_commit(tree)
        for name in variant_names:
            if not is_trionet(VARIANTS[name]):
                continue
            label, n = f"{name}@{commit}", 1
            while label in seen:
                n += 1
                label = f"{name}@{commit}#{n}"
            seen.add(label)
            subjects.append(Subject(label, VARIANTS[name], tree, commit))
    return subjects


def server_env(tree: Path) -> dict[str, str]:
    """Environment of a server: ``tree`` first on ``PYTHONPATH``, a fixed hash seed.

    ``PYTHONDONTWRITEBYTECODE`` is removed: with it set (as it is in some
    shells here) no ``__pycache__`` file is ever written, so a module without
    one is compiled from source in every run, and the count then depends on
    whatever else happened to write it meanwhile (seen: a test run writing
    ``trionet``'s cut the start-up of the next run by 185 M instructions).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env["PYTHONHASHSEED"] = HASH_SEED
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def imported_trionet(tree: Path) -> str:
    """The file ``import trionet`` loads in a server's environment for ``tree``.

    Run from the servers' directory, like the scripts (whose ``sys.path[0]`` it
    is), so that an editable install of this checkout cannot shadow ``tree``
    unnoticed.

    Raises:
      CallgrindError: the import failed.
    """
    proc = subprocess.run(
        [sys.executable, "-c", "import trionet; print(trionet.__file__)"],
        env=server_env(tree),
        cwd=VARIANTS[BASELINE].script_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CallgrindError(f"import trionet from {tree} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


# ------------------------------------------------------------------ one server process


def _activity(pid: int) -> tuple[int, bool]:
    """Run time (ns) of the process's live threads, and whether any of them is runnable.

    From ``/proc/PID/task/*/schedstat`` (first field) and ``.../stat`` (state
    ``R``). A thread that is runnable but waiting for a CPU has a run time that
    does not move, so the state is needed to tell it from a sleeping one.
    """
    total, runnable = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return total, runnable
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except (OSError, ValueError, IndexError):
            continue
        runnable |= stat[stat.rfind(")") + 2 :].startswith("R")
    return total, runnable


def wait_quiet(proc: subprocess.Popen[bytes], quiet: float = QUIET_SECONDS) -> None:
    """Return once ``proc`` has been asleep, running nothing, for ``quiet`` seconds.

    The echo servers have no timers, so an idle server sleeps in
    ``epoll_wait``/``select``: its threads are not runnable and their run
    time stops growing. Then all the work the last client caused (closing
    connections, ending handler tasks) is done and counted before the server
    is stopped. On a loaded machine a runnable server may wait long for a CPU
    without running, which is why a runnable thread restarts the wait too.

    Raises:
      CallgrindError: the process exited, or stayed busy for ``QUIET_TIMEOUT`` s.
    """
    deadline = time.monotonic() + QUIET_TIMEOUT
    last, since = _activity(proc.pid)[0], time.monotonic()
    while time.monotonic() - since < quiet:
        if proc.poll() is not None:
            raise CallgrindError(f"server exited with {proc.returncode} before it went idle")
        if time.monotonic() > deadline:
            raise CallgrindError(f"server still busy after {QUIET_TIMEOUT:.0f} s")
        time.sleep(0.05)
        now, runnable = _activity(proc.pid)
        if now != last or runnable:
            last, since = now, time.monotonic()


def _read_port(proc: subprocess.Popen[bytes], timeout: float) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode(errors="replace").strip()
            if line.startswith("PORT "):
                return int(line.split()[1])
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    raise CallgrindError(f"server did not print PORT within {timeout:.0f} s (exit {proc.poll()})")


@contextmanager
def started(
    argv: list[str], env: dict[str, str], log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """Start a server (``argv``), wait for its ``PORT`` line; stop it on exit.

    Yields:
      ``(process, port)``.

    Resource handling:
      Its stdout pipe is closed and the process reaped whatever happens; a
      server still running on the way out (an error path) is killed.
    """
    with log.open("wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO_ROOT)
        try:
            yield proc, _read_port(proc, START_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then wait for the exit; returns the exit status.

    Why SIGTERM: none of the servers handles it, so its default action ends
    the process at once; valgrind runs callgrind's exit code even on a fatal
    signal ("Process terminating with default action of signal 15"), so the
    counts are written, and nothing runs after the idle point (no interpreter
    shutdown, whose cost would depend on what the run left in memory). SIGINT
    would not do: a process started in the background by a non-interactive
    shell inherits SIGINT ignored, and Python then keeps ignoring it.

    Raises:
      CallgrindError: no exit within ``EXIT_TIMEOUT`` s (it is then killed).
    """
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CallgrindError(
            f"server did not exit within {EXIT_TIMEOUT:.0f} s of SIGTERM"
        ) from None


def total_ir(out_file: Path) -> int:
    """The total instruction count in a callgrind output file (its ``totals:`` line).

    Raises:
      CallgrindError: the file is missing or has no ``totals:``/``summary:`` line.
    """
    try:
        text = out_file.read_text(errors="replace")
    except OSError as exc:
        raise CallgrindError(f"callgrind wrote no {out_file.name}: {exc}") from None
    for key in ("totals:", "summary:"):
        for line in text.splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    raise CallgrindError(f"{out_file}: no totals: line")


def server_argv(subject: Subject, out_file: Path | None) -> list[str]:
    """The server's command line; under callgrind when ``out_file`` is given."""
    argv = [sys.executable, str(subject.variant.script_path), "--port", "0"]
    argv += list(subject.variant.args)
    if out_file is None:
        return argv
    valgrind = shutil.which("valgrind") or "valgrind"
    return [
        valgrind,
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        f"--log-file={out_file.with_suffix('.valgrind.log')}",
        *argv,
    ]


def client(port: int, conns: int, rounds: int, size: int) -> dict[str, Any]:
    """Run the load generator's fixed-round ping-pong; check every round trip and EOF happened.

    Raises:
      CallgrindError: the load generator failed, counted an error, or did not
        complete ``conns * rounds`` round trips and ``conns`` clean closes.
    """
    try:
        result = loadgen.run(
            "pingpong",
            port,
            [],
            timeout=CLIENT_STALL * 2,
            conns=conns,
            rounds=rounds,
            size=size,
            stall=CLIENT_STALL,
        )
    except loadgen.LoadgenError as exc:
        raise CallgrindError(str(exc)) from None
    if result["errors"] or result["ops"] != conns * rounds or result["closed_by_server"] != conns:
        raise CallgrindError(
            f"load generator: {result['ops']} of {conns * rounds} round trips, "
            f"{result['closed_by_server']} of {conns} closed by the server, "
            f"errors {result['error_kinds']}"
        )
    return result


def measure(
    subject: Subject, rounds: int, settings: Settings, out_file: Path, conns: int | None = None
) -> dict[str, Any]:
    """One server under callgrind, ``conns`` (default ``settings.conns``)
    connections of ``rounds`` round trips.

    Returns:
      The record: label, rounds, ``ir`` (total instructions), the client's
      result, the server's exit status, wall time; ``failure`` instead of
      ``ir`` when a step failed (recorded, not raised, so one bad run does not
      lose the others).
    """
    conns = settings.conns if conns is None else conns
    record: dict[str, Any] = {"label": subject.label, "rounds": rounds, "conns": conns}
    t0 = time.monotonic()
    log = out_file.with_suffix(".stderr")
    try:
        with started(server_argv(subject, out_file), server_env(subject.tree), log) as (proc, port):
            wait_quiet(proc)
            record["client"] = client(port, conns, rounds, settings.size)
            wait_quiet(proc)
            record["server_exit"] = stop(proc)
        record["ir"] = total_ir(out_file)
    except (CallgrindError, OSError) as exc:
        record["failure"] = str(exc)
        tail = log.read_text(errors="replace").strip()[-800:] if log.exists() else ""
        if tail:
            record["server_stderr"] = tail
    record["wall_s"] = round(time.monotonic() - t0, 1)
    if not settings.keep_profiles:
        for path in (out_file, out_file.with_suffix(".valgrind.log"), log):
            path.unlink(missing_ok=True)
    return record


def prime(subject: Subject, scratch: Path) -> None:
    """Run the server once without valgrind, with one round trip per connection.

    Python writes ``__pycache__`` files on the first import of a module; were
    that to happen inside a measured run, that run would count the compiler.
    One unmeasured run imports everything a round trip needs first.

    Raises:
      CallgrindError: the server or the client failed.
    """
    log = scratch / f"prime-{subject.label}.stderr"
    try:
        with started(server_argv(subject, None), server_env(subject.tree), log) as (proc, port):
            client(port, 2, 1, 64)
            stop(proc)
    except (CallgrindError, OSError) as exc:
        tail = log.read_text(errors="replace").strip()[-800:] if log.exists() else ""
        raise CallgrindError(
            f"{subject.label}: unmeasured first run failed: {exc}\n{tail}"
        ) from None


# ------------------------------------------------------------------ where the instructions go

_ANNOTATE_LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S.*)$")


def function_costs(out_file: Path) -> dict[str, int]:
    """Self instructions per function in a callgrind file (``callgrind_annotate``'s table).

    Names are shortened to ``file.c:function`` (no directory, no library, no
    recursion-depth suffix such as ``'2``, which differs between runs), and
    the counts of names that then coincide are added.

    Raises:
      CallgrindError: ``callgrind_annotate`` is missing or failed.
    """
    argv = ["callgrind_annotate", "--threshold=100", "--auto=no", "--inclusive=no", str(out_file)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CallgrindError(f"callgrind_annotate: {exc}") from None
    if proc.returncode != 0:
        raise CallgrindError(f"callgrind_annotate {out_file.name}: {proc.stderr.strip()[-300:]}")
    costs: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        match = _ANNOTATE_LINE.match(line)
        if match and match.group(2) != "PROGRAM TOTALS":
            name = _short_name(match.group(2))
            costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def _short_name(entry: str) -> str:
    where = entry.split(" [", 1)[0]
    path, _, function = where.rpartition(":")
    function = re.sub(r"'\d+$", "", function)
    return f"{os.path.basename(path)}:{function}" if path else function


def top_functions(zero: Path, rounds: Path, round_trips: int, n: int) -> list[list[Any]]:
    """The ``n`` functions whose self instructions grew most per round trip.

    Returns:
      ``[[name, instructions per round trip], ...]``, largest first: the
      per-function form of ``(Ir(R rounds) - Ir(0 rounds)) / round trips``.
    """
    before, after = function_costs(zero), function_costs(rounds)
    delta = {name: (ir - before.get(name, 0)) / round_trips for name, ir in after.items()}
    ranked = sorted(delta.items(), key=lambda item: item[1], reverse=True)[:n]
    return [[name, value] for name, value in ranked]


# ------------------------------------------------------------------ the matrix and its summary


def profile_path(
    profiles_dir: Path, subject: Subject, rounds: int, rep: int, conns: int | None = None
) -> Path:
    """Where the callgrind file of one run goes (``conns``: a --per-connection run)."""
    more = "" if conns is None else f"-c{conns}"
    return profiles_dir / f"{subject.label}-r{rounds}{more}-{rep}.callgrind.out"


def run_all(
    subjects: list[Subject],
    settings: Settings,
    profiles_dir: Path,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every subject with 0 and with ``settings.rounds`` round trips, ``settings.reps`` times.

    Order: for each repetition, each subject in turn (A0 AR B0 BR ...); with
    ``settings.jobs`` > 1 that many run at once (instruction counts do not
    depend on the load, so this only shortens the wall time).

    Returns:
      One record per run, in that order.
    """
    with tempfile.TemporaryDirectory() as scratch:
        for subject in subjects:
            prime(subject, Path(scratch))
    # (rep, subject, rounds, conns): conns None is settings.conns.
    kinds: list[tuple[int, int | None]] = [(0, None), (settings.rounds, None)]
    if settings.extra_conns:
        kinds.append((0, settings.conns + settings.extra_conns))
    plan = [
        (rep, subject, rounds, conns)
        for rep in range(settings.reps)
        for subject in subjects
        for rounds, conns in kinds
    ]
    done = [0]
    lock = threading.Lock()  # the pool's threads count and log one at a time

    def one(rep: int, subject: Subject, rounds: int, conns: int | None) -> dict[str, Any]:
        out_file = profile_path(profiles_dir, subject, rounds, rep, conns)
        record = {"rep": rep, **measure(subject, rounds, settings, out_file, conns)}
        what = record.get("failure") or f"Ir {record['ir']:,}"
        with lock:
            done[0] += 1
            log(
                f"[{done[0]}/{len(plan)}] rep {rep} {subject.label:<20} "
                f"{rounds:>5} rounds, {record['conns']} conns: {what} ({record['wall_s']} s)"
            )
        return record

    if settings.jobs == 1:
        return [one(*item) for item in plan]
    with ThreadPoolExecutor(settings.jobs) as pool:
        futures = [pool.submit(one, *item) for item in plan]
        try:
            return [future.result() for future in futures]
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the runs under way end on their own
            raise


def per_round_trip(
    records: list[dict[str, Any]], subject: Subject, settings: Settings
) -> list[float]:
    """(Ir with rounds - Ir with 0 rounds) / round trips, for each repetition that has both."""
    values = []
    for rep in range(settings.reps):
        ir = {
            r["rounds"]: r["ir"]
            for r in records
            if r["label"] == subject.label
            and r["rep"] == rep
            and "ir" in r
            and r.get("conns", settings.conns) == settings.conns
        }
        if 0 in ir and settings.rounds in ir:
            values.append((ir[settings.rounds] - ir[0]) / (settings.conns * settings.rounds))
    return values


def per_connection(
    records: list[dict[str, Any]], subject: Subject, settings: Settings
) -> list[float]:
    """(Ir of 0 rounds on conns + extra - Ir of 0 rounds on conns) / extra, per
    repetition: a connection's accept, handler start, EOF and close."""
    values = []
    more = settings.conns + settings.extra_conns
    for rep in range(settings.reps):
        ir = {
            r["conns"]: r["ir"]
            for r in records
            if r["label"] == subject.label and r["rep"] == rep and "ir" in r and r["rounds"] == 0
        }
        if settings.extra_conns and settings.conns in ir and more in ir:
            values.append((ir[more] - ir[settings.conns]) / settings.extra_conns)
    return values


def summarize(
    records: list[dict[str, Any]],
    subjects: list[Subject],
    settings: Settings,
    baseline_tree: Path | None,
) -> list[dict[str, Any]]:
    """One row per subject: median Ir per round trip, its spread, ratios."""
    rows: list[dict[str, Any]] = []
    for s in subjects:
        values = per_round_trip(records, s, settings)
        conn_values = per_connection(records, s, settings)
        mine = [
            r
            for r in records
            if r["label"] == s.label and r.get("conns", settings.conns) == settings.conns
        ]
        rows.append(
            {
                "label": s.label,
                "variant": s.variant.name,
                "tree": str(s.tree),
                "commit": s.commit,
                "per_round_trip": values,
                "median": statistics.median(values) if values else None,
                "spread": (max(values) - min(values)) if values else None,
                "per_connection": statistics.median(conn_values) if conn_values else None,
                "ir_zero": [r["ir"] for r in mine if r["rounds"] == 0 and "ir" in r],
                "ir_rounds": [r["ir"] for r in mine if r["rounds"] != 0 and "ir" in r],
                "failures": sum(1 for r in mine if "failure" in r),
            }
        )
    by_label = {row["label"]: row for row in rows}
    base = by_label.get(BASELINE)
    for s, row in zip(subjects, rows, strict=True):
        row["ratio_to_trio"] = _ratio(row, base)
        if base is not None and row["per_connection"] and base["per_connection"]:
            row["per_connection_to_trio"] = row["per_connection"] / base["per_connection"]
        if baseline_tree is not None and is_trionet(s.variant):
            before = next(
                (
                    r
                    for t, r in zip(subjects, rows, strict=True)
                    if t.tree == baseline_tree and t.variant == s.variant
                ),
                None,
            )
            row["ratio_to_baseline_tree"] = _ratio(row, before)
    return rows


def consistency_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Notes on runs of one kind (same subject, same rounds) whose totals differ too much.

    Timing changes a few things the server does (how many connections one
    ``epoll_wait`` returns, so how many loop passes): seen up to ~0.02% of a
    run's total. A larger difference means the runs did different work, e.g. a
    module compiled from source in one run and loaded from ``__pycache__`` in
    the other, and the figure should not be trusted.
    """
    notes = []
    for row in rows:
        for key, what in (("ir_zero", "0-round"), ("ir_rounds", "round-trip")):
            values = row[key]
            if len(values) > 1 and (max(values) - min(values)) > CONSISTENT * min(values):
                notes.append(
                    f"{row['label']}: the {what} runs differ by {max(values) - min(values):,} "
                    f"instructions ({100 * (max(values) - min(values)) / min(values):.2f}%), "
                    "more than timing explains: the runs did different work; do not trust "
                    "this row"
                )
    return notes


def add_top_functions(
    rows: list[dict[str, Any]],
    subjects: list[Subject],
    settings: Settings,
    profiles_dir: Path,
    notes: list[str],
) -> None:
    """Set ``row["top_functions"]`` from repetition 0's two callgrind files of each subject.

    Error handling:
      A subject whose files are missing (a failed run) gets none; a failing
      ``callgrind_annotate`` adds a note and stops the listing.
    """
    round_trips = settings.conns * settings.rounds
    for subject, row in zip(subjects, rows, strict=True):
        zero = profile_path(profiles_dir, subject, 0, 0)
        full = profile_path(profiles_dir, subject, settings.rounds, 0)
        if not (zero.exists() and full.exists()):
            continue
        try:
            row["top_functions"] = top_functions(zero, full, round_trips, settings.top)
        except CallgrindError as exc:
            notes.append(f"no per-function table: {exc}")
            return


def _ratio(row: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    if base is None or not row["median"] or not base["median"]:
        return None
    return float(row["median"] / base["median"])


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The report: the table of instructions per round trip, then the conditions."""
    s = meta["settings"]
    baseline = meta.get("baseline_tree")
    out = [
        "# Instructions per echo round trip (callgrind)",
        "",
        f"{s['conns']} connections x {s['rounds']} round trips of {s['size']} B "
        f"({s['conns'] * s['rounds']:,} round trips), minus a run with 0 round trips; "
        f"{s['reps']} repetition(s). User-space instructions of the server process "
        "(callgrind's Ir), start-up to SIGTERM.",
        "",
        "| variant | commit | Ir per round trip | spread (max-min) | x trio |"
        + (" x baseline tree |" if baseline else "")
        + " Ir, 0 rounds | Ir, with rounds |",
        "|---|---|---:|---:|---:|" + ("---:|" if baseline else "") + "---:|---:|",
    ]
    for row in rows:
        median = row["median"]
        cells = [
            row["label"],
            row["commit"],
            f"{median:,.0f}" if median is not None else "failed",
            _spread_text(row),
            _fmt_ratio(row["ratio_to_trio"]),
        ]
        if baseline:
            cells.append(_fmt_ratio(row.get("ratio_to_baseline_tree"), 3))
        cells += [_millions(row["ir_zero"]), _millions(row["ir_rounds"])]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if s.get("extra_conns"):
        out += [
            f"Per connection: 0 round trips on {s['conns'] + s['extra_conns']} connections "
            f"minus 0 round trips on {s['conns']}, divided by {s['extra_conns']} (accept, "
            "handler start, EOF, close).",
            "",
            "| variant | Ir per connection | x trio |",
            "|---|---:|---:|",
        ]
        for row in rows:
            value = row.get("per_connection")
            out.append(
                f"| {row['label']} | {f'{value:,.0f}' if value else 'failed'} | "
                f"{_fmt_ratio(row.get('per_connection_to_trio'))} |"
            )
        out.append("")
    for note in meta["notes"]:
        out.append(f"- note: {note}")
    for fail in meta["failures"]:
        out.append(f"- **failed**: {fail}")
    out += _top_tables(rows)
    out += [
        "",
        f"- trionet imported from: {json.dumps(meta['trionet_files'])}",
        f"- python {meta['python']}, {meta['valgrind']}, {meta['platform']}",
        f"- started {meta['started']}, {meta['wall_s']} s; callgrind files: {meta['profiles']}",
    ]
    return "\n".join(out)


def _top_tables(rows: list[dict[str, Any]]) -> list[str]:
    listed = [row for row in rows if row.get("top_functions")]
    if not listed:
        return []
    out = [
        "",
        "## Where a round trip's instructions go",
        "",
        "Self instructions per round trip of the C functions that grew most, repetition 0 "
        "(`callgrind_annotate` of both runs, subtracted). Python code shows as the "
        "interpreter's functions: `ceval.c:_PyEval_EvalFrameDefault` is the bytecode loop.",
    ]
    for row in listed:
        out += ["", f"**{row['label']}**", "", "| function | Ir per round trip | share |"]
        out.append("|---|---:|---:|")
        for name, value in row["top_functions"]:
            share = f"{100 * value / row['median']:.1f}%" if row["median"] else "-"
            out.append(f"| `{name}` | {value:,.0f} | {share} |")
    return out


def _spread_text(row: dict[str, Any]) -> str:
    if row["spread"] is None or len(row["per_round_trip"]) < 2:
        return "-"
    pct = 100 * row["spread"] / row["median"] if row["median"] else 0.0
    return f"{row['spread']:,.0f} ({pct:.2f}%)"


def _fmt_ratio(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None else "-"


def _millions(values: list[int]) -> str:
    return ", ".join(f"{v / 1e6:,.2f} M" for v in values) or "-"


# ------------------------------------------------------------------ command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.callgrind",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--variants",
        help=f"comma-separated servers (default: the available of {list(DEFAULT_VARIANTS)})",
    )
    p.add_argument("--conns", type=int, default=20, help="connections (20)")
    p.add_argument("--rounds", type=int, default=200, help="round trips per connection (200)")
    p.add_argument("--size", type=int, default=64, help="message bytes (64)")
    p.add_argument(
        "--per-connection",
        type=int,
        default=0,
        metavar="EXTRA",
        help="also run 0 rounds on conns + EXTRA connections: Ir per connection (0: off)",
    )
    p.add_argument("--reps", type=int, default=2, help="repetitions, for the spread (2)")
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        type=Path,
        help="also run the trionet variants with the trionet of this checkout (repeatable)",
    )
    p.add_argument(
        "--baseline-tree",
        type=Path,
        help="as --tree, and report each trionet row's ratio to this tree's row",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"measured runs at once ({DEFAULT_JOBS}); the counts do not depend on it",
    )
    p.add_argument(
        "--top",
        type=int,
        default=12,
        help="list the N C functions that cost most per round trip, per variant (12; 0: none)",
    )
    p.add_argument(
        "--discard-profiles",
        action="store_true",
        help="delete the callgrind output files after reading their totals",
    )
    return p.parse_args(argv)


def _choose_variants(spec: str | None) -> tuple[list[str], list[str]]:
    """The variant names to run and notes on the ones skipped.

    Raises:
      CallgrindError: an unknown name, or a named variant that cannot run here.
    """
    if spec is None:
        chosen, notes = [], []
        for name in DEFAULT_VARIANTS:
            why = VARIANTS[name].available()
            if why:
                notes.append(f"{name} skipped: {why}")
            else:
                chosen.append(name)
        return chosen, notes
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for name in names:
        if name not in VARIANTS:
            raise CallgrindError(f"variants: unknown {name!r}; known: {sorted(VARIANTS)}")
        why = VARIANTS[name].available()
        if why:
            raise CallgrindError(f"variants: {name} cannot run here: {why}")
    return names, []


def _check_settings(args: argparse.Namespace) -> Settings:
    for name in ("conns", "rounds", "size", "reps", "jobs"):
        if getattr(args, name) < 1:
            raise CallgrindError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if shutil.which("valgrind") is None:
        raise CallgrindError("valgrind not found (Debian: apt-get install valgrind)")
    if args.top < 0:
        raise CallgrindError(f"--top must be >= 0, got {args.top}")
    if args.per_connection < 0:
        raise CallgrindError(f"--per-connection must be >= 0, got {args.per_connection}")
    if args.top and args.discard_profiles:
        raise CallgrindError("--top needs the callgrind files: use --top 0 with --discard-profiles")
    return Settings(
        args.conns,
        args.rounds,
        args.size,
        args.reps,
        keep_profiles=not args.discard_profiles,
        top=args.top,
        jobs=args.jobs,
        extra_conns=args.per_connection,
    )


def _valgrind_version() -> str:
    proc = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "valgrind (unknown version)"


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write ``bench/results/callgrind-<time>.json`` and ``.md``.

    Returns:
      0; 1 when a measurement failed (recorded in the results); 2 on bad arguments.
    """
    args = parse_args(argv)
    try:
        settings = _check_settings(args)
        variants, notes = _choose_variants(args.variants)
        baseline = check_tree(args.baseline_tree) if args.baseline_tree else None
        trees = [check_tree(t) for t in args.tree] + ([baseline] if baseline else [])
        subjects = make_subjects(variants, trees)
        trionet_files = {
            str(tree): imported_trionet(tree)
            for tree in dict.fromkeys(s.tree for s in subjects if is_trionet(s.variant))
        }
    except CallgrindError as exc:
        print(f"python -m bench.callgrind: {exc}", file=sys.stderr)
        return 2
    for tree, path in trionet_files.items():
        if not Path(path).resolve().is_relative_to(tree):
            print(f"python -m bench.callgrind: tree {tree} imports {path}", file=sys.stderr)
            return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    profiles_dir = RESULTS_DIR / f"callgrind-{stamp}"
    profiles_dir.mkdir(parents=True, exist_ok=True)
    loadgen.build()
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings.__dict__,
        "baseline_tree": str(baseline) if baseline else None,
        "notes": notes,
        "trionet_files": trionet_files,
        "python": sys.version.split()[0],
        "valgrind": _valgrind_version(),
        "platform": platform.platform(),
        "profiles": str(profiles_dir.relative_to(REPO_ROOT)),
    }
    for note in notes:
        print(f"note: {note}", flush=True)
    t0 = time.monotonic()
    try:
        records = run_all(subjects, settings, profiles_dir, lambda s: print(s, flush=True))
    except CallgrindError as exc:
        print(f"python -m bench.callgrind: {exc}", file=sys.stderr)
        return 1
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["failures"] = [
        f"{r['label']} rep {r['rep']} {r['rounds']} rounds: {r['failure']}"
        for r in records
        if "failure" in r
    ]
    rows = summarize(records, subjects, settings, baseline)
    meta["notes"] += consistency_notes(rows)
    if settings.top:
        add_top_functions(rows, subjects, settings, profiles_dir, meta["notes"])
    text = markdown(meta, rows)
    data = {"meta": meta, "summary": rows, "runs": records}
    json_path = RESULTS_DIR / f"callgrind-{stamp}.json"
    md_path = json_path.with_suffix(".md")
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(text + "\n")
    (RESULTS_DIR / "callgrind-latest.json").write_text(json_path.read_text())
    (RESULTS_DIR / "callgrind-latest.md").write_text(text + "\n")
    if not settings.keep_profiles:
        profiles_dir.rmdir()
    print()
    print(text)
    print(f"wrote {json_path} and {md_path} in {meta['wall_s']} s")
    return 1 if meta["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
