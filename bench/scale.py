"""Scale benchmark: edit latency, stage times and memory at 10, 1,000 and 10,000 routes.

    .venv/bin/python bench/scale.py [--sizes 10,1000,10000] [--edits 20] [--reloads 3]
                                    [--haproxy /usr/local/bin/haproxy30] [--load]
                                    [--address 127.77.0.1] [--rss-each]

Per size, one router on a ConfigMap of N tcp routes in ten keys (on 127.77.0.1, two IP
destinations each in 198.18.0.0/15, never contacted; health checks off), plus the http route
`web` on 127.0.0.1 in front of two local origins, published the way the kubelet does it:

- runtime edits: `web` moves between the origins (a destination edit, no new worker), timed
  from the `..data` swap to the first answer of the new origin; p50/p99 as measured and after
  the watcher's debounce (the time to write the keys before the swap is printed apart);
- reload edits: a route is added, timed until it answers;
- the time of each stage inside the supervisor, from its log line for each change (read,
  validate, render, diff, apply, files; for a reload: check, files, reload) and of the
  `haproxy -c` that follows a runtime edit off its path (check, late);
- RSS of the supervisor, haproxy's master and its worker: after start, after the edits (the
  supervisor's also split into its heap and the mapped libraries, from smaps_rollup);
- beside them, a hand-written master-worker haproxy with the same N routes (a `listen`
  section each: the same listener, the two servers, the allow_from network inline, no
  checks), started on the same binary once the router is gone: its master and worker RSS;
- the time of one /metrics scrape;
- with --load, requests through another route during the runtime edits (failures counted);
- then the growth between the two largest sizes (goal: edit latency flat, memory linear with
  a small slope).

Goals (docs/benchmarks.md): runtime edit after the debounce p50 <= 50 ms and p99 <= 200 ms
at 10 routes, p50 <= 100 ms at 10,000; an added route serving within 2 s at 10,000; the
supervisor's RSS <= 80 MB at 10,000 before and after edits; /metrics <= 0.3 s at 10,000.
Everything runs on loopback and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests

from bench.compile import BASE_IP, FIRST_PORT, route_keys
from bench.live import DEBOUNCE, SETTLE, _answer, _pct, _until
from haproxy_egress.haproxy.program import rss_bytes, version
from tests.kubelet import ConfigMapVolume
from tests.load import LoadGen
from tests.router import Router, http_route, web_route
from tests.support import HttpOrigin, free_port

# The N routes' listeners: a loopback address of their own (--address: another run of this
# bench on the machine must use another one, or the second router cannot bind its routes).
ADDRESS = "127.77.0.1"
MB = 2**20
_CHANGE = re.compile(
    r"(?:applied at runtime; no reload in [0-9.]+ ms|new worker pid:\d+ in [0-9.]+s) \((.*)\)$",
    re.M,
)
_LATE = re.compile(r"haproxy -c accepts(?: again)? config \w+, applied at runtime, in ([0-9.]+)s")
_LAP = re.compile(r"(\w+) ([0-9]+) ms")


@dataclass
class Size:
    """What one size measured."""

    routes: int
    start: float = 0.0
    runtime: list[float] = field(default_factory=list)  # publish → new origin answers
    reload: list[float] = field(default_factory=list)  # publish → added route answers
    runtime_stages: dict[str, list[float]] = field(default_factory=dict)
    reload_stages: dict[str, list[float]] = field(default_factory=dict)
    late_check: list[float] = field(default_factory=list)
    rss: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # when → (sup, m, w)
    rss_each: list[int] = field(default_factory=list)  # --rss-each: the supervisor's, by reload
    metrics: float = 0.0
    publish: list[float] = field(default_factory=list)  # the kubelet-style write of all keys
    load: str = ""
    heap: dict[str, tuple[float, float]] = field(default_factory=dict)  # when → (anon, files)
    hand: tuple[int, int] = (0, 0)  # a hand-written haproxy's master, worker RSS


def _stages(log: str) -> tuple[dict[str, list[float]], dict[str, list[float]], list[float]]:
    """Per-stage milliseconds of the runtime changes and the reloads in a supervisor's log,
    and the seconds of each late `haproxy -c`."""
    runtime: dict[str, list[float]] = {}
    reload: dict[str, list[float]] = {}
    for m in _CHANGE.finditer(log):
        into = reload if "reload" in dict(_LAP.findall(m.group(1))) else runtime
        for name, ms in _LAP.findall(m.group(1)):
            into.setdefault(name, []).append(float(ms))
    return runtime, reload, [float(s) for s in _LATE.findall(log)]


def _rss(router: Router) -> tuple[int, int, int]:
    assert router.proc is not None
    return (
        rss_bytes(router.proc.pid),
        rss_bytes(router.master_pid()),
        rss_bytes(router.worker_pid()),
    )


def _heap(pid: int) -> tuple[float, float]:
    """A process's resident memory in MB: anonymous (its heap), and file-backed (libraries)."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == "kB":
            fields[parts[0].rstrip(":")] = int(parts[1])
    anon = fields.get("Anonymous", 0) / 1024
    return anon, fields.get("Rss", 0) / 1024 - anon


HAND_WRITTEN = """global
    master-worker
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
"""


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def hand_written(n: int, address: str, binary: str, tmp: Path) -> tuple[int, int]:
    """RSS (master, worker) of a master-worker haproxy written by hand with the same N routes
    the router had, on the same listeners (the router has stopped)."""
    lines = [HAND_WRITTEN]
    for i in range(n):
        lines.append(
            f"listen route-{i}\n    bind {address}:{FIRST_PORT + i}\n"
            "    tcp-request connection reject unless { src 10.128.0.0/14 }\n"
            f"    server a {BASE_IP + 2 * i}:443\n    server b {BASE_IP + 2 * i + 1}:443\n"
        )
    cfg = tmp / f"hand-{n}.cfg"
    cfg.write_text("".join(lines))
    proc = subprocess.Popen([binary, "-W", "-f", str(cfg)], stdout=subprocess.DEVNULL)
    try:
        last = (address, FIRST_PORT + n - 1)

        def serving() -> bool:
            try:
                socket.create_connection(last, timeout=1).close()
            except OSError:
                return False
            return bool(_children(proc.pid))

        _until(serving, 120)
        time.sleep(1)  # settled, as the router was when it was measured
        return rss_bytes(proc.pid), max(rss_bytes(p) for p in _children(proc.pid))
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _scrape_seconds(router: Router) -> float:
    times = []
    for _ in range(3):
        start = time.monotonic()
        requests.get(router.url("/metrics"), timeout=30).raise_for_status()
        times.append(time.monotonic() - start)
    return statistics.median(times)


def measure(
    n: int, tmp: Path, origins: list[HttpOrigin], args: argparse.Namespace, env: dict[str, str]
) -> Size:
    a, b, c = origins
    keys: dict[str, object] = dict(route_keys(n, mode="tcp", address=args.address, check=False))
    web_port, steady_port = free_port(), free_port()
    steady = http_route("steady", steady_port, c, check=False)
    volume = ConfigMapVolume(tmp / f"cm-{n}")
    extra: list[dict[str, Any]] = []

    def publish(*web: HttpOrigin) -> float:
        """Write every key the way the kubelet does; returns when the swap is done (the
        writing itself, about 700 bytes per route, is the kubelet's time, not the router's)."""
        routes = [web_route(web_port, *web) | {"check": False}, steady, *extra]
        start = time.monotonic()
        volume.write({**keys, "web.yaml": {"version": 1, "routes": routes}})
        size.publish.append(time.monotonic() - start)
        return time.monotonic()

    size = Size(n)
    publish(a)
    router = Router(
        tmp / f"router-{n}",
        config_dir=volume.directory,
        drain_seconds=1,
        env={"EGRESS_RELOAD_DEBOUNCE": str(DEBOUNCE), "EGRESS_POLL_SECONDS": "10", **env},
    )
    started = time.monotonic()
    router.start(wait_ready=False)
    try:
        router.wait_ready(timeout=180)
        size.start = time.monotonic() - started
        size.rss["start"] = _rss(router)
        assert router.proc is not None
        size.heap["start"] = _heap(router.proc.pid)
        load = (
            LoadGen(steady_port, keepalive=True, clients=2, max_seconds=600) if args.load else None
        )
        if load is not None:
            load.start()
        load_started = time.monotonic()
        target = a
        for _ in range(args.edits):
            target = b if target is a else a
            t0 = publish(target)
            _until(lambda t=target: _answer(web_port) == t.name, 30)
            size.runtime.append(time.monotonic() - t0)
            time.sleep(0.2)
        if load is not None:
            result = load.stop()
            rate = result.ok / (time.monotonic() - load_started)
            size.load = f"{result.ok} requests ({rate:.0f}/s), {result.failed} failed"
        size.rss["runtime edits"] = _rss(router)
        size.heap["runtime edits"] = _heap(router.proc.pid)
        for i in range(args.reloads):
            port = free_port()
            extra.append(http_route(f"added-{i}", port, a, check=False))
            t0 = publish(target)
            _until(lambda p=port: _answer(p) == a.name, 60)
            size.reload.append(time.monotonic() - t0)
            time.sleep(1.5)  # past the drain: the old worker is gone before the next edit
            if args.rss_each:
                size.rss_each.append(rss_bytes(router.proc.pid))
        size.rss["reload edits"] = _rss(router)
        size.heap["reload edits"] = _heap(router.proc.pid)
        size.metrics = _scrape_seconds(router)
        # The late checks of the last edits: give them time to finish and log.
        time.sleep(2)
        size.runtime_stages, size.reload_stages, size.late_check = _stages(router.stderr())
    except (SystemExit, AssertionError):
        # An edit that never took effect, a router never ready: say what the router said.
        print(router.stderr()[-6000:], file=sys.stderr)
        raise
    finally:
        router.stop()
    size.hand = hand_written(n, args.address, args.haproxy, tmp)
    return size


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    ms = [v * 1000 for v in values]
    return f"p50 {statistics.median(ms):5.0f} p99 {_pct(ms, 0.99):5.0f}"


def _laps(stages: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in stages.items()) or "-"


def report(sizes: list[Size], binary: str) -> None:
    debounce = DEBOUNCE * 1000
    print(
        f"haproxy {version(binary)} ({binary}); debounce {debounce:.0f} ms, the watcher's wait"
        f" after a swap {SETTLE * 1000:.0f} ms; times in ms"
    )
    for s in sizes:
        after = [max(0.0, x - SETTLE) for x in s.runtime]
        print(f"\n{s.routes:,} routes (+2 on loopback): start to ready {s.start:.2f} s")
        print(f"  publish (write every key)   {_ms(s.publish)}   (not counted below)")
        print(
            f"  runtime edit -> in effect   measured {_ms(s.runtime)}"
            f" | after the watcher's wait {_ms(after)}"
        )
        print(f"     supervisor stages (p50)  {_laps(s.runtime_stages)}")
        print(f"     late haproxy -c (p50)    {_ms(s.late_check)}")
        print(f"  reload edit -> serving      measured {_ms(s.reload)}")
        print(f"     supervisor stages (p50)  {_laps(s.reload_stages)}")
        for when, (sup, master, worker) in s.rss.items():
            anon, files = s.heap[when]
            print(
                f"  RSS after {when:13}  supervisor {sup / MB:6.1f} MB (heap {anon:5.1f}, files"
                f" {files:4.1f}), haproxy master {master / MB:6.1f} MB,"
                f" worker {worker / MB:6.1f} MB"
            )
        if s.rss_each:
            series = " ".join(f"{b / MB:.1f}" for b in s.rss_each)
            print(f"  supervisor RSS after each reload (MB): {series}")
        hand_master, hand_worker = s.hand
        print(
            f"  hand-written haproxy, same routes: master {hand_master / MB:6.1f} MB,"
            f" worker {hand_worker / MB:6.1f} MB"
        )
        print(f"  /metrics scrape             {s.metrics * 1000:.0f} ms")
        if s.load:
            print(f"  load through `steady` during the runtime edits: {s.load}")
    if len(sizes) > 1:
        lo, hi = sizes[-2], sizes[-1]  # 1,000 -> 10,000 with the default sizes
        print(f"\ngrowth {lo.routes:,} -> {hi.routes:,} routes (x{hi.routes / lo.routes:,.0f}):")
        runtime = statistics.median(hi.runtime) / statistics.median(lo.runtime)
        reload = statistics.median(hi.reload) / statistics.median(lo.reload)
        print(f"  runtime edit p50 x{runtime:.2f}, reload edit p50 x{reload:.2f}")
        names = ("supervisor", "master", "worker")
        for i, name in enumerate(names):
            small, large = lo.rss["reload edits"][i], hi.rss["reload edits"][i]
            slope = (large - small) / (hi.routes - lo.routes) / 1024
            print(f"  {name:10} RSS +{(large - small) / MB:6.1f} MB ({slope:.2f} kB per route)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--edits", type=int, default=20, help="runtime edits per size")
    parser.add_argument("--reloads", type=int, default=3, help="reload edits per size")
    parser.add_argument("--haproxy", default="haproxy", help="the haproxy binary to run")
    parser.add_argument("--load", action="store_true", help="requests through another route")
    parser.add_argument(
        "--rss-each", action="store_true", help="the supervisor's RSS after every reload edit"
    )
    parser.add_argument("--address", default=ADDRESS, help="the N routes' loopback address")
    args = parser.parse_args()
    env = {"EGRESS_HAPROXY_BIN": args.haproxy}
    origins = [HttpOrigin(f"origin-{c}").start() for c in "abc"]
    sizes = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scale.") as name:
            for n in (int(s) for s in args.sizes.split(",")):
                sizes.append(measure(n, Path(name), origins, args, env))
    finally:
        for o in origins:
            o.stop()
    report(sizes, args.haproxy)


if __name__ == "__main__":
    main()
