"""``python -m bench``: the echo benchmark (see bench/README.md).

python -m bench --quick                 # smoke run, < 2 minutes
python -m bench                         # full run (~20 minutes)
python -m bench --variants trionet,trio --scenarios pp-100x64 --reps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Mapping

from . import report
from .registry import BASELINE, FULL, QUICK, SCENARIOS, VARIANTS, Profile
from .runner import run_matrix


def _names(value: str, known: Mapping[str, object], what: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; known: {sorted(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke profile: 1 rep, short windows")
    p.add_argument(
        "--variants", help=f"comma-separated servers (default: all available of {list(VARIANTS)})"
    )
    p.add_argument("--scenarios", help=f"comma-separated scenarios (default: {list(SCENARIOS)})")
    p.add_argument("--reps", type=int, help="override repetitions")
    p.add_argument("--duration", type=float, help="override the measured window (s)")
    p.add_argument("--warmup", type=float, help="override the warm-up (s)")
    p.add_argument("--idle-conns", type=int, help="override the idle connection count")
    p.add_argument("--idle-window", type=float, help="override the idle CPU window (s)")
    p.add_argument("--list", action="store_true", help="list variants and scenarios and exit")
    return p.parse_args(argv)


def profile_from(args: argparse.Namespace) -> Profile:
    profile = QUICK if args.quick else FULL
    overrides = {
        "reps": args.reps,
        "duration": args.duration,
        "warmup": args.warmup,
        "idle_conns": args.idle_conns,
        "idle_window": args.idle_window,
    }
    changes = {k: v for k, v in overrides.items() if v is not None}
    if any(v <= 0 for v in changes.values()):
        raise SystemExit(f"python -m bench: overrides must be positive, got {changes}")
    return dataclasses.replace(profile, **changes)


def main(
    argv: list[str] | None = None,
    *,
    default_variants: list[str] | None = None,
    default_scenarios: list[str] | None = None,
    prefix: str = "bench",
) -> int:
    """Parse ``argv``, run the matrix, write ``bench/results/<prefix>-<profile>-<time>.*``.

    Another benchmark module (``bench/workers.py``) registers its variants and
    calls this with its own defaults and ``prefix``.

    Returns:
      The exit status: 0, 1 when a run failed (recorded in the results), 2 on bad arguments.
    """
    args = parse_args(argv)
    if args.list:
        for v in VARIANTS.values():
            why = v.available()
            print(
                f"variant  {v.name:<16} {v.description}" + (f" (unavailable: {why})" if why else "")
            )
        for s in SCENARIOS.values():
            print(f"scenario {s.name:<16} {s.description}")
        return 0
    try:
        variants = (
            _names(args.variants, VARIANTS, "variants")
            if args.variants
            else [n for n in (default_variants or VARIANTS) if VARIANTS[n].available() is None]
        )
        scenarios = (
            _names(args.scenarios, SCENARIOS, "scenarios")
            if args.scenarios
            else list(default_scenarios or SCENARIOS)
        )
    except argparse.ArgumentTypeError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    for name in variants:
        why = VARIANTS[name].available()
        if why:
            print(f"python -m bench: variant {name} unavailable: {why}", file=sys.stderr)
            return 2
    if BASELINE not in variants:
        print(f"note: {BASELINE} not selected, so no ratios to bare trio", file=sys.stderr)
    profile = profile_from(args)
    started = time.monotonic()
    meta, records = run_matrix(variants, scenarios, profile, log=lambda s: print(s, flush=True))
    meta["wall_s"] = round(time.monotonic() - started, 1)
    json_path, md_path, text = report.write(meta, records, prefix=prefix)
    print()
    print(text)
    print(f"wrote {json_path} and {md_path} in {meta['wall_s']} s")
    failed = sum(1 for r in records if "failure" in r)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
