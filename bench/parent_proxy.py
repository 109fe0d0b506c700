"""The cost of the added hop to a corporate proxy: haproxy-egress with `parent:` vs squid chained
to the same parent with `cache_peer` + `never_direct`, and the client going to the parent
directly, in one interleaved run on the netns test bed.

Client ns → (haproxy-egress | squid child | nothing) → parent squid, all in the router ns →
haproxy origin in the external ns. Plain HTTP with keep-alive and with a new connection per
request (wrk), and CONNECT + one request per tunnel (Python threads). The parent's work is the
same in all three; what differs is the hop in front of it, so the figure that matters is the
hop's requests per CPU-second (its own utime + stime over the run, /proc/<pid>/stat). Rounds
rotate which path goes first; the table has the medians. Needs root (ip netns), wrk, squid.
Bounded: ~3 x 3 x ROUNDS x DURATION seconds.

    .venv/bin/python -m bench.parent_proxy [--duration 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass

from bench.bed import connect_rate, rotated
from bench.policy_proxy import HAPROXY_PORT, RULES, cases, measured, proxy_bed
from haproxy_egress.config import policy
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.rundir import RunDir
from tests.netns import ROUTER_CLIENT_IP
from tests.squid import Squid
from tests.support import wait_for

PARENT_PORT, CHILD_PORT = 3129, 3130
PATHS = ("direct to the parent", "haproxy-egress → parent", "squid cache_peer → parent")


@dataclass
class ChildSquid(Squid):
    """squid as a child of the parent: every request through it, never direct."""

    parent_port: int = 0

    def config(self) -> str:
        peer = [
            f"cache_peer {self.address} parent {self.parent_port} 0 no-query no-digest default",
            "never_direct allow all",
        ]
        return super().config().replace("http_access ", "\n".join(peer) + "\nhttp_access ", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    parent = f"{ROUTER_CLIENT_IP}:{PARENT_PORT}"
    route = {
        "name": "web",
        "listen": HAPROXY_PORT,
        "mode": "proxy",
        "policy": RULES,
        "parent": {"proxies": [parent]},
    }
    with proxy_bed("bench-parent.", [route], [HAPROXY_PORT]) as (bed, workdir, router, run_dir):
        upstream = Squid(
            workdir / "parent", ROUTER_CLIENT_IP, PARENT_PORT, policy.parse_rules(["*"])
        )
        upstream.start(bed, bed.router, bed.client)
        child = ChildSquid(
            workdir / "child",
            ROUTER_CLIENT_IP,
            CHILD_PORT,
            policy.parse_rules(RULES),
            parent_port=PARENT_PORT,
        )
        child.start(bed, bed.router, bed.client)
        assert upstream.started is not None
        assert child.started is not None
        # The router started before its parent: wait for the parent's health check to pass.
        stats = CliSocket(RunDir(run_dir).stats_socket, timeout=5)
        wait_for(lambda: _parent_up(stats.command("show stat")), timeout=30)
        ports = dict(zip(PATHS, (PARENT_PORT, HAPROXY_PORT, CHILD_PORT), strict=True))
        # The hop's CPU: haproxy-egress's or the child squid's; for the direct path, the
        # parent's own (the reference for what one squid hop costs).
        pids = {
            PARENT_PORT: upstream.started.proc.pid,
            HAPROXY_PORT: router.proc.pid,
            CHILD_PORT: child.started.proc.pid,
        }
        runs = cases(
            bed,
            workdir,
            args.duration,
            lambda p: connect_rate(bed.client, ROUTER_CLIENT_IP, p, args.duration),
        )
        samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_ in range(args.rounds):
            for label, run in runs:
                for path in rotated(PATHS, round_):
                    port = ports[path]
                    samples.setdefault((label, path), []).append(measured(run, port, pids[port]))
        print(f"{args.rounds} rounds x {args.duration}s per case and path; medians")
        print_table([label for label, _ in runs], samples)


def _parent_up(show_stat: str) -> bool:
    return any(
        line.startswith("web-parent-tunnel,") and ",UP," in line for line in show_stat.splitlines()
    )


def print_table(
    labels: list[str], samples: dict[tuple[str, str], list[tuple[float, float]]]
) -> None:
    """Rates of the three paths, and requests per CPU-second of each hop."""
    direct, ours, squid = PATHS

    def rate(label: str, path: str) -> float:
        return statistics.median(r for r, _ in samples[(label, path)])

    def per_cpu(label: str, path: str) -> float:
        return statistics.median(r / c for r, c in samples[(label, path)] if c > 0)

    print(
        "| case | direct req/s | via haproxy-egress req/s | via squid child req/s "
        "| haproxy-egress hop req per CPU-s | squid child hop req per CPU-s | ratio "
        "| parent (direct) req per CPU-s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label in labels:
        hop, child = per_cpu(label, ours), per_cpu(label, squid)
        print(
            f"| {label} | {rate(label, direct):,.0f} | {rate(label, ours):,.0f} "
            f"| {rate(label, squid):,.0f} | {hop:,.0f} | {child:,.0f} | {hop / child:.2f}x "
            f"| {per_cpu(label, direct):,.0f} |"
        )


if __name__ == "__main__":
    main()
