"""Reload benchmark: swap-to-serving latency and failed requests across reloads under load.

    .venv/bin/python bench/reload.py [--swaps 60] [--reloads 100]

1. Latency from the kubelet-style `..data` rename to the new route answering, over --swaps
   swaps with the default debounce (p50/p99; goal p50 <= 1.0 s, p99 <= 2 s).
2. Failed requests while --reloads real reloads happen under load, once with a new connection
   per request and once with keep-alive clients (goal 0 in both).
3. The supervisor's RSS (with the exporter scraped) after all of it (goal <= 60 MB).

With `--scale 1000,10000` it runs instead, for each size, a router with that many tcp routes
(on 127.0.0.77, no health checks) and times its start, one destination change and one added route
(from the `..data` rename to the changed route answering), and records the RSS of the
supervisor and of haproxy's master and worker. Everything runs on 127.0.0.1 and is bounded in
count and time.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from tests.kubelet import ConfigMapVolume  # noqa: E402
from tests.load import LoadGen  # noqa: E402
from tests.router import Router  # noqa: E402
from tests.router import http_route as _route  # noqa: E402
from tests.support import HttpOrigin, free_port, http_get  # noqa: E402


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def swap_latency(
    volume: ConfigMapVolume, origin: HttpOrigin, base: dict[str, Any], n: int
) -> list[float]:
    """Seconds from the ..data rename to the new route's first good answer."""
    out = []
    for i in range(n):
        port = free_port()
        keys = {"routes.yaml": {"routes": [base, _route(f"new-{i}", port, origin)]}}
        start = time.monotonic()
        volume.write(keys)
        deadline = start + 10
        while time.monotonic() < deadline:
            try:
                if http_get(port, timeout=0.5) == "origin-a":
                    break
            except OSError:
                time.sleep(0.01)
        else:
            raise SystemExit(f"swap {i}: the new route never answered")
        out.append(time.monotonic() - start)
    return out


def reloads_under_load(
    router: Router,
    volume: ConfigMapVolume,
    origin: HttpOrigin,
    base: dict[str, Any],
    reloads: int,
    *,
    keepalive: bool,
) -> tuple[int, int, float]:
    """(ok, failed, seconds) for `reloads` confirmed reloads under 4 load clients."""
    port = int(base["listen"].split(":")[1])
    before = router.metric("haproxy_egress_reloads_total") or 0.0
    load = LoadGen(port, keepalive=keepalive, clients=4, max_seconds=300, expect="origin-a")
    start = time.monotonic()
    load.start()
    try:
        for i in range(reloads):
            volume.write(
                {
                    "routes.yaml": {
                        "routes": [
                            {**base, "connect_timeout": f"{5 + i % 2}s"},
                            _route(f"r{i}", free_port(), origin),
                        ]
                    }
                }
            )
            target = before + i + 1
            deadline = time.monotonic() + 10
            while (router.metric("haproxy_egress_reloads_total") or 0) < target:
                if time.monotonic() > deadline:
                    raise SystemExit(f"reload {i} was not confirmed")
                time.sleep(0.02)
    finally:
        result = load.stop()
    return result.ok, result.failed, time.monotonic() - start


# Below the ephemeral range, so no client port collides; on an address of its own, since other
# test routers on this machine bind the same ports on 127.0.0.1.
SCALE_HOST, SCALE_FIRST_PORT = "127.0.0.77", 21000
SCALE_KEYS = 10


def scale_keys(n: int, origin: HttpOrigin, moved: HttpOrigin | None = None) -> dict[str, Any]:
    """n tcp routes on SCALE_HOST in 10 ConfigMap keys; `moved`: route 0 goes there instead."""
    per_key = max(1, n // SCALE_KEYS)
    keys: dict[str, Any] = {}
    for first in range(0, n, per_key):
        routes = []
        for i in range(first, min(n, first + per_key)):
            target = moved if (i == 0 and moved is not None) else origin
            routes.append(
                {
                    "name": f"route-{i}",
                    "listen": f"{SCALE_HOST}:{SCALE_FIRST_PORT + i}",
                    "destinations": [f"127.0.0.1:{target.port}"],
                    "check": False,
                }
            )
        keys[f"routes-{first:05d}.yaml"] = {"routes": routes}
    return keys


def answered(port: int, body: str, timeout: float) -> float:
    """Seconds until a new connection to `port` is answered with `body` (bounded)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if http_get(port, host=SCALE_HOST, timeout=1) == body:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"port {port} did not answer {body!r} within {timeout:.0f} s")


def reload_count(router: Router) -> tuple[float, float]:
    """(haproxy_egress_reloads_total, seconds the scrape took): at 10,000 routes /metrics
    can take longer than Router.metric's 5 s timeout, so it is read here with one regex."""
    start = time.monotonic()
    text = requests.get(router.url("/metrics"), timeout=120).text
    took = time.monotonic() - start
    match = re.search(r"^haproxy_egress_reloads_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    return (float(match.group(1)) if match else 0.0), took


def scale(sizes: list[int], tmp: Path) -> None:
    """Start, a destination change and an added route at each size; RSS of every process."""
    a, b = HttpOrigin("origin-a").start(), HttpOrigin("origin-b").start()
    rows = []
    try:
        for n in sizes:
            volume = ConfigMapVolume(tmp / f"cm-{n}")
            volume.write(scale_keys(n, a))
            router = Router(
                tmp / f"router-{n}",
                config_dir=volume.directory,
                env={"EGRESS_RELOAD_DEBOUNCE": "0.3", "EGRESS_POLL_SECONDS": "10"},
            )
            try:
                start = time.monotonic()
                router.start(wait_ready=False)
                router.wait_ready(timeout=300)
                answered(SCALE_FIRST_PORT, "origin-a", 60)
                started = time.monotonic() - start
                reloads, scraped = reload_count(router)
                volume.write(scale_keys(n, a, moved=b))
                moved = answered(SCALE_FIRST_PORT, "origin-b", 120)
                keys = scale_keys(n, a, moved=b)
                extra = {
                    "name": "added",
                    "listen": f"{SCALE_HOST}:{SCALE_FIRST_PORT + n}",
                    "destinations": [f"127.0.0.1:{a.port}"],
                }
                keys["routes-added.yaml"] = {"routes": [extra]}
                volume.write(keys)
                added = answered(SCALE_FIRST_PORT + n, "origin-a", 120)
                reloads = reload_count(router)[0] - reloads
                assert router.proc is not None
                rss = [_rss_mb(p) for p in (router.proc.pid, router.master_pid())]
                rss.append(_rss_mb(router.worker_pid()))
            finally:
                router.stop()
            rows.append((n, started, moved, added, int(reloads), scraped, rss))
    finally:
        a.stop()
        b.stop()
    print(
        "| routes | start → ready s | destination change s | added route s | reloads "
        "| /metrics scrape s | supervisor RSS MB | haproxy master MB | worker MB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, started, moved, added, reloads, scraped, (sup, master, worker) in rows:
        print(
            f"| {n:,} | {started:.2f} | {moved:.2f} | {added:.2f} | {reloads} | {scraped:.2f} "
            f"| {sup:.1f} | {master:.1f} | {worker:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=60)
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--scale", help="route counts, e.g. 1000,10000 (runs only the scale part)")
    args = parser.parse_args()
    if args.scale:
        sizes = [int(n) for n in args.scale.split(",")]
        if any(not 1 <= n <= 10_000 for n in sizes):
            parser.error("--scale sizes must be 1..10000 (ports 21000..31000)")
        with tempfile.TemporaryDirectory(prefix="bench-reload.") as tmp:
            scale(sizes, Path(tmp))
        return
    origin = HttpOrigin("origin-a").start()
    with tempfile.TemporaryDirectory(prefix="bench-reload.") as tmp:
        volume = ConfigMapVolume(Path(tmp) / "configmap")
        base = _route("base", free_port(), origin)
        volume.write({"routes.yaml": {"routes": [base]}})
        # Default debounce and poll, as shipped.
        router = Router(
            Path(tmp) / "router",
            config_dir=volume.directory,
            env={"EGRESS_RELOAD_DEBOUNCE": "0.3", "EGRESS_POLL_SECONDS": "10"},
        )
        try:
            router.start()
            lat = sorted(swap_latency(volume, origin, base, args.swaps))
            p50 = statistics.median(lat)
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            rows = []
            for keepalive in (False, True):
                ok, failed, secs = reloads_under_load(
                    router, volume, origin, base, args.reloads, keepalive=keepalive
                )
                rows.append((keepalive, ok, failed, secs))
            for _ in range(20):
                requests.get(router.url("/metrics"), timeout=5)
            assert router.proc is not None
            rss = _rss_mb(router.proc.pid)
        finally:
            router.stop()
            origin.stop()
    print(f"swap -> new route answering, {len(lat)} swaps, debounce 0.3 s:")
    print(
        f"  p50 {p50:.3f} s   p99 {p99:.3f} s   max {lat[-1]:.3f} s   (goal p50 <= 1.0, p99 <= 2.0)"
    )
    print(f"{args.reloads} reloads under load (4 clients):")
    for keepalive, ok, failed, secs in rows:
        mode = "keep-alive    " if keepalive else "new connection"
        print(f"  {mode}: {ok} ok, {failed} failed in {secs:.1f} s ({ok / secs:.0f} req/s)")
    print(f"supervisor RSS after the run, exporter scraped: {rss:.1f} MB (goal <= 60)")


if __name__ == "__main__":
    main()
