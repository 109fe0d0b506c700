"""Request rate through the policy proxy vs squid (same rules, same run, same test bed).

Client ns → proxy in the router ns (haproxy-egress `mode: proxy`, or squid configured like Red
Hat's http-proxy mode) → origin in the external ns. Plain HTTP with keep-alive and with a new
connection per request (wrk), and CONNECT + one request per tunnel (Python threads). Prints
requests/s and haproxy/squid ratios. Needs root (ip netns), wrk, squid. Bounded: ~4x DURATION.

    .venv/bin/python -m bench.policy_proxy [--duration 5] [--rounds 3]
    .venv/bin/python -m bench.policy_proxy --groups [--duration 5] [--rounds 3]

With --groups, the peers are two routes of one haproxy-egress router: today's single list
(RULES) and a route with 100 client groups of 50 rules each, the client's own group last and
its matching rule last in it (the worst case for a rule-by-rule chain; the map lookups of
render/maps.py cost the same for any list). Same process, so only requests/s are compared.

The load generator, the origin and the proxy share this machine's 2 cores, and with haproxy
the machine is saturated (squid, single-threaded, is not): so besides requests/s the bench
reads each proxy's own CPU time (/proc/<pid>/stat, utime + stime) over the run and prints
requests per CPU-second, the capacity of one core of the proxy. Rounds alternate which proxy
goes first; the table has the medians of the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.bed import (
    ORIGIN_CFG,
    PROXY_ORIGIN_PORT,
    SMALL_PORT,
    Wrk,
    connect_rate,
    connect_wrk,
    cpu_seconds,
    proxy_script,
)
from haproxy_egress.config import policy
from tests.netns import CLIENT_IP, ROUTER_CLIENT_IP, Started, TestBed, start_in, wait_port
from tests.netns_policy import start_router
from tests.squid import Squid
from tests.support import HAPROXY, DnsServer

RULES = ["!*.bad.test", "*.good.test", "!198.18.3.0/24", "198.18.2.0/24", "exact.test"]
HAPROXY_PORT, SQUID_PORT = 8080, 3128


def wrk(bed: TestBed, port: int, duration: int, close: bool, workdir: Path) -> float:
    """Absolute-URI GETs through the proxy at `port` (wrk -t2 -c32)."""
    tool = Wrk(threads=2, connections=32, script=proxy_script(workdir, close))
    return tool.rate(bed.client, f"http://{ROUTER_CLIENT_IP}:{port}/", duration, close)


def _origin_and_dns(bed: TestBed, workdir: Path, host: str, cfg: str, port: int) -> DnsServer:
    """A haproxy origin on `host` (config `cfg`, ready on `port`) in the external namespace, and
    the router's DNS naming www.good.test after it; the bed stops the origin, the caller the DNS."""
    origin_cfg = workdir / "origin.cfg"
    origin_cfg.write_text(cfg)
    origin = bed.start(bed.external, [HAPROXY, "-db", "-f", str(origin_cfg)], name="origin")
    wait_port(bed.router, host, port, proc=origin)
    return start_in(bed.router, DnsServer(records={"www.good.test": [host]}, port=53))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--no-decision-log",
        action="store_true",
        help="experiment: drop haproxy's per-request log line (squid, as Red Hat configured it, "
        "logs nothing) to show what the decision log costs",
    )
    parser.add_argument(
        "--groups",
        action="store_true",
        help="compare today's single list with 100 client groups x 50 rules (no squid)",
    )
    args = parser.parse_args()
    (main_groups if args.groups else main_squid)(args)


@contextlib.contextmanager
def proxy_bed(
    prefix: str, routes: list[dict[str, object]], ports: list[int]
) -> Iterator[tuple[TestBed, Path, Started, Path]]:
    """The netns bed with a haproxy origin, the router's DNS and a haproxy-egress router
    running `routes`: (bed, workdir, router, run dir)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, TestBed(Path(tmp)) as bed:
        workdir = Path(tmp)
        host = bed.add_external_host()
        # A haproxy origin: a Python one would be the bottleneck, not the proxies.
        cfg = ORIGIN_CFG.format(host=host, small=SMALL_PORT, proxied=PROXY_ORIGIN_PORT)
        dns = _origin_and_dns(bed, workdir, host, cfg, PROXY_ORIGIN_PORT)
        try:
            keys = {"r.yaml": {"resolvers": {"nameservers": ["127.0.0.1:53"]}, "routes": routes}}
            router, run_dir = start_router(bed, workdir, keys, {}, ports)
            yield bed, workdir, router, run_dir
        finally:
            dns.stop()


Case = tuple[str, Callable[[int], float]]
Samples = dict[tuple[str, int], list[tuple[float, float]]]


def cases(bed: TestBed, workdir: Path, seconds: int, connect: Callable[[int], float]) -> list[Case]:
    """The three workloads, each a function of the proxy's port."""
    return [
        ("HTTP keep-alive", lambda p: wrk(bed, p, seconds, False, workdir)),
        ("HTTP new connection", lambda p: wrk(bed, p, seconds, True, workdir)),
        ("CONNECT + 1 request", connect),
    ]


def sampled(runs: list[Case], pair: tuple[int, int], pids: dict[int, int], rounds: int) -> Samples:
    """(requests/s, CPU cores) of every case on both ports, rounds alternating which goes
    first."""
    samples: Samples = {}
    for round_ in range(rounds):
        order = pair if round_ % 2 == 0 else pair[::-1]
        for label, run in runs:
            for port in order:
                samples.setdefault((label, port), []).append(measured(run, port, pids[port]))
    return samples


def print_table(runs: list[Case], samples: Samples, pair: tuple[int, int], names: str) -> None:
    """Medians per case: both rates and their ratio, and requests per CPU-second."""
    a, b = pair
    first, second = names.split("|")
    print(
        f"| case | {first} req/s | {second} req/s | ratio "
        f"| {first} req per CPU-s | {second} req per CPU-s | ratio per core |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, _ in runs:
        ra = statistics.median(r for r, _ in samples[(label, a)])
        rb = statistics.median(r for r, _ in samples[(label, b)])
        ca = statistics.median(r / c for r, c in samples[(label, a)])
        cb = statistics.median(r / c for r, c in samples[(label, b)])
        print(
            f"| {label} | {ra:,.0f} | {rb:,.0f} | {ra / rb:.2f}x "
            f"| {ca:,.0f} | {cb:,.0f} | {ca / cb:.2f}x |"
        )


def main_squid(args: argparse.Namespace) -> None:
    """haproxy-egress vs squid on the same rules, rounds alternating which proxy goes first."""
    route = {"name": "web", "listen": HAPROXY_PORT, "mode": "proxy", "policy": RULES}
    with proxy_bed("bench-policy.", [route], [HAPROXY_PORT]) as (bed, workdir, router, run_dir):
        haproxy = router
        if args.no_decision_log:
            haproxy = restarted_without_log(bed, router, run_dir / "haproxy.cfg")
        squid = Squid(workdir / "squid", ROUTER_CLIENT_IP, SQUID_PORT, policy.parse_rules(RULES))
        squid.start(bed, bed.router, bed.client)
        assert squid.started is not None
        pids = {HAPROXY_PORT: haproxy.proc.pid, SQUID_PORT: squid.started.proc.pid}
        # CONNECT from Python threads here: squid's handling of bytes sent behind the CONNECT
        # head (connect_wrk) is not what this comparison is about.
        runs = cases(
            bed,
            workdir,
            args.duration,
            lambda p: connect_rate(bed.client, ROUTER_CLIENT_IP, p, args.duration),
        )
        samples = sampled(runs, (HAPROXY_PORT, SQUID_PORT), pids, args.rounds)
        print(f"{args.rounds} rounds x {args.duration}s per case and proxy; medians")
        print_table(runs, samples, (HAPROXY_PORT, SQUID_PORT), "haproxy-egress|squid")


GROUPS_PORT = 8082


def group_rules(n: int, last: str) -> list[str]:
    """50 rules of every kind that do not match the bench's destination, then `last`."""
    rules: list[str] = []
    for i in range(49):
        kind = i % 4
        if kind == 0:
            rules.append(f"host{n}-{i}.other.test")
        elif kind == 1:
            rules.append(f"*.d{n}-{i}.other.test:443")
        elif kind == 2:
            rules.append(f"!10.{n}.{i}.0/24")
        else:
            rules.append(f"[2001:db8:{n:x}:{i:x}::/64]:443")
    return [*rules, last]


def groups_route() -> dict[str, object]:
    """100 client groups x 50 rules; only the last group holds the bench client."""
    clients = [
        {"name": f"g{n}", "from": [f"10.{n}.0.0/16"], "policy": group_rules(n, "*.good.test")}
        for n in range(99)
    ]
    clients.append(
        {"name": "bench", "from": [f"{CLIENT_IP}/32"], "policy": group_rules(99, "*.good.test")}
    )
    return {
        "name": "groups",
        "listen": GROUPS_PORT,
        "mode": "proxy",
        "clients": clients,
        "policy": ["exact.test"],
    }


def main_groups(args: argparse.Namespace) -> None:
    """Single list vs 100 groups x 50 rules, interleaved, in one router."""
    routes = [{"name": "web", "listen": HAPROXY_PORT, "mode": "proxy", "policy": RULES}]
    routes.append(groups_route())
    with proxy_bed("bench-groups.", routes, [HAPROXY_PORT, GROUPS_PORT]) as (
        bed,
        workdir,
        router,
        _,
    ):
        runs = cases(
            bed,
            workdir,
            args.duration,
            lambda p: connect_wrk(bed.client, ROUTER_CLIENT_IP, p, args.duration, workdir),
        )
        # Both routes are one haproxy: its CPU time during a route's run over the requests of
        # that run is what a decision costs there, whatever the load generator manages.
        pids = dict.fromkeys((HAPROXY_PORT, GROUPS_PORT), router.proc.pid)
        samples = sampled(runs, (GROUPS_PORT, HAPROXY_PORT), pids, args.rounds)
        print(f"{args.rounds} rounds x {args.duration}s per case and route; medians")
        print_table(runs, samples, (GROUPS_PORT, HAPROXY_PORT), "100 groups x 50 rules|single list")


def restarted_without_log(bed: TestBed, router: Started, cfg: Path) -> Started:
    """The same config without `log global` (so no frontend logs), haproxy restarted."""
    router.proc.terminate()
    router.proc.wait(10)
    text = cfg.read_text().replace("    log global\n", "")
    cfg.write_text(text)
    started = bed.start(bed.router, [HAPROXY, "-db", "-f", str(cfg)], name="haproxy-no-log")
    wait_port(bed.client, ROUTER_CLIENT_IP, HAPROXY_PORT, proc=started)
    return started


def measured(run: Callable[[int], float], port: int, pid: int) -> tuple[float, float]:
    """(requests/s, CPU cores the proxy used) of one run."""
    cpu, started = cpu_seconds([pid]), time.monotonic()
    rate = run(port)
    return rate, (cpu_seconds([pid]) - cpu) / (time.monotonic() - started)


if __name__ == "__main__":
    main()
