"""What the remote syslog sink and the per-destination counters cost a policy proxy route.

    .venv/bin/python -m bench.syslog_sink [--seconds 5] [--rounds 3]

Two supervised routers, each with one `mode: proxy` route on 127.0.0.1 in front of a fast
origin (haproxy answering from memory), driven by wrk sending absolute-URI GETs with
`Connection: close` (a new connection per request, so every request is one decision, one log
line and one destination update):

* stdout     the default log path only, `destinations_top: 0`
* syslog+dst the same, plus a TCP syslog target (Debian's rsyslogd on loopback, rfc5424 with
             the decision as structured data) and `destinations_top: 50`
* dst, syslog  each of the two alone, to tell their costs apart
* syslog-bare  the target with `format: json` (the line alone: no header, no structured data)
* syslog+tap   the syslog router with a second reader of its ring (`show events <ring> -w`, as
             the router's own loss-count tap): what that tap costs haproxy, by difference
* both/batch   syslog+dst, but the receiver is a socket read every 50 ms (`BatchingReceiver`)
             instead of rsyslogd: haproxy's sends then wake no process on this host, as with a
             SIEM on another machine; the difference to syslog+dst is what waking a receiver
             on loopback (and its ACKs) costs haproxy, not what haproxy's own work costs

Measured interleaved (round 1: each once, round 2: again, ...) so machine noise hits both;
besides requests/s, each router's haproxy CPU time (/proc/<pid>/stat, utime + stime) over the
run gives requests per CPU-second, which does not depend on how busy the shared machine is.
Printed: medians, and syslog+dst / stdout (goal: >= 0.95 per CPU-second). Bounded: about
rounds x 2 x (seconds + 5) s.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bed import cpu_seconds  # noqa: E402
from haproxy_egress.haproxy.eventstream import RingStream  # noqa: E402
from haproxy_egress.rundir import RunDir  # noqa: E402
from haproxy_egress.runtime.ringtap import RingTap  # noqa: E402
from tests.logload import FastOrigin  # noqa: E402
from tests.router import Router  # noqa: E402
from tests.rsyslog import Rsyslog  # noqa: E402
from tests.support import free_port, write_configmap  # noqa: E402

WRK_SCRIPT = """
wrk.method = "GET"
wrk.path = "http://127.0.0.1:{origin}/"
wrk.headers["Host"] = "127.0.0.1:{origin}"
wrk.headers["Connection"] = "close"
"""


@dataclass
class Variant:
    """One router and what it measured."""

    name: str
    router: Router
    port: int
    rates: list[float] = field(default_factory=list)
    per_cpu: list[float] = field(default_factory=list)
    tap: RingTap | None = None


class BatchingReceiver:
    """A TCP sink that reads what has arrived every 50 ms and throws it away (counting bytes):
    never asleep in recv(), so a send to it wakes nobody. Bounded: stops when told."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BatchingReceiver:
        self._thread.start()
        return self

    def _run(self) -> None:
        conns: list[socket.socket] = []
        while not self._stop.wait(0.05):
            try:
                conn, _ = self._listener.accept()
                conn.setblocking(False)
                conns.append(conn)
            except BlockingIOError:
                pass
            for conn in conns:
                self.bytes += _drain(conn)
        for conn in conns:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()


def _drain(conn: socket.socket) -> int:
    got = 0
    while True:
        try:
            chunk = conn.recv(1 << 20)
        except (BlockingIOError, ConnectionError):
            return got
        if not chunk:
            return got
        got += len(chunk)


def second_tap(v: Variant) -> None:
    """Read the router's ring as its own tap does (the same code, in this process)."""
    stream = RingStream(RunDir(v.router.run_dir).stats_socket, "egress_syslog_1")
    v.tap = RingTap(stream, stream.open(), "egress_syslog_1")
    v.tap.start()


def start(
    work: Path,
    name: str,
    origin: FastOrigin,
    receiver: Rsyslog | BatchingReceiver | None,
    *,
    top: int,
    fmt: str = "rfc5424",
) -> Variant:
    port = free_port()
    route = {
        "name": "pxy",
        "listen": f"127.0.0.1:{port}",
        "mode": "proxy",
        "policy": ["127.0.0.0/8"],
        "destinations_top": top,
    }
    doc: dict[str, object] = {"routes": [route]}
    if receiver is not None:
        target = {"address": f"127.0.0.1:{receiver.port}", "transport": "tcp", "format": fmt}
        doc["logging"] = {"syslog": [target]}
    config_dir = work / name / "configmap"
    write_configmap(config_dir, {"routes.yaml": doc})
    router = Router(work / name / "router", config_dir=config_dir, drain_seconds=1)
    router.start()
    return Variant(name, router, port)


def wrk(port: int, script: Path, seconds: int) -> tuple[int, float]:
    """(requests, seconds) of one wrk run through the proxy at `port`."""
    argv = ["wrk", "-t1", "-c16", f"-d{seconds}s", "--timeout", "5s", "-s", str(script)]
    out = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}/"],
        check=False,
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    ).stdout
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if found is None or "Non-2xx" in out:
        raise RuntimeError(f"wrk: {out[-400:]}")
    took = float(found.group(2)) / (1000 if found.group(3) == "ms" else 1)
    return int(found.group(1)), took


def arguments() -> argparse.Namespace:
    """--seconds per run (wrk takes whole seconds), --rounds of every variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = arguments()
    work = Path(tempfile.mkdtemp(prefix="bench-syslog-"))
    receiver = Rsyslog(work / "rsyslog").start()
    batching = BatchingReceiver().start()
    origin = FastOrigin().start()
    script = work / "wrk.lua"
    script.write_text(WRK_SCRIPT.format(origin=origin.port))
    variants: list[Variant] = []
    try:
        variants = [
            start(work, "stdout", origin, None, top=0),
            start(work, "syslog+dst", origin, receiver, top=50),
            start(work, "dst", origin, None, top=50),
            start(work, "syslog", origin, receiver, top=0),
            start(work, "syslog-bare", origin, receiver, top=0, fmt="json"),
            start(work, "syslog+tap", origin, receiver, top=0),
            start(work, "both/batch", origin, batching, top=50),
        ]
        second_tap(next(v for v in variants if v.name == "syslog+tap"))
        for round_ in range(args.rounds):
            shift = round_ % len(variants)
            for v in variants[shift:] + variants[:shift]:
                pid = v.router.worker_pid()
                before = cpu_seconds([pid])
                requests, took = wrk(v.port, script, args.seconds)
                cpu = cpu_seconds([pid]) - before
                v.rates.append(requests / took)
                v.per_cpu.append(requests / cpu if cpu else 0.0)
                print(
                    f"round {round_ + 1} {v.name:11} {requests / took:8.0f} req/s "
                    f"{v.per_cpu[-1]:8.0f} req/CPU-s",
                    flush=True,
                )
    finally:
        for v in variants:
            if v.tap is not None:
                v.tap.stop()
            v.router.stop()
        receiver.stop()
        batching.stop()
        origin.stop()
    base, sink = variants[:2]
    print(f"\n{'variant':11} {'req/s':>8} {'req/CPU-s':>10}  (medians of {args.rounds} rounds)")
    for v in variants:
        print(f"{v.name:11} {statistics.median(v.rates):8.0f} {statistics.median(v.per_cpu):10.0f}")
    rate = statistics.median(sink.rates) / statistics.median(base.rates)
    per_cpu = statistics.median(sink.per_cpu) / statistics.median(base.per_cpu)
    print(f"syslog+dst / stdout: {rate:.3f} req/s, {per_cpu:.3f} per CPU-second (goal >= 0.95)")
    batch = next(v for v in variants if v.name == "both/batch")
    per_cpu = statistics.median(batch.per_cpu) / statistics.median(base.per_cpu)
    print(f"both/batch / stdout: {per_cpu:.3f} per CPU-second (a receiver woken by no send)")
    lines = len(receiver.lines())
    print(f"lines rsyslogd got: {lines}; bytes the batching receiver got: {batching.bytes}")


if __name__ == "__main__":
    main()
