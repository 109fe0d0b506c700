"""Live-change benchmark: runtime edits against reloads, old workers, crash recovery.

    .venv/bin/python bench/live.py [--edits 60] [--typical 100] [--crashes 3]

1. Edit → in effect: a destination edit (route `web` moves between two origins), timed from
   the kubelet-style `..data` rename to the first request answered by the new origin, in ONE
   interleaved run against the named peer "reload" (the same edit with
   EGRESS_RUNTIME_CHANGES=0). Reported as measured and minus the debounce (goal, runtime:
   p50 <= 50 ms, p99 <= 200 ms after the debounce), plus the supervisor's own apply time
   (its "in N ms" log field: compile + `haproxy -c` + runtime API + read-back).
2. Reloads per --typical typical edits (destinations added/removed, allow_from lists): goal 0.
3. RSS of an old worker retained by 100 idle connections, next to a fresh worker's.
4. Crash → serving (SIGKILL of haproxy's worker, then of its master), --crashes each, 11 s
   apart so each is a first crash (goal p50 <= 1 s).
Everything runs on 127.0.0.1 and is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from haproxy_egress.haproxy.cli import CliSocket  # noqa: E402
from haproxy_egress.haproxy.program import rss_bytes  # noqa: E402
from haproxy_egress.haproxy.show import parse_old_workers  # noqa: E402
from haproxy_egress.runtime.watcher import KUBELET_SETTLE_MS  # noqa: E402
from tests.kubelet import ConfigMapVolume  # noqa: E402
from tests.longlived import changes, recovery_time  # noqa: E402
from tests.router import Router, web_route  # noqa: E402
from tests.support import HttpOrigin, free_port, http_get  # noqa: E402

DEBOUNCE = 0.05  # small, so the measurement is the change, not the wait
# What the watcher deliberately waits after a kubelet swap's last event before it looks (the
# debounce only caps a burst that keeps going); subtracted below as "the watcher's wait".
SETTLE = KUBELET_SETTLE_MS / 1000


def _web(port: int, *origins: HttpOrigin, allow: list[str] | None = None) -> dict[str, Any]:
    return web_route(port, *origins, allow=allow or ["127.0.0.0/8"])


def _publish(volume: ConfigMapVolume, *routes: dict[str, Any]) -> None:
    volume.write({"routes.yaml": {"version": 1, "routes": list(routes)}})


def _answer(port: int) -> str:
    try:
        return http_get(port, timeout=0.5)
    except OSError:
        return ""


def _until(predicate: Any, timeout: float, step: float = 0.002) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(step)
    raise SystemExit("the edit never took effect")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Peer:
    """One router with a `web` route, edited back and forth between two origins."""

    def __init__(self, name: str, tmp: Path, a: HttpOrigin, b: HttpOrigin, env: dict[str, str]):
        self.name, self.a, self.b = name, a, b
        self.port = free_port()
        self.volume = ConfigMapVolume(tmp / name / "configmap")
        _publish(self.volume, _web(self.port, a))
        self.router = Router(
            tmp / name / "router",
            config_dir=self.volume.directory,
            drain_seconds=1,
            env={"EGRESS_RELOAD_DEBOUNCE": str(DEBOUNCE), "EGRESS_POLL_SECONDS": "10", **env},
        )
        self.on_a = True
        self.latencies: list[float] = []
        self.kinds: dict[str, float] = {}
        self.apply: list[float] = []

    def edit(self) -> None:
        self.on_a = not self.on_a
        target = self.a if self.on_a else self.b
        start = time.monotonic()
        _publish(self.volume, _web(self.port, target))
        _until(lambda: _answer(self.port) == target.name, 10)
        self.latencies.append(time.monotonic() - start)

    def apply_ms(self) -> list[float]:
        """The supervisor's own time per change, from its log lines."""
        pattern = (
            r"(?:applied at runtime; no reload in ([0-9.]+) ms|new worker pid:\d+ in ([0-9.]+)s)"
        )
        out = []
        for m in re.finditer(pattern, self.router.stderr()):
            out.append(float(m.group(1)) if m.group(1) else float(m.group(2)) * 1000)
        return out


def edit_latency(tmp: Path, a: HttpOrigin, b: HttpOrigin, edits: int) -> list[Peer]:
    peers = [
        Peer("runtime", tmp, a, b, {}),
        Peer("reload", tmp, a, b, {"EGRESS_RUNTIME_CHANGES": "0"}),
    ]
    for p in peers:
        p.router.start()
    try:
        deadline = time.monotonic() + 300
        for _ in range(edits):
            for p in peers:  # interleaved: the same machine load for both
                p.edit()
                time.sleep(0.1)
            if time.monotonic() > deadline:
                break
        for p in peers:
            p.kinds = changes(p.router)
            p.apply = p.apply_ms()
    finally:
        for p in peers:
            p.router.stop()
    return peers


def typical_edits(tmp: Path, origins: list[HttpOrigin], n: int) -> dict[str, float]:
    port = free_port()
    volume = ConfigMapVolume(tmp / "typical" / "configmap")
    _publish(volume, _web(port, origins[0]))
    router = Router(
        tmp / "typical" / "router",
        config_dir=volume.directory,
        drain_seconds=1,
        env={"EGRESS_RELOAD_DEBOUNCE": str(DEBOUNCE)},
    )
    lists = [["127.0.0.0/8"], ["127.0.0.0/8", "10.0.0.0/8"], ["127.0.0.1/32", "192.0.2.0/24"]]
    try:
        router.start()
        deadline = time.monotonic() + 300
        for i in range(n):
            dests = origins[: 1 + i % len(origins)] if i % 3 else origins[i % len(origins) :]
            before = sum(changes(router).values())
            _publish(volume, _web(port, *dests, allow=lists[i % len(lists)]))
            _until(lambda b=before: sum(changes(router).values()) > b, 10, step=0.01)
            if time.monotonic() > deadline:
                break
        return changes(router)
    finally:
        router.stop()


def old_worker_rss(tmp: Path, origin: HttpOrigin, conns: int = 100) -> tuple[int, int]:
    """(RSS of an old worker holding `conns` idle connections, RSS of the fresh worker)."""
    port, other = free_port(), free_port()
    volume = ConfigMapVolume(tmp / "rss" / "configmap")
    _publish(volume, _web(port, origin))
    router = Router(tmp / "rss" / "router", config_dir=volume.directory, drain_seconds=1)
    held: list[socket.socket] = []
    try:
        router.start()
        for _ in range(conns):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(4096)  # a keep-alive connection, now idle
            held.append(s)
        second = _web(other, origin) | {"name": "other"}
        before = sum(changes(router).values())
        _publish(volume, _web(port, origin), second)
        _until(lambda: sum(changes(router).values()) > before, 10, step=0.01)
        master = CliSocket(router.run_dir / "master.sock", master=True)
        old = parse_old_workers(master.command("show proc"))
        if not old:
            raise SystemExit("no old worker retained")
        time.sleep(0.5)
        return rss_bytes(old[0].pid), rss_bytes(router.worker_pid())
    finally:
        for s in held:
            s.close()
        router.stop()


def crash_to_serving(tmp: Path, origin: HttpOrigin, victim: str, n: int) -> list[float]:
    port = free_port()
    volume = ConfigMapVolume(tmp / f"crash-{victim}" / "configmap")
    _publish(volume, _web(port, origin))
    router = Router(tmp / f"crash-{victim}" / "router", config_dir=volume.directory)
    out = []
    try:
        router.start()
        for i in range(n):
            pid = router.worker_pid() if victim == "worker" else router.master_pid()
            os.kill(pid, signal.SIGKILL)
            out.append(recovery_time(lambda: _answer(port) == origin.name))
            if i < n - 1:
                time.sleep(11)  # past the back-off's stable time: each crash is a first one
    finally:
        router.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=60, help="destination edits per peer")
    parser.add_argument("--typical", type=int, default=100, help="typical edits; reloads counted")
    parser.add_argument("--crashes", type=int, default=3, help="SIGKILLs of each: worker, master")
    args = parser.parse_args()
    origins = [HttpOrigin(f"origin-{c}").start() for c in "abc"]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-live.") as name:
            tmp = Path(name)
            peers = edit_latency(tmp, origins[0], origins[1], args.edits)
            kinds = typical_edits(tmp, origins, args.typical)
            old_rss, fresh_rss = old_worker_rss(tmp, origins[0])
            crashes = {
                v: crash_to_serving(tmp, origins[0], v, args.crashes) for v in ("worker", "master")
            }
    finally:
        for o in origins:
            o.stop()
    print(
        f"edit -> in effect, {args.edits} destination edits per peer, interleaved, "
        f"debounce {DEBOUNCE * 1000:.0f} ms, the watcher's wait {SETTLE * 1000:.0f} ms:"
    )
    by = {p.name: p for p in peers}
    for p in peers:
        lat = [x * 1000 for x in p.latencies]
        after = [max(0.0, x - SETTLE * 1000) for x in lat]
        print(
            f"  {p.name:8}: measured p50 {statistics.median(lat):4.0f} ms"
            f" p99 {_pct(lat, 0.99):4.0f}"
            f" | after the watcher's wait p50 {statistics.median(after):5.0f} ms"
            f" p99 {_pct(after, 0.99):5.0f}"
            f" | supervisor apply p50 {statistics.median(p.apply):5.0f} ms | {p.kinds}"
        )
    ratio = statistics.median(by["reload"].latencies) / statistics.median(by["runtime"].latencies)
    print(
        f"  reload / runtime (p50, measured): {ratio:.2f}x"
        "   (goal, runtime after debounce: p50 <= 50 ms, p99 <= 200 ms)"
    )
    print(f"{args.typical} typical edits (destinations, allow_from): {kinds}  (goal: reload 0)")
    print(
        f"old worker holding 100 idle connections: RSS {old_rss / 2**20:.1f} MB"
        f" (fresh worker {fresh_rss / 2**20:.1f} MB, ratio {old_rss / fresh_rss:.2f}x)"
    )
    for victim, values in crashes.items():
        ms = [v * 1000 for v in values]
        print(
            f"crash -> serving, {victim} SIGKILLed x{len(ms)}: p50 {statistics.median(ms):.0f} ms"
            f"  max {max(ms):.0f} ms   (goal p50 <= 1000 ms)"
        )


if __name__ == "__main__":
    main()
