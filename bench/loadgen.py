"""Build and drive the C load generator (``bench/loadgen.c``).

API::

    from bench.loadgen import build, run
    binary = build()                     # compiles into bench/build/ when stale
    result = run("pingpong", port=5000, pids=[server_pid], conns=100, size=64,
                 warmup=0.5, duration=2.0)
    result["ops_per_s"], result["server_cpu_s"], result["client_cpu_share"], ...

CLI (builds, then runs the binary with the same arguments)::

    python -m bench.loadgen pingpong --port 5000 --conns 100 --size 64 --pids 1234

The options and the JSON fields are documented in ``bench/README.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
SOURCE = BENCH_DIR / "loadgen.c"
BUILD_DIR = BENCH_DIR / "build"
BINARY = BUILD_DIR / "loadgen"
MODES = ("pingpong", "connrate", "idle")


class LoadgenError(RuntimeError):
    """The load generator could not be built, failed, or printed no result."""


def build(force: bool = False) -> Path:
    """Compile ``loadgen.c`` with the system C compiler unless the binary is current.

    Returns:
      The path of the binary (``bench/build/loadgen``, gitignored).

    Raises:
      LoadgenError: no C compiler, or the compile failed (with its output).
    """
    if not force and BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise LoadgenError("no C compiler (gcc/cc) found; install gcc or set CC")
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = BINARY.with_suffix(".tmp")
    cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(SOURCE), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LoadgenError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    tmp.replace(BINARY)
    return BINARY


def command(mode: str, port: int, pids: list[int], **options: float | int | str) -> list[str]:
    """The load generator's argv for ``mode`` against ``port``, measuring ``pids``.

    Keyword options map to ``--name value`` (``conns``, ``size``, ``warmup``,
    ``duration``, ``settle``, ``window``, ``concurrency``, ``host``, and for a
    fixed number of round trips instead of a window ``rounds`` and ``stall``).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    argv = [str(build()), mode, "--port", str(port)]
    if pids:
        argv += ["--pids", ",".join(str(p) for p in pids)]
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    return argv


def run(
    mode: str, port: int, pids: list[int], timeout: float = 300.0, **options: float | int | str
) -> dict[str, Any]:
    """Run the load generator once and return its JSON result (plus ``"stderr"``).

    Raises:
      LoadgenError: it exited non-zero, timed out, or printed no JSON.
    """
    argv = command(mode, port, pids, **options)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise LoadgenError(f"{' '.join(argv)} timed out after {timeout} s") from exc
    if proc.returncode != 0:
        raise LoadgenError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise LoadgenError(f"no JSON from {' '.join(argv)}: {proc.stdout!r}") from exc
    result["stderr"] = proc.stderr.strip()
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    binary = build()
    return subprocess.call([str(binary), *args])


if __name__ == "__main__":
    sys.exit(main())
