"""``python -m bench.workers``: trionet on 1 vs 2 worker processes, in one run.

python -m bench.workers --quick            # smoke run, about 30 s
python -m bench.workers                    # 5 repetitions (~4 minutes)
python -m bench.workers --reps 3 --scenarios connrate

Measures the connection rate and the 100-connection ping-pong (64 B) of the
same echo server run by ``trionet.WorkerSupervisor`` with 1 and with 2 workers
(``bench/servers/trionet_workers.py``, SO_REUSEPORT), beside the single-process
server (``trionet``: no supervisor, pinned to one core as in the main
benchmark), interleaved by the standard runner. Prints the standard report,
then the scaling table: the 2-worker / 1-worker ratio (target >= 1.7, issue 7)
next to the ceiling this machine allows when the load generator shares the
cores with the workers (see bench/README.md, "Multi-core workers").

Reuses the harness of ``python -m bench`` (the C load generator, the runner,
the report) through its registry and its ``run_matrix`` / ``report.write``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from bench import report
from bench.__main__ import parse_args, profile_from
from bench.registry import (
    SCENARIOS,
    VARIANTS,
    Comparison,
    Target,
    Variant,
    register_comparison,
    register_variant,
)
from bench.runner import run_matrix

TARGET = 1.7  # issue 7: 2 workers on 2 cores >= 1.7x one worker
DEFAULT_VARIANTS = ["trionet", "trionet-1w", "trionet-2w"]
DEFAULT_SCENARIOS = ["connrate", "pp-100x64"]

for n in (1, 2):
    register_variant(
        Variant(
            f"trionet-{n}w",
            "trionet_workers.py",
            ("--workers", str(n)),
            f"trionet.WorkerSupervisor, {n} worker process(es), SO_REUSEPORT",
            pin=False,  # the workers must be free to use every core
        )
    )

register_comparison(
    Comparison(
        "2 workers / 1 worker",
        "trionet-2w",
        "trionet-1w",
        {
            "connrate": Target("ops_per_s", ">=", TARGET),
            "pingpong": Target("ops_per_s", ">=", TARGET),
        },
    )
)
register_comparison(Comparison("1 worker / single process", "trionet-1w", "trionet", {}))


def scaling_rows(cells: dict[tuple[str, str], Any], cores: int) -> list[dict[str, float | str]]:
    """Per scenario: the 2w/1w ratio, the per-op cost ratio and this machine's ceiling.

    With the load generator on the same ``cores`` as the workers, one worker
    is limited by its own core (rate <= 1/S) while two share the cores with
    the client (rate <= cores/(S+L)); so ratio <= cores*S/(S+L) =
    cores/(1+L/S), where S and L are the server's and the client's CPU
    microseconds per operation (measured in the 2-worker run).
    """
    rows: list[dict[str, float | str]] = []
    for scenario in dict.fromkeys(s for s, _ in cells):
        one, two = cells.get((scenario, "trionet-1w")), cells.get((scenario, "trionet-2w"))
        if one is None or two is None:
            continue
        r1, r2 = one.median("ops_per_s"), two.median("ops_per_s")
        s1, s2 = one.median("server_us_per_op"), two.median("server_us_per_op")
        c2 = two.median("client_us_per_op")
        if not (r1 and r2 and s1 and s2 and c2):
            continue
        ceiling = min(2.0, cores / (1 + c2 / s2))
        rows.append(
            {
                "scenario": scenario,
                "ops_1w": r1,
                "ops_2w": r2,
                "ratio": r2 / r1,
                "cost_ratio": s2 / s1,
                "client_over_server": c2 / s2,
                "ceiling": ceiling,
                "of_ceiling": (r2 / r1) / ceiling,
            }
        )
    return rows


def scaling_table(rows: list[dict[str, float | str]]) -> str:
    out = [
        "## Scaling: 2 workers / 1 worker",
        "",
        "| scenario | 1 worker ops/s | 2 workers ops/s | ratio | target | server µs/op 2w/1w "
        "| client/server µs/op | ceiling here | ratio / ceiling |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = float(r["ratio"])
        verdict = "met" if ratio >= TARGET else "**not met**"
        out.append(
            f"| {r['scenario']} | {float(r['ops_1w']):,.0f} | {float(r['ops_2w']):,.0f} "
            f"| {ratio:.2f} | >= {TARGET} {verdict} | {float(r['cost_ratio']):.2f} "
            f"| {float(r['client_over_server']):.2f} | {float(r['ceiling']):.2f} "
            f"| {float(r['of_ceiling']):.0%} |"
        )
    out += [
        "",
        "ceiling here = cores / (1 + client µs/op / server µs/op): the best ratio possible",
        "when the load generator runs on the same cores as the workers. A server µs/op",
        "ratio near 1.00 means a second worker adds no per-operation cost.",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = args.variants.split(",") if args.variants else DEFAULT_VARIANTS
    scenarios = args.scenarios.split(",") if args.scenarios else DEFAULT_SCENARIOS
    unknown = [v for v in variants if v not in VARIANTS] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if unknown:
        print(f"python -m bench.workers: unknown variants/scenarios {unknown}", file=sys.stderr)
        return 2
    meta, records = run_matrix(variants, scenarios, profile_from(args), log=print)
    json_path, md_path, text = report.write(meta, records)
    cores = len(os.sched_getaffinity(0))
    table = scaling_table(scaling_rows(report.summarize(records), cores))
    with open(md_path, "a", encoding="utf-8") as f:
        f.write("\n" + table + "\n")
    print()
    print(text)
    print()
    print(table)
    print(f"\nwrote {json_path} and {md_path}")
    return 1 if any("failure" in r for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
