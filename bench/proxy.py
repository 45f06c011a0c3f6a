"""Proxy benchmark with real parts: nginx as the origin, wrk (and curl for one
long stream) as the client, and each proxy in between -- HAProxy in TCP mode
with one thread, a bare-trio proxy, trionet's TcpProxy with splice(2) on and off.

python -m bench.proxy                       # 3 interleaved rounds, ~9 minutes
python -m bench.proxy --rounds 1 --duration 2 --scenarios 1k,1m
python -m bench.proxy --variants haproxy,trionet

Scenarios: ``1k`` and ``1m`` are ``wrk -t1 -c50`` fetching a 1 KiB / 1 MiB
file over keep-alive connections for the window; ``1g`` is one connection
(curl) fetching a 1 GiB file. Rounds are interleaved (every variant of a
scenario, in a rotating order, then the next scenario, then the next round),
with a fresh proxy process per measurement. With 2+ cores the proxy runs on
the second core and nginx, wrk and curl on the first (``taskset``).

Reported per variant and scenario (medians over rounds): requests/s, MB/s
of response bodies, wrk's p50/p99 latency, the proxy's CPU per request
(utime+stime from /proc/<pid>/stat over the window), its RSS at the end,
and the ratio of requests/s (1g: MB/s) to HAProxy's. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "bench" / "servers"
RESULTS = ROOT / "bench" / "results"
TICK = os.sysconf("SC_CLK_TCK")
SIZES = {"1k": 1024, "1m": 1024 * 1024, "1g": 1024 * 1024 * 1024}
WRK_CONNS = 50

HAPROXY_CFG = """\
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{extra}
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server origin 127.0.0.1:{origin}
"""

NGINX_CFG = """\
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
    }}
}}
"""


def variant_argv(name: str, origin: int, port: int, workdir: Path) -> list[str]:
    """The command line of proxy ``name`` listening on ``port``."""
    if name.startswith("haproxy"):
        extra = "    option splice-auto" if name == "haproxy-splice" else ""
        cfg = workdir / f"{name}.cfg"
        cfg.write_text(HAPROXY_CFG.format(extra=extra, port=port, origin=origin))
        return ["haproxy", "-db", "-f", str(cfg)]
    script = {"trio": "trio_proxy.py", "trionet": "trionet_proxy.py"}
    base = "trionet" if name.startswith("trionet") else name
    argv = [sys.executable, str(SERVERS / script[base]), "--port", str(port)]
    argv += ["--upstream-port", str(origin)]
    return argv + (["--no-zero-copy"] if name == "trionet-copy" else [])


VARIANTS = ["haproxy", "haproxy-splice", "trio", "trionet", "trionet-copy"]
DESCRIBE = {
    "haproxy": "HAProxy 2.6, mode tcp, nbthread 1 (no splice: its default)",
    "haproxy-splice": "the same with `option splice-auto`",
    "trio": "bench/servers/trio_proxy.py: bare trio.serve_tcp, two pumps",
    "trionet": "bench/servers/trionet_proxy.py: TcpProxy, splice(2) (default)",
    "trionet-copy": "the same with zero_copy=False (recv/send through Python)",
}


@dataclass
class Measure:
    variant: str
    scenario: str
    round: int
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    mbps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_s: float = 0.0
    cpu_us_per_req: float = 0.0
    rss_kb: int = 0
    errors: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s: {proc.args!r}")


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


@contextmanager
def running(argv: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv``, wait until ``port`` accepts, always kill it at the end."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------ clients
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"wrk latency {text!r}: not understood")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]


def parse_wrk(out: str) -> WrkResult:
    """requests, seconds, p50/p99 (ms) and error counts from wrk's text."""
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if not m:
        raise ValueError(f"wrk output not understood:\n{out}")
    seconds = _ms(m.group(2) + m.group(3)) / 1e3
    latency: dict[str, float | None] = {}
    for pct in ("50", "99"):
        lat = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        latency[pct] = _ms(lat.group(1)) if lat else None
    errors: dict[str, int] = {}
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        for name, value in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            if int(value):
                errors[name] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors["non2xx"] = int(non2xx.group(1))
    return WrkResult(int(m.group(1)), seconds, latency["50"], latency["99"], errors)


def wrk(port: int, path: str, seconds: int, cpu: int | None) -> str:
    argv = ["wrk", "-t1", f"-c{WRK_CONNS}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    argv.append(f"http://127.0.0.1:{port}/{path}")
    done = subprocess.run(pinned(argv, cpu), capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}")
    return done.stdout


def curl_stream(port: int, cpu: int | None) -> tuple[int, float]:
    """Fetch /1g.bin once: (bytes, seconds)."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
    argv.append(f"http://127.0.0.1:{port}/1g.bin")
    done = subprocess.run(pinned(argv, cpu), capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr}")
    size, total = done.stdout.split()
    return int(size), float(total)


# ------------------------------------------------------------- one measure
def measure(
    variant: str,
    scenario: str,
    rnd: int,
    origin: int,
    workdir: Path,
    args: argparse.Namespace,
    cpus: tuple[int | None, int | None],
) -> Measure:
    proxy_cpu, client_cpu = cpus
    port = free_port()
    argv = pinned(variant_argv(variant, origin, port, workdir), proxy_cpu)
    result = Measure(variant, scenario, rnd)
    with running(argv, port) as proc:
        pid = proc.pid
        if scenario == "1g":
            if args.warmup:
                curl_stream(port, client_cpu)  # warm the page cache and the proxy
            before = cpu_ticks(pid)
            size, seconds = curl_stream(port, client_cpu)
            if size != SIZES["1g"]:
                result.errors["short"] = SIZES["1g"] - size
            result.requests, result.seconds = 1, seconds
        else:
            path = f"{scenario}.bin"
            if args.warmup:
                wrk(port, path, args.warmup, client_cpu)
            before = cpu_ticks(pid)
            got = parse_wrk(wrk(port, path, args.duration, client_cpu))
            result.requests, result.seconds = got.requests, got.seconds
            result.p50_ms, result.p99_ms, result.errors = got.p50_ms, got.p99_ms, got.errors
        result.cpu_s = (cpu_ticks(pid) - before) / TICK
        result.rss_kb = rss_kb(pid)
    result.rps = result.requests / result.seconds
    result.mbps = result.rps * SIZES[scenario] / 1e6
    result.cpu_us_per_req = result.cpu_s * 1e6 / max(result.requests, 1)
    return result


# ---------------------------------------------------------------- the origin
@contextmanager
def nginx_origin(workdir: Path, cpu: int | None) -> Iterator[int]:
    www = workdir / "www"
    www.mkdir()
    (www / "1k.bin").write_bytes(os.urandom(SIZES["1k"]))
    (www / "1m.bin").write_bytes(os.urandom(SIZES["1m"]))
    with open(www / "1g.bin", "wb") as f:  # sparse: the page cache serves zeros
        f.truncate(SIZES["1g"])
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(NGINX_CFG.format(dir=workdir, port=port))
    argv = pinned(["nginx", "-c", str(conf), "-p", str(workdir)], cpu)
    with running(argv, port):
        yield port


# ------------------------------------------------------------------ report
def _median(values: Sequence[float | None]) -> float | None:
    real = [v for v in values if v is not None]
    return statistics.median(real) if real else None


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(variant: str, rs: list[Measure], base: float | None, stream: bool) -> str:
    def med(key: str) -> float | None:
        return _median([getattr(r, key) for r in rs])

    key = "mbps" if stream else "rps"
    value = med(key)
    ratio = f"{value / base:.2f}" if base and value else "-"
    errors = sum(sum(r.errors.values()) for r in rs) or ""
    rss = _fmt((med("rss_kb") or 0) / 1024, ".1f")
    if stream:
        cells = [_fmt(value, ",.0f"), _fmt(med("cpu_s"), ".2f"), rss, ratio, str(errors)]
        return f"| {variant} | " + " | ".join(cells) + " |"
    cells = [
        _fmt(value, ",.0f"),
        _fmt(med("mbps"), ",.0f"),
        _fmt(med("p50_ms"), ".2f"),
        _fmt(med("p99_ms"), ".2f"),
        _fmt(med("cpu_us_per_req"), ",.0f"),
        rss,
        ratio,
        str(errors),
    ]
    return f"| {variant} | " + " | ".join(cells) + " |"


def summarize(results: list[Measure], variants: list[str], scenarios: list[str]) -> str:
    """Markdown tables, one per scenario: medians over rounds, ratios to HAProxy."""
    lines = []
    for scenario in scenarios:
        stream = scenario == "1g"
        rows = {
            v: [r for r in results if (r.variant, r.scenario) == (v, scenario)] for v in variants
        }
        key = "mbps" if stream else "rps"
        base = _median([getattr(r, key) for r in rows.get("haproxy", [])])
        if stream:
            lines.append("\n### 1g (one connection, curl)\n")
            lines.append("| variant | MB/s | proxy CPU s | RSS MiB | x HAProxy | errors |")
            lines.append("|---|---:|---:|---:|---:|---|")
        else:
            lines.append(f"\n### {scenario} (wrk -t1 -c{WRK_CONNS})\n")
            lines.append(
                "| variant | req/s | MB/s | p50 ms | p99 ms | CPU µs/req | RSS MiB "
                "| x HAProxy | errors |"
            )
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        lines += [_row(v, rs, base, stream) for v, rs in rows.items() if rs]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="wrk window, whole seconds (5)")
    p.add_argument("--warmup", type=int, default=1, help="wrk warm-up, whole seconds (1; 0: none)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--scenarios", default="1k,1m,1g")
    p.add_argument("--no-pin", action="store_true", help="do not pin the proxy to its own core")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    scenarios = args.scenarios.split(",")
    for name in variants:
        if name not in VARIANTS:
            p.error(f"--variants: {name!r} is not one of {', '.join(VARIANTS)}")
    for name in scenarios:
        if name not in SIZES:
            p.error(f"--scenarios: {name!r} is not one of {', '.join(SIZES)}")
    for tool in ("nginx", "wrk", "curl", "haproxy", "taskset"):
        if shutil.which(tool) is None:
            p.error(f"{tool} is not installed (see bench/README.md)")
    cores = sorted(os.sched_getaffinity(0))
    cpus: tuple[int | None, int | None] = (None, None)
    if len(cores) >= 2 and not args.no_pin:
        cpus = (cores[1], cores[0])
    results: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="trionet-proxy-bench-") as tmp:
        workdir = Path(tmp)
        with nginx_origin(workdir, cpus[1]) as origin:
            for rnd in range(args.rounds):
                for scenario in scenarios:
                    k = rnd % len(variants)
                    for variant in variants[k:] + variants[:k]:
                        r = measure(variant, scenario, rnd, origin, workdir, args, cpus)
                        results.append(r)
                        print(
                            f"round {rnd} {scenario:>3} {variant:<15} {r.rps:10,.0f} req/s "
                            f"{r.mbps:8,.0f} MB/s  cpu {r.cpu_us_per_req:8,.0f} µs/req "
                            f"rss {r.rss_kb / 1024:6.1f} MiB {r.errors or ''}",
                            flush=True,
                        )
    report = summarize(results, variants, scenarios)
    header = (
        f"# proxy benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}\n\n"
        f"{args.rounds} rounds, {args.duration} s windows, proxy pinned to core "
        f"{cpus[0]}, nginx/wrk/curl to core {cpus[1]}; medians over rounds.\n\n"
        + "\n".join(f"* `{v}`: {DESCRIBE[v]}" for v in variants)
    )
    print("\n" + header + report)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"proxy-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "results": [asdict(r) for r in results]}, indent=1)
    )
    (RESULTS / f"proxy-{stamp}.md").write_text(header + report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
