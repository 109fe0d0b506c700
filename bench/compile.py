"""Compile benchmark: load (read the ConfigMap dir + validate) + render + `haproxy -c`.

Times 10, 100, 1,000 and 10,000 routes (IP destinations, so no name is resolved) and prints
each stage, the per-route cost and the growth ratio between sizes, all measured in one run.
Goal: at most 2 s in all at 10,000 routes, and linear growth from 1,000 (x10 routes ≈ x10
time). The machine is shared, so besides wall seconds each stage's CPU seconds are printed
(this process's for load and render, haproxy's own for `haproxy -c`): they move far less
when other jobs compete for the cores.

    .venv/bin/python bench/compile.py [--sizes 10,100,1000,10000] [--repeat 3] [--no-allow-from]

`--no-allow-from` leaves the routes' client lists out: haproxy then loads no pattern file,
whose count `haproxy -c` pays for quadratically (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import resource
import tempfile
import time
from pathlib import Path

import yaml

from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.haproxy.check import check as haproxy_check
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.runtime import staging

GOAL_SECONDS, GOAL_ROUTES = 2.0, 10_000
FIRST_PORT = 20000
BASE_IP = ipaddress.IPv4Address("198.18.0.1")  # benchmarking range; never contacted


def route_keys(
    n: int,
    allow_from: bool = True,
    *,
    mode: str | None = None,
    address: str | None = None,
    check: bool | None = None,
) -> dict[str, str]:
    """n routes in 10 ConfigMap keys (key name → YAML), two IP destinations each; a mix of
    tcp and http unless `mode` is given, on every address unless `address` is, health
    checks as the default unless `check` is given."""
    per_key = max(1, n // 10)
    keys = {}
    for key in range(0, n, per_key):
        routes = []
        for i in range(key, min(n, key + per_key)):
            route: dict[str, object] = {
                "name": f"route-{i}",
                "listen": f"{address}:{FIRST_PORT + i}" if address else FIRST_PORT + i,
                "mode": mode or ("http" if i % 4 == 0 else "tcp"),
                "destinations": [f"{BASE_IP + 2 * i}:443", f"{BASE_IP + 2 * i + 1}:443"],
            }
            if check is not None:
                route["check"] = check
            if allow_from:
                route["allow_from"] = ["10.128.0.0/14"]
            routes.append(route)
        keys[f"routes-{key:05d}.yaml"] = yaml.safe_dump(
            {"version": 1, "routes": routes}, sort_keys=False
        )
    return keys


def write_routes(directory: Path, n: int, allow_from: bool = True) -> None:
    """`route_keys` written as files into `directory`."""
    for name, text in route_keys(n, allow_from).items():
        (directory / name).write_text(text)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    n: int, work: Path, allow_from: bool = True
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Wall and CPU seconds for (load, render, haproxy -c) of n routes."""
    cm = work / f"cm-{n}"
    cm.mkdir()
    write_routes(cm, n, allow_from)
    t0, c0 = time.perf_counter(), time.process_time()
    config = load_snapshot(read_snapshot(cm), {})
    t1, c1 = time.perf_counter(), time.process_time()
    options = RenderOptions(run_dir=work / "run")
    text = render(config, options)
    files = pattern_files(config)
    t2, c2 = time.perf_counter(), time.process_time()
    # The allow_from ACL files the config loads, written as the reload transaction writes
    # them (haproxy -c opens each). Computing them counts as render; writing them (one
    # fsync'd file per route, disk-bound) is left out of the figures.
    staging.write_maps(options.run.maps, files)
    cfg = work / f"haproxy-{n}.cfg"
    cfg.write_text(text)
    h0, t2w = _children_cpu(), time.perf_counter()
    haproxy_check(cfg)
    t3, h1 = time.perf_counter(), _children_cpu()
    assert len(config.routes) == n
    return (t1 - t0, t2 - t1, t3 - t2w), (c1 - c0, c2 - c1, h1 - h0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs per size")
    parser.add_argument("--no-allow-from", action="store_true", help="routes without allow_from")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: list[tuple[int, tuple[float, float, float], tuple[float, float, float]]] = []
    with tempfile.TemporaryDirectory(prefix="egress-bench.") as tmp:
        for n in sizes:
            runs = []
            for r in range(args.repeat):
                work = Path(tmp) / f"{n}-{r}"
                work.mkdir()
                runs.append(measure(n, work, allow_from=not args.no_allow_from))
            wall = min((r[0] for r in runs), key=sum)
            cpu = min((r[1] for r in runs), key=sum)
            rows.append((n, wall, cpu))
    print(
        f"{'routes':>7} {'load s':>8} {'render s':>9} {'haproxy -c s':>13} {'total s':>8}"
        f" {'ms/route':>9} {'x prev':>7} {'CPU: load':>10} {'render':>7} {'-c':>6} {'total':>6}"
    )
    prev: float | None = None
    ok = True
    for n, (load, rend, check), cpu in rows:
        total = load + rend + check
        growth = f"{total / prev:.1f}" if prev else "-"
        print(
            f"{n:>7} {load:>8.3f} {rend:>9.3f} {check:>13.3f} {total:>8.3f}"
            f" {1000 * total / n:>9.3f} {growth:>7} {cpu[0]:>10.3f} {cpu[1]:>7.3f}"
            f" {cpu[2]:>6.3f} {sum(cpu):>6.3f}"
        )
        prev = total
        if n == GOAL_ROUTES and total > GOAL_SECONDS:
            ok = False
    if GOAL_ROUTES in sizes:
        verdict = "met" if ok else "MISSED"
        print(f"goal <= {GOAL_SECONDS:.0f} s at {GOAL_ROUTES:,} routes (wall): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
