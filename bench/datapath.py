"""Datapath benchmark: haproxy-egress vs a direct routed path vs kernel DNAT, in one run.

    .venv/bin/python bench/datapath.py [--duration 3] [--repeat 3] [--variants base,splice,...]

In the namespaces of tests/netns.py (client → router → external, 198.18.0.0/15 only) it measures

- small HTTP requests per second through a TCP route, keep-alive and one connection per
  request (wrk against a haproxy origin answering "ok" from memory);
- bulk TCP throughput, one stream and four streams (iperf3);
- a large HTTP download (1 GiB by default, sendfile origin), through a TCP route and through
  an HTTP-mode route;

over three paths: `direct` (the router namespace only forwards), `dnat` (an nftables DNAT + SNAT
rule in the router namespace, which is what redirect mode did) and `router` (haproxy compiled by
this project from EGRESS_DESTINATION lines plus a YAML key, leaving from EGRESS_SOURCE). Router
variants change the rendered haproxy.cfg text (never the template) to try tuning knobs, so one
run tells what each knob buys. Every run is bounded in time; every ratio printed comes from the
same invocation. Needs root, wrk, iperf3, nft, curl and haproxy.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bed import (
    FILE_PORT,
    IPERF_PORT,
    SMALL_PORT,
    Origins,
    Wrk,
    cannot_run,
    dnat,
    download,
    iperf,
    progress,
    rotated,
)
from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.haproxy.check import check
from haproxy_egress.render.compiler import RenderOptions, render
from tests.netns import (
    EXTERNAL_IP,
    ROUTER_CLIENT_IP,
    Netns,
    TestBed,
    wait_port,
)
from tests.support import HAPROXY, write_configmap

FILE_HTTP_PORT = 8081  # router only: the same origin through an HTTP-mode route
TCP_PORTS = (SMALL_PORT, IPERF_PORT, FILE_PORT)
WRK_CONNECTIONS = 32


# --- router variants: edits of the rendered config text ---------------------------------------


def _add(section: str, lines: list[str]) -> Callable[[str], str]:
    """An edit that appends `lines` right after the `section` header (global or defaults)."""

    def edit(text: str) -> str:
        header = f"\n{section}\n"
        if header not in text:
            raise ValueError(f"no {section} section in the rendered config")
        block = "".join(f"    {line}\n" for line in lines)
        return text.replace(header, header + block, 1)

    return edit


def _chain(*edits: Callable[[str], str]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        for e in edits:
            text = e(text)
        return text

    return edit


SPLICE = _add("defaults", ["option splice-request", "option splice-response"])
SPLICE_AUTO = _add("defaults", ["option splice-auto"])
SPLICE_RESPONSE = _add("defaults", ["option splice-response"])


def _no_log(text: str) -> str:
    """No per-connection log line (the template logs every connection)."""
    return text.replace("\n    log global\n", "\n    no log\n", 1)


def _no_source(text: str) -> str:
    """Leave from the interface address instead of EGRESS_SOURCE (no bind() before connect)."""
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("    source "))


# No `maxpipes`: haproxy derives it from maxconn (maxconn/4); raising it needs more fds than
# the default 20000 ulimit here allows, and the default was not the limit in any run.
PIPES = _add("global", ["tune.pipesize 262144"])
BUF64K = _add("global", ["tune.bufsize 65536"])
THREADS1 = _add("global", ["nbthread 1"])
THREADS2 = _add("global", ["nbthread 2"])

VARIANTS: dict[str, Callable[[str], str]] = {
    "base": lambda text: text,  # the template as it is (haproxy picks one thread per CPU)
    "t1": THREADS1,
    "splice-auto": SPLICE_AUTO,
    "splice": SPLICE,
    "splice+pipes": _chain(SPLICE, PIPES),
    "buf64k": BUF64K,
    "splice+pipes+buf64k": _chain(SPLICE, PIPES, BUF64K),
    "t1+splice+pipes": _chain(THREADS1, SPLICE, PIPES),
    "t2+splice+pipes": _chain(THREADS2, SPLICE, PIPES),
    "t1+splice-auto": _chain(THREADS1, SPLICE_AUTO),
    "splice-response": SPLICE_RESPONSE,
    "splice-response+buf64k": _chain(SPLICE_RESPONSE, BUF64K),
    "splice-auto+buf64k": _chain(SPLICE_AUTO, BUF64K),
    "splice+buf64k": _chain(SPLICE, BUF64K),
    "nolog": _no_log,
    "nosource": _no_source,
}


# --- measurements (bench/bed.py) --------------------------------------------------------------

WRK = Wrk(threads=1, connections=WRK_CONNECTIONS)


def _url(host: str, port: int, path: str = "/") -> str:
    return f"http://{host}:{port}{path}"


@dataclass(frozen=True)
class Workload:
    """One row of the table: a label, its unit, and how to measure it against a target."""

    name: str
    unit: str
    port: int
    measure: Callable[[Netns, str, int, float], float]
    router_port: int | None = None  # when the router path uses another port (HTTP-mode route)


WORKLOADS = (
    Workload(
        "small req, keep-alive",
        "req/s",
        SMALL_PORT,
        lambda ns, h, p, s: WRK.rate(ns, _url(h, p), round(s), close=False),
    ),
    Workload(
        "small req, new conn",
        "req/s",
        SMALL_PORT,
        lambda ns, h, p, s: WRK.rate(ns, _url(h, p), round(s), close=True),
    ),
    Workload(
        "iperf3 1 stream", "Gbit/s", IPERF_PORT, lambda ns, h, p, s: iperf(ns, h, p, round(s), 1)
    ),
    Workload(
        "iperf3 4 streams", "Gbit/s", IPERF_PORT, lambda ns, h, p, s: iperf(ns, h, p, round(s), 4)
    ),
    Workload(
        "large download, tcp route",
        "Gbit/s",
        FILE_PORT,
        lambda ns, h, p, s: download(ns, _url(h, p, "/big"), s),
    ),
    Workload(
        "large download, http route",
        "Gbit/s",
        FILE_PORT,
        lambda ns, h, p, s: download(ns, _url(h, p, "/big"), s),
        FILE_HTTP_PORT,
    ),
)


# --- the bench -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One path to measure through: where the client connects for each origin port."""

    name: str
    host: str
    ports: dict[int, int]  # origin port (and FILE_HTTP_PORT) → port the client connects to
    dnat: bool = False


class Bench:
    """The bed, the origins, one haproxy per variant (idle ones cost nothing), and DNAT."""

    def __init__(self, bed: TestBed, workdir: Path, file_size: int) -> None:
        self.bed = bed
        self.workdir = workdir
        self.source = bed.add_router_source()  # the routers' EGRESS_SOURCE
        self.dnat_source = bed.add_router_source()
        self.file_size = file_size
        self.origins: Origins | None = None

    def start_origins(self) -> None:
        self.origins = Origins(self.bed, self.workdir, self.file_size).start()
        self.bed.forwarding(True)  # the direct and DNAT paths are routed by the router namespace

    def close(self) -> None:
        if self.origins is not None:
            self.origins.close()

    def dnat(self) -> contextlib.AbstractContextManager[None]:
        """DNAT + SNAT as redirect mode did, from its own source address (bed.dnat says why)."""
        return dnat(self.bed, self.workdir, TCP_PORTS, self.dnat_source)

    def start_router(self, index: int, variant: str) -> Column:
        """haproxy for one variant, compiled by the project from EGRESS_DESTINATION lines (and
        a YAML key for the HTTP-mode route), then edited; on its own block of ports."""
        base = 10000 + 10 * index
        ports = {SMALL_PORT: base, IPERF_PORT: base + 1, FILE_PORT: base + 2}
        ports[FILE_HTTP_PORT] = base + 3
        configmap = self.workdir / f"configmap-{index}"
        route = {
            "name": "download-http",
            "mode": "http",
            "listen": ports[FILE_HTTP_PORT],
            "destinations": [f"{EXTERNAL_IP}:{FILE_PORT}"],
        }
        write_configmap(configmap, {"bench.yaml": {"routes": [route]}})
        lines = [f"{ports[p]} tcp {EXTERNAL_IP} {p}" for p in TCP_PORTS]
        env = {"EGRESS_DESTINATION": "\n".join(lines), "EGRESS_SOURCE": self.source}
        config = load_snapshot(read_snapshot(configmap), env)
        run_dir = self.workdir / f"run-{index}"
        run_dir.mkdir(mode=0o700)
        # Logs go to a unix socket nobody reads: no logging cost, as with socklog in the pod.
        text = VARIANTS[variant](render(config, RenderOptions(run_dir=run_dir)))
        cfg = run_dir / "haproxy.cfg"
        cfg.write_text(text)
        check(cfg, HAPROXY)
        proc = self.bed.start(self.bed.router, [HAPROXY, "-db", "-f", str(cfg)], name=variant)
        for port in ports.values():
            wait_port(self.bed.client, ROUTER_CLIENT_IP, port, proc=proc)
        return Column(f"router:{variant}", ROUTER_CLIENT_IP, ports)

    def measure(self, workload: Workload, column: Column, seconds: float) -> float:
        port = column.ports[workload.router_port or workload.port]
        with self.dnat() if column.dnat else contextlib.nullcontext():
            value = workload.measure(self.bed.client, column.host, port, seconds)
        time.sleep(0.3)  # let TIME_WAIT sockets and the softirq backlog settle
        return value


def run(args: argparse.Namespace) -> int:
    variants = args.variants.split(",")
    if cannot_run("datapath", variants, VARIANTS, "variants"):
        return 2
    workloads = [w for w in WORKLOADS if not args.only or any(o in w.name for o in args.only)]
    samples: dict[tuple[str, str], list[float]] = {}
    started = time.monotonic()
    same = {p: p for p in (*TCP_PORTS, FILE_HTTP_PORT)}
    same[FILE_HTTP_PORT] = FILE_PORT  # DNAT and direct have no HTTP mode: the same download
    columns = [
        Column("direct", EXTERNAL_IP, same),
        Column("dnat", ROUTER_CLIENT_IP, same, dnat=True),
    ]
    with tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp, TestBed(Path(tmp)) as bed:
        bench = Bench(bed, Path(tmp), args.file_mib << 20)
        try:
            bench.start_origins()
            columns += [bench.start_router(i, v) for i, v in enumerate(variants)]
            # Each cell is the median of its rounds; rounds rotate the order (bed.rotated).
            for round_ in range(args.repeat):
                for w in workloads:
                    for column in rotated(columns, round_):
                        value = bench.measure(w, column, args.duration)
                        samples.setdefault((w.name, column.name), []).append(value)
                        progress(round_, column.name, w.name, value, w.unit)
        finally:
            bench.close()
    results = {
        w.name: {c.name: statistics.median(samples[(w.name, c.name)]) for c in columns}
        for w in workloads
    }
    print_table(results, workloads, [c.name for c in columns], time.monotonic() - started, args)
    return 0


def print_table(
    results: dict[str, dict[str, float]],
    workloads: list[Workload],
    columns: list[str],
    elapsed: float,
    args: argparse.Namespace,
) -> None:
    """Absolute figures, then every column as a ratio to kernel DNAT."""
    print(
        f"# datapath: {args.duration:g}s per measurement, median of {args.repeat}, "
        f"{os.cpu_count()} CPUs, haproxy {_haproxy_version()}, {elapsed:.0f}s in all"
    )
    print()
    print("| workload | unit | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for w in workloads:
        row = results[w.name]
        print(f"| {w.name} | {w.unit} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |")
    print()
    print(
        "ratio to dnat (DNAT has no HTTP mode: the http-route row compares with DNAT of the port):"
    )
    print()
    print("| workload | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for w in workloads:
        row = results[w.name]
        dnat = row["dnat"]
        print(f"| {w.name} | " + " | ".join(f"{row[c] / dnat:.2f}×" for c in columns) + " |")


def _haproxy_version() -> str:
    out = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True, check=False).stdout
    return out.split()[2] if len(out.split()) > 2 else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each cell is the median")
    parser.add_argument(
        "--variants",
        default="base,splice,splice-response",
        help=f"router variants, comma-separated: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--only", action="append", help="run only workloads containing this")
    parser.add_argument("--file-mib", type=int, default=1024, help="size of the large download")
    args = parser.parse_args()
    if not 0.5 <= args.duration <= 30 or not 1 <= args.repeat <= 7:
        parser.error("--duration must be 0.5..30 and --repeat 1..7 (the bench is bounded)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
