"""``python -m bench.workers``: trionet on 1 vs 2 worker processes, in one run.

python -m bench.workers --quick            # smoke run, about a minute
python -m bench.workers                    # 5 repetitions (~5 minutes)
python -m bench.workers --reps 3 --scenarios connrate

Measures the connection rate and the 100-connection ping-pong (64 B) of the
same echo server run by ``trionet.WorkerSupervisor`` with 1 and with 2 workers
(``bench/servers/trionet_workers.py``; SO_REUSEPORT), beside the
single-process server (``trionet``, no supervisor, pinned to one core as in the
main benchmark), interleaved by the standard runner, and prints the
"2 workers / 1 worker" ratio table (target >= 1.7 on 2 cores, issue 7 item 3).

It reuses the harness of ``python -m bench`` (the C load generator, the runner,
the report) through its registry; see bench/README.md, "Multi-core workers".
"""

from __future__ import annotations

import sys

from bench.__main__ import main
from bench.registry import (
    Comparison,
    Target,
    Variant,
    register_comparison,
    register_variant,
)

WORKER_COUNTS = (1, 2)
SCENARIOS = ["connrate", "pp-100x64"]
TARGET = 1.7  # issue 7: 2 workers on 2 cores >= 1.7x one worker

for n in WORKER_COUNTS:
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
register_comparison(
    Comparison(
        "1 worker / single process",
        "trionet-1w",
        "trionet",
        {},
    )
)

if __name__ == "__main__":
    sys.exit(
        main(
            sys.argv[1:],
            default_variants=["trionet", "trionet-1w", "trionet-2w"],
            default_scenarios=SCENARIOS,
            prefix="workers",
        )
    )
