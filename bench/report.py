"""Turn run records into medians, ratios, a JSON file and a Markdown table."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import BASELINE, COMPARISONS, SCENARIOS

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


def comparison_rows(cells: dict[tuple[str, str], Cell]) -> list[dict[str, Any]]:
    """One row per comparison and scenario both sides ran."""
    rows = []
    scenarios = list(dict.fromkeys(s for s, _ in cells))
    for comp in COMPARISONS:
        for scenario in scenarios:
            value = ratio(cells, scenario, comp.numerator, comp.denominator)
            if value is None:
                continue
            target = comp.targets.get(SCENARIOS[scenario].mode)
            rows.append(
                {
                    "comparison": comp.label,
                    "scenario": scenario,
                    "metric": SCENARIOS[scenario].metric,
                    "ratio": round(value, 4),
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
        "server CPU | client CPU | client µs/op | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
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
                f"{_fmt(cell.spread('client_us_per_op'), 1)} | {errors} |"
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


def _comparison_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| comparison | scenario | metric | ratio | target | |",
        "|---|---|---|---:|---|---|",
    ]
    for row in rows:
        verdict = {True: "met", False: "**not met**", None: ""}[row["met"]]
        lines.append(
            f"| {row['comparison']} | {row['scenario']} | {row['metric']} | "
            f"{row['ratio']:.3f} | {row['target'] or ''} | {verdict} |"
        )
    return lines


def markdown(meta: dict[str, Any], cells: dict[tuple[str, str], Cell]) -> str:
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
    rows = comparison_rows(cells)
    if rows:
        out += ["## Comparisons (ratio of medians)", "", *_comparison_table(rows), ""]
    return "\n".join(out)


def write(
    meta: dict[str, Any],
    records: list[dict[str, Any]],
    results_dir: Path = RESULTS_DIR,
    stem: str | None = None,
) -> tuple[Path, Path, str]:
    """Write ``<stem>.json`` and ``<stem>.md`` (plus ``latest.*`` copies).

    Returns:
      The JSON path, the Markdown path and the Markdown text.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"bench-{meta['profile']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        "comparisons": comparison_rows(cells),
        "runs": records,
    }
    text = markdown(meta, cells)
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(text + "\n")
    (results_dir / "latest.json").write_text(json_path.read_text())
    (results_dir / "latest.md").write_text(text + "\n")
    return json_path, md_path, text
