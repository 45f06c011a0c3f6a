"""Turn run records into medians, ratios, a JSON file and a Markdown table."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import BASELINE, COMPARISONS, IDLE_CPU_ZERO, SCENARIOS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Spread:
    """Median with min and max of a list of samples."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), len(values))

    def fmt(self, digits: int = 0, scale: float = 1.0) -> str:
        m, lo, hi = (x * scale for x in (self.median, self.low, self.high))
        if self.n == 1:
            return f"{m:,.{digits}f}"
        return f"{m:,.{digits}f} [{lo:,.{digits}f}-{hi:,.{digits}f}]"


@dataclass
class Cell:
    """Everything measured for one (scenario, variant) pair."""

    scenario: str
    variant: str
    runs: int = 0
    failures: int = 0
    errors: int = 0
    series: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.series.setdefault(name, []).append(value)

    def spread(self, name: str) -> Spread | None:
        return Spread.of(self.series.get(name, []))

    def median(self, name: str) -> float | None:
        s = self.spread(name)
        return s.median if s else None


def summarize(records: list[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """Group records by (scenario, variant) and derive per-run figures."""
    cells: dict[tuple[str, str], Cell] = {}
    for rec in records:
        key = (rec["scenario"], rec["variant"])
        cell = cells.setdefault(key, Cell(*key))
        cell.runs += 1
        if "failure" in rec:
            cell.failures += 1
            continue
        r = rec["result"]
        cell.errors += int(r["errors"])
        cell.add("server_cpu_share", r["server_cpu_share"])
        cell.add("client_cpu_share", r["client_cpu_share"])
        cell.add("server_wait_share", r.get("server_wait_share", 0.0))
        cell.add("client_wait_share", r.get("client_wait_share", 0.0))
        if r["mode"] == "idle":
            cell.add("bytes_per_conn", r["bytes_per_conn"])
            cell.add("idle_cpu_ms", r["server_cpu_s"] * 1e3)
            cell.add("idle_run_us", r["server_run_ns"] / 1e3)
            cell.add("idle_ctxsw", r["server_ctxsw"])
            cell.add("established", r["established"])
        else:
            cell.add("ops_per_s", r["ops_per_s"])
            if r["ops"]:
                cell.add("server_us_per_op", r["server_cpu_s"] / r["ops"] * 1e6)
                cell.add("client_us_per_op", r["client_cpu_s"] / r["ops"] * 1e6)
    return cells


def ratio(cells: dict[tuple[str, str], Cell], scenario: str, num: str, den: str) -> float | None:
    """median(num) / median(den) of the scenario's headline metric."""
    metric = SCENARIOS[scenario].metric
    a, b = cells.get((scenario, num)), cells.get((scenario, den))
    if a is None or b is None:
        return None
    ma, mb = a.median(metric), b.median(metric)
    if ma is None or not mb:
        return None
    return ma / mb


def paired_ratios(
    records: list[dict[str, Any]], scenario: str, num: str, den: str, metric: str
) -> list[float]:
    """num / den of ``metric`` within each repetition: the two ran next to each
    other in time, so drift of the machine's load cancels better than across reps."""
    by_rep: dict[int, dict[str, float]] = {}
    for rec in records:
        if rec["scenario"] != scenario or "failure" in rec:
            continue
        r = rec["result"]
        value = r.get(metric)
        if value is None and metric == "server_us_per_op" and r.get("ops"):
            value = r["server_cpu_s"] / r["ops"] * 1e6
        if value is not None:
            by_rep.setdefault(rec.get("rep", 0), {})[rec["variant"]] = float(value)
    return [v[num] / v[den] for v in by_rep.values() if num in v and den in v and v[den]]


def comparison_rows(
    cells: dict[tuple[str, str], Cell], records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per comparison and scenario both sides ran."""
    rows = []
    scenarios = list(dict.fromkeys(s for s, _ in cells))
    for comp in COMPARISONS:
        for scenario in scenarios:
            value = ratio(cells, scenario, comp.numerator, comp.denominator)
            if value is None:
                continue
            metric = SCENARIOS[scenario].metric
            # A target for the scenario itself wins over its mode's.
            target = comp.targets.get(scenario) or comp.targets.get(SCENARIOS[scenario].mode)
            paired = Spread.of(
                paired_ratios(records, scenario, comp.numerator, comp.denominator, metric)
            )
            cpu = Spread.of(
                paired_ratios(
                    records, scenario, comp.numerator, comp.denominator, "server_us_per_op"
                )
            )
            rows.append(
                {
                    "comparison": comp.label,
                    "scenario": scenario,
                    "metric": metric,
                    "ratio": round(value, 4),
                    "paired": paired.__dict__ if paired else None,
                    "us_per_op_ratio": cpu.__dict__ if cpu else None,
                    "target": str(target) if target else None,
                    "met": target.met(value) if target else None,
                }
            )
    return rows


# ----------------------------------------------------------------- Markdown
def _fmt(s: Spread | None, digits: int = 0, scale: float = 1.0) -> str:
    return s.fmt(digits, scale) if s else "-"


def _pct(cell: Cell, name: str) -> str:
    m = cell.median(name)
    return f"{m:.0%}" if m is not None else "-"


def _vs_base(cells: dict[tuple[str, str], Cell], scenario: str, variant: str) -> str:
    value = ratio(cells, scenario, variant, BASELINE)
    return f"{value:.3f}" if value is not None else "-"


def _throughput_table(cells: dict[tuple[str, str], Cell], scenarios: list[str]) -> list[str]:
    lines = [
        "| scenario | server | ops/s median [min-max] | x trio | server µs/op | "
        "server CPU | client CPU | client µs/op | server waited | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        for (sc, variant), cell in cells.items():
            if sc != scenario:
                continue
            errors = f"{cell.errors}" + (f" + {cell.failures} failed runs" if cell.failures else "")
            lines.append(
                f"| {scenario} | {variant} | {_fmt(cell.spread('ops_per_s'))} | "
                f"{_vs_base(cells, scenario, variant)} | "
                f"{_fmt(cell.spread('server_us_per_op'), 1)} | "
                f"{_pct(cell, 'server_cpu_share')} | {_pct(cell, 'client_cpu_share')} | "
                f"{_fmt(cell.spread('client_us_per_op'), 1)} | "
                f"{_pct(cell, 'server_wait_share')} | {errors} |"
            )
    return lines


def _idle_table(cells: dict[tuple[str, str], Cell], scenario: str) -> list[str]:
    lines = [
        "| server | connections | RSS bytes/conn median [min-max] | x trio | "
        "idle CPU ms (utime+stime) | idle run µs (schedstat) | wake-ups | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (sc, variant), cell in cells.items():
        if sc != scenario:
            continue
        errors = f"{cell.errors}" + (f" + {cell.failures} failed runs" if cell.failures else "")
        est = cell.median("established")
        lines.append(
            f"| {variant} | {est:.0f} | {_fmt(cell.spread('bytes_per_conn'))} | "
            f"{_vs_base(cells, scenario, variant)} | {_fmt(cell.spread('idle_cpu_ms'))} | "
            f"{_fmt(cell.spread('idle_run_us'))} | {_fmt(cell.spread('idle_ctxsw'))} | {errors} |"
            if est is not None
            else f"| {variant} | - | - | - | - | - | - | {errors} |"
        )
    return lines


def _spread_dict(d: dict[str, Any] | None, digits: int = 3) -> str:
    return Spread(**d).fmt(digits) if d else "-"


def _idle_cpu_checks(cells: dict[tuple[str, str], Cell], scenario: str, window: float) -> list[str]:
    lines = []
    for variant in IDLE_CPU_ZERO:
        cell = cells.get((scenario, variant))
        cpu = cell.spread("idle_cpu_ms") if cell else None
        if cell is None or cpu is None:
            continue
        verdict = "met" if cpu.high == 0 else "**not met**"
        lines.append(
            f"Target (issue 4): `{variant}` does no measurable work while idle: "
            f"{cpu.fmt()} ms CPU (utime+stime, 10 ms ticks), "
            f"{_fmt(cell.spread('idle_run_us'))} µs run time, "
            f"{_fmt(cell.spread('idle_ctxsw'))} wake-ups in {window:g} s: {verdict}."
        )
    return lines


def _stderr_notes(records: list[dict[str, Any]]) -> list[str]:
    """Failed runs, and anything a server or the load generator wrote on stderr."""
    notes = []
    for rec in records:
        where = f"rep {rec.get('rep', 0)} {rec['scenario']} {rec['variant']}"
        if "failure" in rec:
            failure = " / ".join(str(rec["failure"]).splitlines())
            notes.append(f"- {where}: run failed: {failure}")
        for who, text in (
            ("server", rec.get("server_stderr")),
            ("load generator", rec.get("result", {}).get("stderr")),
        ):
            if text:
                first = text.splitlines()[0][:200]
                notes.append(f"- {where}: {who} stderr: `{first}`")
    return ["## Failures and stderr", "", *notes, ""] if notes else []


def _comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| comparison | scenario | metric | ratio of medians | per-rep ratios | target | "
        "| server µs/op ratio |",
        "|---|---|---|---:|---:|---|---|---:|",
    ]
    for row in rows:
        verdict = {True: "met", False: "**not met**", None: ""}[row["met"]]
        lines.append(
            f"| {row['comparison']} | {row['scenario']} | {row['metric']} | "
            f"{row['ratio']:.3f} | {_spread_dict(row['paired'])} | {row['target'] or ''} | "
            f"{verdict} | {_spread_dict(row['us_per_op_ratio'])} |"
        )
    return lines


def markdown(
    meta: dict[str, Any], cells: dict[tuple[str, str], Cell], records: list[dict[str, Any]]
) -> str:
    """The whole report as Markdown."""
    scenarios = list(dict.fromkeys(s for s, _ in cells))
    profile = meta["profile"]
    out = [
        f"# trionet echo benchmark — {profile['name']} profile",
        "",
        f"- started {meta['started']}, git {meta['git']}, Python {meta['python']}, "
        f"{meta['platform']}",
        f"- {meta['cores']} cores; {meta['cpus']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in meta['loadavg_at_start'])}",
        f"- {profile['reps']} repetitions, interleaved; one fresh server process per run; "
        f"warm-up {profile['warmup']} s, window {profile['duration']} s; idle: "
        f"{meta['idle_conns']} connections, settle {profile['idle_settle']} s, "
        f"window {profile['idle_window']} s",
        f"- load generator: {meta['loadgen']} (C, epoll, one thread)",
        *(f"- **note:** {n}" for n in meta["notes"]),
        "",
        "Servers: " + "; ".join(f"`{k}` = {v}" for k, v in meta["variants"].items()),
        "",
    ]
    busy = [s for s in scenarios if SCENARIOS[s].mode != "idle"]
    if busy:
        out += ["## Round trips and connection rate", "", *_throughput_table(cells, busy), ""]
    for s in scenarios:
        if SCENARIOS[s].mode == "idle":
            out += [f"## Idle connections ({s})", "", *_idle_table(cells, s), ""]
            out += [*_idle_cpu_checks(cells, s, profile["idle_window"]), ""]
    out += _stderr_notes(records)
    rows = comparison_rows(cells, records)
    if rows:
        out += ["## Comparisons (ratio of medians)", "", *_comparison_table(rows), ""]
    return "\n".join(out)


def write(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    results_dir: Path = RESULTS_DIR,
    prefix: str = "bench",
) -> tuple[Path, Path, str]:
    """Write ``<prefix>-<profile>-<time>.json`` and ``.md``, plus ``<prefix>-latest.*`` copies.

    Returns:
      The JSON path, the Markdown path and the Markdown text.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}-{meta['profile']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    cells = summarize(records)
    summary = [
        {
            "scenario": c.scenario,
            "variant": c.variant,
            "runs": c.runs,
            "failures": c.failures,
            "errors": c.errors,
            "ratio_to_trio": ratio(cells, c.scenario, c.variant, BASELINE),
            **{name: Spread.of(vals).__dict__ for name, vals in c.series.items() if vals},
        }
        for c in cells.values()
    ]
    data = {
        "meta": meta,
        "summary": summary,
        "comparisons": comparison_rows(cells, records),
        "runs": records,
    }
    text = markdown(meta, cells, records)
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(text + "\n")
    (results_dir / f"{prefix}-latest.json").write_text(json_path.read_text())
    (results_dir / f"{prefix}-latest.md").write_text(text + "\n")
    return json_path, md_path, text


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.report RESULTS.json``: print the Markdown report again."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json", file=sys.stderr)
        return 2
    data = json.loads(Path(args[0]).read_text())
    records = data["runs"]
    print(markdown(data["meta"], summarize(records), records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
