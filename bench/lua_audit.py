"""The audit hook's cost: HTTP requests per second through a route with and without `audit`.

    .venv/bin/python bench/lua_audit.py [--duration 2] [--rounds 5] [--connections 16]

One haproxy runs a config compiled by this project with two HTTP routes to the same origin (a
second haproxy answering "ok" from memory): `plain` (option httplog, the default) and `audited`
(the shipped audit hook: a Lua sample fetch per log line builds the JSON object). Both routes
log through the same sink (haproxy's `log stdout`, discarded), so the ratio is the price of the
Lua fetch and the longer line, not of logging at all. wrk alternates between the routes, keep-
alive and one connection per request, for `--rounds` rounds; medians and their ratio come from
this one run. Loopback only; bounded by rounds x 4 x duration. Needs wrk and haproxy.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.haproxy.check import check
from haproxy_egress.haproxy.program import version
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.support import HAPROXY, free_port, port_open, wait_for, write_configmap

ORIGIN_CFG = """global
    nbthread 1
defaults
    mode http
    timeout client 10s
    timeout server 10s
    timeout connect 2s
frontend origin
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok
"""


@contextlib.contextmanager
def haproxy(config: Path, ports: list[int]) -> Iterator[None]:
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: all(port_open(p) for p in ports), timeout=10)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def wrk(port: int, seconds: float, connections: int, close: bool) -> float:
    """Requests per second of one wrk run."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", f"http://127.0.0.1:{port}/"]
    if close:
        argv[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(match.group(1))


def build(tmp: Path, origin_port: int, plain: int, audited: int, threads: int) -> Path:
    """Compile the two-route config the way the router does, stage the Lua, check it."""
    route = {"mode": "http", "destinations": [f"127.0.0.1:{origin_port}"], "check": False}
    cm = tmp / "configmap"
    write_configmap(
        cm,
        {
            "routes.yaml": {
                "routes": [
                    {"name": "plain", "listen": f"127.0.0.1:{plain}", **route},
                    {
                        "name": "audited",
                        "listen": f"127.0.0.1:{audited}",
                        "hooks": ["audit"],
                        **route,
                    },
                ]
            }
        },
    )
    snapshot = read_snapshot(cm)
    config = load_snapshot(snapshot, {})
    hook_set = hooks.resolve(config, snapshot.files)
    run_dir = tmp / "run"
    options = RenderOptions(run_dir=run_dir, log_stdout=True, threads=threads)
    text = render(config, options, hooks=hook_set)
    staging.stage(hook_set, RunDir(run_dir).lua)
    path = run_dir / "haproxy.cfg"
    path.write_text(text)
    check(path, HAPROXY)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="haproxy nbthread of the router")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-lua-audit.") as tmpdir:
        tmp = Path(tmpdir)
        origin_port, plain, audited = free_port(), free_port(), free_port()
        origin_cfg = tmp / "origin.cfg"
        origin_cfg.write_text(ORIGIN_CFG.format(port=origin_port))
        router_cfg = build(tmp, origin_port, plain, audited, args.threads)
        results: dict[tuple[str, str], list[float]] = {}
        with haproxy(origin_cfg, [origin_port]), haproxy(router_cfg, [plain, audited]):
            for port in (plain, audited):  # warm-up
                wrk(port, 1, args.connections, close=False)
            for round_ in range(args.rounds):
                for close in (False, True):
                    workload = "new connection" if close else "keep-alive"
                    pair = [("plain", plain), ("audit", audited)]
                    # Alternate who goes first: the machine's load drifts, both see it equally.
                    for name, port in pair if round_ % 2 == 0 else pair[::-1]:
                        rate = wrk(port, args.duration, args.connections, close)
                        results.setdefault((workload, name), []).append(rate)
    print(
        f"haproxy {version(HAPROXY)}, router nbthread {args.threads}, wrk -t1 "
        f"-c{args.connections}, {args.rounds} rounds x {args.duration:g}s, medians"
    )
    print(f"{'workload':<16} {'plain req/s':>12} {'audit req/s':>12} {'ratio':>7}")
    for workload in ("keep-alive", "new connection"):
        base = statistics.median(results[(workload, "plain")])
        audit = statistics.median(results[(workload, "audit")])
        print(f"{workload:<16} {base:>12.0f} {audit:>12.0f} {audit / base:>7.2f}")
    print(f"(took {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
