"""Reload benchmark: swap-to-serving latency and failed requests across reloads under load.

    .venv/bin/python bench/reload.py [--swaps 60] [--reloads 100]

1. Latency from the kubelet-style `..data` rename to the new route answering, over --swaps
   swaps with the default debounce (p50/p99; goal p50 <= 1.0 s, p99 <= 2 s).
2. Failed requests while --reloads real reloads happen under load, once with a new connection
   per request and once with keep-alive clients (goal 0 in both).
3. The supervisor's RSS (with the exporter scraped) after all of it (goal <= 60 MB).
Everything runs on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=60)
    parser.add_argument("--reloads", type=int, default=100)
    args = parser.parse_args()
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
