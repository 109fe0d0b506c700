"""Log path benchmark: what the default log path costs, and what each sink loses, at full load.

    .venv/bin/python bench/logs.py [--seconds 5] [--rounds 3]

One tcp route in front of a fast origin (haproxy answering from memory), driven by
`wrk -t1 -c32 -dNs -H "Connection: close"` (a new connection per request). Variants, measured
interleaved (round 1: every variant once, round 2: again, ...), so machine noise hits all alike:

* off-1t     haproxy with the router's config minus its `log` line (no logging at all), 1 thread
* relay-1t   the supervised router, default sink (log stdout -> FIFO -> log relay -> stdout)
* stdout-1t  the supervised router, EGRESS_LOG=stdout (haproxy writes the pod's stdout itself)
* socklog-1t the supervised router, EGRESS_LOG=socklog (unix datagrams -> socklog -> stdout)
* off-2t, relay-2t  the same with EGRESS_THREADS=2

Printed per variant: connections per second (median of the rounds), the ratio to off at the
same thread count (goal: relay >= 0.95), and connections vs log lines on stdout (lost lines).
Everything runs on 127.0.0.1, bounded in time (about rounds x variants x (seconds + 3) s).
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from haproxy_egress.haproxy.cli import CliSocket  # noqa: E402
from tests.logload import FastOrigin, wrk_close  # noqa: E402
from tests.router import Router  # noqa: E402
from tests.support import free_port, wait_for, write_configmap  # noqa: E402


@dataclass
class Variant:
    """One way of running the route; `sessions_and_lines` says what it logged."""

    name: str
    port: int
    threads: int
    router: Router | None = None
    proc: subprocess.Popen[bytes] | None = None
    stats: Path | None = None
    rates: list[float] = field(default_factory=list)

    def sessions_and_lines(self) -> tuple[int, int, int]:
        """Frontend sessions, route lines on stdout, haproxy's DroppedLogs (current worker)."""
        assert self.stats is not None
        cli = CliSocket(self.stats)
        sessions = 0
        for row in cli.command("show stat").splitlines():
            cells = row.split(",")
            if len(cells) > 7 and cells[0] == "edge" and cells[1] == "FRONTEND":
                sessions = int(cells[7])
        found = re.search(r"DroppedLogs: (\d+)", cli.command("show info"))
        dropped = int(found.group(1)) if found else 0
        lines = -1
        if self.router is not None:
            lines = sum(1 for ln in self.router.stdout().splitlines() if " edge edge/" in ln)
        return sessions, lines, dropped

    def stop(self) -> None:
        if self.router is not None:
            self.router.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def _routes(port: int, origin: FastOrigin) -> dict[str, object]:
    route = {
        "name": "edge",
        "listen": f"127.0.0.1:{port}",
        "mode": "tcp",
        "destinations": [f"127.0.0.1:{origin.port}"],
        "check": False,
    }
    return {"routes.yaml": {"routes": [route]}}


def start_router(work: Path, name: str, origin: FastOrigin, threads: int, sink: str) -> Variant:
    port = free_port()
    config = work / name / "configmap"
    write_configmap(config, _routes(port, origin))
    env = {"EGRESS_THREADS": str(threads)}
    if sink:
        env["EGRESS_LOG"] = sink
    router = Router(work / name / "router", env=env, config_dir=config, drain_seconds=2).start()
    return Variant(name, port, threads, router=router, stats=router.run_dir / "haproxy.sock")


def start_unlogged(work: Path, name: str, template: Variant, threads: int) -> Variant:
    """haproxy alone on the router's config with the `log` lines taken out."""
    assert template.router is not None
    run = work / name / "run"
    run.mkdir(parents=True)
    text = (template.router.run_dir / "haproxy.cfg").read_text()
    text = text.replace(str(template.router.run_dir), str(run))
    text = re.sub(r"(?m)^\s*log (stdout|unix@).*\n", "", text)
    text = re.sub(r"(?m)^\s*nbthread \d+\n", f"    nbthread {threads}\n", text)
    port = free_port()
    text = text.replace(f"127.0.0.1:{template.port}", f"127.0.0.1:{port}")
    cfg = run / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.Popen(
        ["haproxy", "-db", "-f", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for((run / "haproxy.sock").exists, 10)
    return Variant(name, port, threads, proc=proc, stats=run / "haproxy.sock")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-logs."))
    origin = FastOrigin().start()
    variants: list[Variant] = []
    try:
        relay1 = start_router(work, "relay-1t", origin, 1, "")
        relay2 = start_router(work, "relay-2t", origin, 2, "")
        variants = [
            start_unlogged(work, "off-1t", relay1, 1),
            relay1,
            start_router(work, "stdout-1t", origin, 1, "stdout"),
            start_router(work, "socklog-1t", origin, 1, "socklog"),
            start_unlogged(work, "off-2t", relay2, 2),
            relay2,
        ]
        for rnd in range(args.rounds):
            for v in variants:
                result = wrk_close(v.port, args.seconds)
                v.rates.append(result.rate)
                print(f"round {rnd + 1} {v.name:<11} {result.rate:8.0f} conn/s {result.errors}")
                time.sleep(1.0)  # let the last connections close and their lines arrive
        time.sleep(2.0)
        off = {v.threads: statistics.median(v.rates) for v in variants if v.name.startswith("off")}
        print()
        print(
            "| variant | conn/s (median) | vs off, same threads | sessions | lines | lost "
            "| DroppedLogs |"
        )
        print("|---|---|---|---|---|---|---|")
        for v in variants:
            rate = statistics.median(v.rates)
            sessions, lines, dropped = v.sessions_and_lines()
            lost = "n/a" if lines < 0 else f"{sessions - lines:,}"
            shown = "n/a" if lines < 0 else f"{lines:,}"
            print(
                f"| {v.name} | {rate:,.0f} | {rate / off[v.threads]:.3f} | {sessions:,} | "
                f"{shown} | {lost} | {dropped:,} |"
            )
    finally:
        for v in variants:
            v.stop()
        origin.stop()


if __name__ == "__main__":
    main()
