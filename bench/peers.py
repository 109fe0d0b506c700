"""haproxy-egress beside the peers a user would pick instead, with kernel DNAT as the limit.

    .venv/bin/python bench/peers.py [--duration 3] [--repeat 3] [--pin] [--tuned t1,splice]
    .venv/bin/python bench/peers.py --quick     # CI smoke run: every cell once, < 60 s
    .venv/bin/python bench/peers.py --haproxy /usr/local/bin/haproxy30   # the image's 3.0
    .venv/bin/python bench/peers.py --only "proxy, keep" --cut nolog,nocount,nodecide

`--haproxy` is the binary haproxy-egress and the hand-tuned peers run (default: Debian 12's
2.6, or EGRESS_HAPROXY_BIN); the header names its version, so runs on 2.6 and 3.0 can be put
side by side.

One interleaved run in the namespaces of tests/netns.py (client → router → external host,
198.18.0.0/15 only; bench/bed.py has the origins and load generators). Candidates:

- `direct` (the router namespace only routes) and `dnat` (nftables DNAT + SNAT, the limit);
- `haproxy-egress`: the routes as this project compiles them (EGRESS_DESTINATION lines,
  EGRESS_SOURCE, a YAML key for the HTTP route and the forward proxy), nothing edited;
- `haproxy-egress:knobs`: the same compiled with the route knobs `log: false` and
  `splice: both` in `defaults:` (what a user may set on a busy or upload-heavy route);
- `tuned:<variant>`: haproxy configs for the same routes written by hand, as an expert would
  (TUNED says what each sets), with no log at all;
- `nginx`: Debian's nginx stream module (TCP routes), with the knobs nginx's docs suggest;
- `haproxy-acl`: a forward proxy written by hand in haproxy's `mode http`, the same allow list
  as plain ACLs (no CONNECT: mode http forwards no tunnel), the bare cost of the decision;
- `squid` and `tinyproxy`: Debian's forward proxies, with the same allow list as the route;
- with `--cut`: `haproxy-egress:<cut>`, the router's compiled config with one part taken out
  (CUTS says which), to price that part; `noauto` is the default before uploads were spliced.

Workloads: small requests keep-alive and one per connection (wrk), one and four bulk streams
(iperf3), a large download through a TCP and an HTTP route (curl), and through the forward
proxies absolute-URI requests keep-alive and one per connection (wrk), and CONNECT + one request
(Python clients). Each cell is the median of its rounds; rounds rotate the order of the
candidates so that noise from the shared machine hits all of them alike. The tables give every
figure as a ratio to DNAT and to the best peer in the same run, the CPU seconds each proxy used
(all its processes), the work per CPU-second and the peak resident memory. `--pin` puts the
proxies on one core and the generators and origins on the other (the proxies then run one
thread or worker). Every path leaves from its own source address (bed.dnat says why); every
process is stopped by its pid; the run is bounded by --max-seconds. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bed import (
    FILE_PORT,
    IPERF_PORT,
    ORIGIN_PORTS,
    PROXY_ORIGIN_PORT,
    SMALL_PORT,
    Costs,
    Origins,
    Wrk,
    cannot_run,
    connect_rate,
    dnat,
    download,
    iperf,
    progress,
    proxy_script,
    rotated,
)
from bench.policy_proxy import RULES
from haproxy_egress.config import policy
from haproxy_egress.config.vocabulary import Action
from haproxy_egress.haproxy.check import check
from haproxy_egress.haproxy.program import version
from tests.netns import (
    EXTERNAL_IP,
    ROUTER_CLIENT_IP,
    Started,
    TestBed,
    start_in,
    wait_port,
)
from tests.netns_policy import compile_router
from tests.squid import Squid
from tests.support import HAPROXY, DnsServer

# What a route carries; a candidate serves some of them, each on its own port.
SMALL, BULK, FILE, FILE_HTTP, PROXY = "small", "bulk", "file", "file-http", "proxy"
ORIGIN = {SMALL: SMALL_PORT, BULK: IPERF_PORT, FILE: FILE_PORT, FILE_HTTP: FILE_PORT}
ORIGIN[PROXY] = PROXY_ORIGIN_PORT
TCP_ROUTES = (SMALL, BULK, FILE)
ALL_ROUTES = (*TCP_ROUTES, FILE_HTTP, PROXY)
LIMITS = ("direct", "dnat")
OURS = "haproxy-egress"
# The same routes compiled with the route knobs a user sets on a busy route whose connections
# need no record, or that mostly uploads (docs/configuration.md); proxy routes take neither.
OURS_KNOBS = "haproxy-egress:knobs"
KNOBS = {"log": False, "splice": "both"}
# A forward proxy written by hand in haproxy's `mode http`: the same allow list as plain ACLs
# (ACL_PROXY_CFG), what the router's decision chain is measured against.
HAND = "haproxy-acl"
PLAIN_ONLY = {HAND}  # haproxy's mode http forwards no CONNECT tunnel
PEERS = ("tuned", "nginx", HAND, "squid", "tinyproxy")
# --cut: the router's own config with one part taken out (CUT_EDITS), to show what that part
# costs; not configs anyone should run. Each serves only the routes that part is about.
CUTS = {
    "nolog": "the forward proxy without its connection log line",
    "nocount": "the forward proxy without its policy and per-destination counters",
    "nodecide": "the forward proxy without the policy lookups (allowed once resolved)",
    "noauto": "the tcp and http routes without `option splice-auto` (the default before)",
    "trim": "the forward proxy deciding alike with less work per request (TRIMS)",
    "nosplice": "the forward proxy without the splice options of `defaults`",
    "noretry": "the forward proxy's pooled backend without `retry-on empty-response`",
    "onebackend": "the forward proxy sending every request to its pooled backend, untested",
    "bare": "the forward proxy without log, counters, splice options and retry-on",
}
# Work the forward proxy's chain does on every request that the same behaviour does not need:
# the URL copied into a variable only to test its start. (The IPv6-bracket substitutions are
# now run only on a name with a bracket, by the chain itself.)
TRIMS = (
    ("    http-request set-var(txn.egress_url) url\n", ""),
    ("unless { var(txn.egress_url) -m beg -i http:// }", "unless { url_beg -i http:// }"),
)
# Which routes each candidate serves: nginx stream has no HTTP mode and no forward proxy;
# squid and tinyproxy are only forward proxies.
SERVES = {
    "direct": ALL_ROUTES,
    "dnat": ALL_ROUTES,
    OURS: ALL_ROUTES,
    OURS_KNOBS: (*TCP_ROUTES, FILE_HTTP),
    "tuned": (*TCP_ROUTES, FILE_HTTP),
    "nginx": TCP_ROUTES,
    HAND: (PROXY,),
    "squid": (PROXY,),
    "tinyproxy": (PROXY,),
    **{
        f"{OURS}:{cut}": (PROXY,)
        for cut in (
            "nolog",
            "nocount",
            "nodecide",
            "trim",
            "nosplice",
            "noretry",
            "onebackend",
            "bare",
        )
    },
    f"{OURS}:noauto": (*TCP_ROUTES, FILE_HTTP),
}
EGRESS_BASE, TUNED_BASE, NGINX_BASE, HAND_PORT = 10000, 11000, 12000, 13000
SQUID_PORT, TINYPROXY_PORT = 3128, 8888
LOAD_CPU, PROXY_CPU = 0, 1  # --pin


def _ports(base: int, routes: Sequence[str]) -> dict[str, int]:
    return {route: base + i for i, route in enumerate(routes)}


# --- candidates ----------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One path: where the client connects for each route it serves, and what it costs."""

    name: str
    kind: str  # limit | ours | peer
    host: str
    ports: dict[str, int]
    costs: Costs | None = None
    dnat: bool = False

    @property
    def proxy(self) -> bool:
        """A forward proxy (CONNECT is spoken to it), not a plain path to the origin."""
        return self.kind != "limit"


@dataclass(frozen=True)
class Tuned:
    """A hand-written haproxy config for the same routes: what an expert would set."""

    threads: int | None  # None: one per CPU the proxy may use
    splice: tuple[str, ...] = ()
    bufsize: int | None = None

    def describe(self, cpus: int) -> str:
        parts = [f"nbthread {self.threads or cpus}", "no log"]
        parts += [f"option {s}" for s in self.splice] or ["no splice"]
        if self.bufsize:
            parts.append(f"tune.bufsize {self.bufsize}")
        return ", ".join(parts)


# The best configs measured before this bench (docs/benchmarks.md): one thread and no splicing for
# small keep-alive exchanges; threads, splicing both ways and 64 kB buffers for bulk.
TUNED = {
    "t1": Tuned(threads=1),
    "tN": Tuned(threads=None),  # one thread per CPU like haproxy-egress: isolates thread count
    "splice": Tuned(None, ("splice-request", "splice-response"), 65536),
    # Splice what destinations send, and uploads only once haproxy sees them stream (full
    # buffers read in a row): small exchanges never touch a pipe.
    "auto": Tuned(None, ("splice-auto", "splice-response")),
}

QUICK_TUNED = ("splice",)  # --quick: one tuned variant, to stay within a minute

TUNED_CFG = """global
    nbthread {threads}
{tune}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
{options}
{listens}"""


def tuned_config(variant: Tuned, cpus: int, ports: Mapping[str, int], source: str) -> str:
    """The hand-written haproxy.cfg of one tuned variant (health checks kept: same route)."""
    listens = []
    for route, port in ports.items():
        mode = "    mode http\n" if route == FILE_HTTP else ""
        listens.append(
            f"listen {route}\n    bind {ROUTER_CLIENT_IP}:{port}\n{mode}    source {source}\n"
            f"    server origin {EXTERNAL_IP}:{ORIGIN[route]} check\n"
        )
    return TUNED_CFG.format(
        threads=variant.threads or cpus,
        tune=f"    tune.bufsize {variant.bufsize}" if variant.bufsize else "",
        options="".join(f"    option {s}\n" for s in variant.splice),
        listens="\n".join(listens),
    )


NGINX_CFG = """load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes {workers};
user nobody nogroup;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 8192;
}}
stream {{
    proxy_connect_timeout 5s;
    proxy_timeout 1h;
    # nginx's 16 kB default halves bulk rates here; 64 kB as the tuned haproxy has.
    proxy_buffer_size 64k;
{servers}}}
"""


def nginx_config(workers: int, ports: Mapping[str, int], source: str, directory: Path) -> str:
    """nginx stream for the TCP routes: reuseport spreads accepts over the workers."""
    servers = "".join(
        f"    server {{ listen {ROUTER_CLIENT_IP}:{port} reuseport; proxy_bind {source}; "
        f"proxy_pass {EXTERNAL_IP}:{ORIGIN[route]}; }}\n"
        for route, port in ports.items()
    )
    return NGINX_CFG.format(workers=workers, dir=directory, servers=servers)


def tinyproxy_filter(rules: Sequence[policy.Rule]) -> list[str]:
    """The allow list as tinyproxy `FilterDefaultDeny` patterns (extended regexes on the host).

    tinyproxy has no deny-then-allow order: a deny rule is kept by leaving it out, which is
    exact only when no later allow rule overlaps it; refuse lists where that is not so.
    """
    lines = []
    for i, rule in enumerate(rules):
        if rule.action == Action.DENY:
            for later in rules[i + 1 :]:
                if later.action == Action.ALLOW and _overlap(rule, later):
                    raise ValueError(f"tinyproxy cannot express {rule.text} before {later.text}")
            continue
        if rule.kind == "host":
            lines.append(f"^{_ere(rule.value)}$")
        elif rule.kind == "domain":
            lines.append(f"^(.+\\.)?{_ere(rule.value)}$")
        elif isinstance(rule, policy.NetworkRule):
            lines.append(_network_ere(rule.network))
        else:
            lines.append(".*")
    return lines


def _overlap(a: policy.Rule, b: policy.Rule) -> bool:
    if "any" in (a.kind, b.kind):
        return True
    if isinstance(a, policy.NetworkRule) and isinstance(b, policy.NetworkRule):
        return a.network.overlaps(b.network)
    if "network" in (a.kind, b.kind):
        return False
    x, y = a.value, b.value
    return x == y or x.endswith("." + y) or y.endswith("." + x)


def _ere(text: str) -> str:
    return text.replace(".", "\\.")


def _network_ere(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    if network.version != 4 or network.prefixlen % 8:
        raise ValueError(f"tinyproxy filter: only IPv4 /8, /16, /24, /32 ({network})")
    octets = str(network.network_address).split(".")[: network.prefixlen // 8]
    rest = 4 - len(octets)
    return "^" + "\\.".join([*octets, *["[0-9]+"] * rest]) + "$"


TINYPROXY_CFG = """User nobody
Group nogroup
Port {port}
Listen {listen}
Bind {source}
Timeout 60
PidFile "{dir}/tinyproxy.pid"
LogFile "{dir}/tinyproxy.log"
LogLevel Critical
MaxClients 256
DisableViaHeader Yes
XTinyproxy No
Filter "{dir}/filter"
FilterType ere
FilterURLs Off
FilterDefaultDeny Yes
ConnectPort 80
"""


ACL_PROXY_CFG = """global
    nbthread {threads}
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout http-request 10s
    timeout http-keep-alive 10s

resolvers dns
    nameserver ns1 127.0.0.1:53
    hold valid 10s

backend dns_cache
    stick-table type string len 253 size 64k expire 10s store gpt0

frontend proxy
    bind {listen}:{port}
    http-request return status 400 unless {{ url_beg -i http:// }}
    http-request set-var(txn.host) url,field(3,/),host_only,lower
    http-request set-var(txn.port) url,field(3,/),port_only
    http-request set-var(txn.port) int(80) if {{ var(txn.port) -m int 0 }}
    http-request set-var(txn.dotted) str(.),concat(,txn.host,)
    # do-resolve keeps no answer past the request: cache it in a table for `hold valid`.
    http-request set-var(txn.ip) var(txn.host),table_gpt0(dns_cache),ipmask(32)
    http-request unset-var(txn.ip) if {{ var(txn.ip) -m ip 0.0.0.0/32 }}
    http-request set-var(txn.fresh) bool(true) unless {{ var(txn.ip) -m found }}
    http-request do-resolve(txn.ip,dns,ipv4) var(txn.host) if {{ var(txn.fresh) -m bool }}
    acl fresh var(txn.fresh) -m bool
    http-request track-sc1 var(txn.host) table dns_cache if fresh {{ var(txn.ip) -m found }}
    http-request sc-set-gpt0(1) var(txn.ip) if fresh {{ var(txn.ip) -m found }}
{acls}
    http-request return status 503 unless {{ var(txn.ip) -m found }}
    http-request set-dst var(txn.ip)
    http-request set-dst-port var(txn.port)
    http-request set-uri %[pathq]
    http-request del-header proxy-connection
{decide}
    default_backend pooled

backend pooled
    http-reuse always
    source {source}
    server http 0.0.0.0:0
"""


def acl_proxy_config(rules: Sequence[policy.Rule], threads: int, port: int, source: str) -> str:
    """A hand-written `mode http` forward proxy deciding `rules` (first match wins, default
    deny) with one ACL and one allow or deny line per rule, as an expert would write it."""
    acls, decide = [], []
    for i, rule in enumerate(rules):
        if rule.kind == "host":
            acls.append(f"    acl rule{i} var(txn.host) -m str {rule.value}")
        elif rule.kind == "domain":
            acls.append(f"    acl rule{i} var(txn.dotted) -m end .{rule.value}")
        elif isinstance(rule, policy.NetworkRule):
            acls.append(f"    acl rule{i} var(txn.ip) -m ip {rule.network}")
        else:
            raise ValueError(f"the hand-written proxy has no ACL for {rule.text}")
        verb = "deny deny_status 403" if rule.action == Action.DENY else "allow"
        decide.append(f"    http-request {verb} if rule{i}")
    decide.append("    http-request deny deny_status 403")
    return ACL_PROXY_CFG.format(
        threads=threads,
        listen=ROUTER_CLIENT_IP,
        port=port,
        source=source,
        acls="\n".join(acls),
        decide="\n".join(decide),
    )


def _cut(text: str, start: str, stop: str) -> str:
    """`text` without its lines from the first containing `start` to the last containing
    `stop` (both included)."""
    lines = text.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if start in line)
    last = max(i for i, line in enumerate(lines) if stop in line)
    return "".join(lines[:first] + lines[last + 1 :])


# What each --cut removes from the router's haproxy.cfg (of the forward proxy, only the
# http-request path of plain requests is measured, so only those lines are cut).
CUT_EDITS: dict[str, Callable[[str], str]] = {
    "nolog": lambda cfg: re.sub(r"(?m)^    log-format .*$", "    no log", cfg),
    "nocount": lambda cfg: re.sub(
        r"(?m)^    http-request (track-sc[02]|sc-inc-gpc[01]\([02]\)) .*\n", "", cfg
    ),
    "nodecide": lambda cfg: _cut(
        cfg,
        "http-request set-var(txn.egress_group) src,map_ip",
        "http-request set-var(txn.egress_verdict) str(unresolved)",
    ).replace(
        "    http-request track-sc0 ",
        "    http-request set-var(txn.egress_verdict) str(allow)\n    http-request track-sc0 ",
        1,
    ),
    "noauto": lambda cfg: re.sub(r"(?m)^    option splice-auto\n", "", cfg),
    "trim": lambda cfg: _replace_all(cfg, TRIMS),
    "nosplice": lambda cfg: re.sub(r"(?m)^    option splice-(response|auto)\n", "", cfg),
    "noretry": lambda cfg: re.sub(r"(?m)^    retry-on empty-response\n", "", cfg),
    "onebackend": lambda cfg: re.sub(
        r"(?m)^    use_backend web-(tunnel|pooled) .*\n", "", cfg
    ).replace("default_backend web-http", "default_backend web-pooled"),
    "bare": lambda cfg: CUT_EDITS["nocount"](
        CUT_EDITS["nolog"](CUT_EDITS["nosplice"](CUT_EDITS["noretry"](cfg)))
    ),
}


def _replace_all(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """`text` with each (old, new) replaced; an `old` that is not there is an error (the
    template changed under the bench)."""
    for old, new in pairs:
        if old not in text:
            raise ValueError(f"--cut: {old!r} is not in the router's config")
        text = text.replace(old, new)
    return text


def cut_config(live: str, cut: str) -> str:
    """The router's config `live` with CUT_EDITS[cut] applied."""
    cfg = CUT_EDITS[cut](live)
    if cfg == live:
        raise ValueError(f"--cut {cut}: nothing to cut in the router's config")
    return cfg


@dataclass
class SourcedSquid(Squid):
    """tests.squid's squid (Red Hat's ACL lines), leaving from its own source address."""

    source: str = ""

    def config(self) -> str:
        return super().config() + f"tcp_outgoing_address {self.source}\n"


# --- workloads --------------------------------------------------------------------------------


Measure = Callable[["Bench", Candidate, int], float]


@dataclass(frozen=True)
class Workload:
    """One row group: what is measured, over which route, in which unit."""

    name: str
    unit: str
    route: str
    measure: Measure
    goal: str  # what haproxy-egress should reach, checked in `verdicts`
    tunnel: bool = False  # CONNECT: only candidates outside PLAIN_ONLY speak it

    def serves(self, candidate: str) -> bool:
        """Whether `candidate` takes part in this workload."""
        routes = SERVES.get(candidate, SERVES[candidate.split(":", maxsplit=1)[0]])
        return self.route in routes and not (self.tunnel and candidate in PLAIN_ONLY)


def _small(close: bool) -> Measure:
    def run(bench: Bench, c: Candidate, port: int) -> float:
        url = f"http://{c.host}:{port}/"
        return bench.wrk_small.rate(bench.bed.client, url, bench.seconds, close)

    return run


def _bulk(streams: int) -> Measure:
    def run(bench: Bench, c: Candidate, port: int) -> float:
        return iperf(bench.bed.client, c.host, port, bench.seconds, streams)

    return run


def _download(bench: Bench, c: Candidate, port: int) -> float:
    return download(bench.bed.client, f"http://{c.host}:{port}/big", bench.seconds)


def _proxied(close: bool) -> Measure:
    def run(bench: Bench, c: Candidate, port: int) -> float:
        tool = bench.wrk_proxy[close]
        return tool.rate(bench.bed.client, f"http://{c.host}:{port}/", bench.seconds, close)

    return run


def _connect(bench: Bench, c: Candidate, port: int) -> float:
    return connect_rate(bench.bed.client, c.host, port, bench.seconds, tunnel=c.proxy)


TCP_GOAL, HTTP_GOAL, PROXY_GOAL = "tcp", "http", "proxy"
WORKLOADS = (
    Workload("small req, keep-alive", "req/s", SMALL, _small(close=False), TCP_GOAL),
    Workload("small req, new conn", "req/s", SMALL, _small(close=True), TCP_GOAL),
    Workload("iperf3 1 stream", "Gbit/s", BULK, _bulk(1), TCP_GOAL),
    Workload("iperf3 4 streams", "Gbit/s", BULK, _bulk(4), TCP_GOAL),
    Workload("download, tcp route", "Gbit/s", FILE, _download, TCP_GOAL),
    Workload("download, http route", "Gbit/s", FILE_HTTP, _download, HTTP_GOAL),
    Workload("proxy, keep-alive", "req/s", PROXY, _proxied(close=False), PROXY_GOAL),
    Workload("proxy, new conn", "req/s", PROXY, _proxied(close=True), PROXY_GOAL),
    Workload("CONNECT + 1 request", "req/s", PROXY, _connect, PROXY_GOAL, tunnel=True),
)


# --- the bench --------------------------------------------------------------------------------


@dataclass
class Sample:
    value: float
    cpu: float | None  # CPU seconds the proxy used during the measurement
    elapsed: float


@dataclass
class Bench:
    """The bed, the candidates' processes, and how long each measurement lasts."""

    bed: TestBed
    workdir: Path
    seconds: int
    settle: float
    pin: bool
    proxy_cpus: int
    dnat_source: str = ""
    wrk_small: Wrk = field(init=False)
    wrk_proxy: dict[bool, Wrk] = field(init=False)
    dns: DnsServer | None = None
    netns_etc: Path | None = None
    haproxy: str = HAPROXY  # the binary haproxy-egress and the tuned peers run

    def __post_init__(self) -> None:
        self.wrk_small = Wrk(threads=1, connections=16)
        self.wrk_proxy = {c: Wrk(1, 32, proxy_script(self.workdir, c)) for c in (False, True)}

    @contextlib.contextmanager
    def proxy_cpu(self) -> Iterator[None]:
        """Processes started in the block run on the proxy's core (--pin): they inherit this
        thread's affinity, so every starter (tests.squid, bed.start) is pinned alike."""
        if not self.pin:
            yield
            return
        os.sched_setaffinity(0, {PROXY_CPU})
        try:
            yield
        finally:
            os.sched_setaffinity(0, {LOAD_CPU})

    def start_names(self) -> None:
        """www.good.test → the origin, for every proxy: a DNS server on 127.0.0.1 in the router
        namespace; tinyproxy asks through libc, so the namespace gets its own resolv.conf and
        hosts (`ip netns exec` mounts /etc/netns/<ns>/* over /etc/*)."""
        records = {"www.good.test": [EXTERNAL_IP]}
        self.dns = start_in(self.bed.router, DnsServer(records=records, port=53))
        etc = Path("/etc/netns") / self.bed.router.name
        etc.mkdir(parents=True)
        self.netns_etc = etc
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        # tinyproxy has no DNS cache: it would ask the (slow, Python) test DNS server on every
        # request; a hosts entry gives it its best case, a resolver answering from memory. The
        # host's own entries stay: without its hostname there, squid slowed to 200 req/s.
        hosts = Path("/etc/hosts").read_text()
        (etc / "hosts").write_text(f"{hosts.rstrip()}\n{EXTERNAL_IP} www.good.test\n")

    def close(self) -> None:
        if self.dns is not None:
            self.dns.stop()
        if self.netns_etc is not None:
            for name in ("resolv.conf", "hosts"):
                (self.netns_etc / name).unlink(missing_ok=True)
            self.netns_etc.rmdir()

    def _ready(self, name: str, kind: str, started: Started, ports: dict[str, int]) -> Candidate:
        for port in ports.values():
            wait_port(self.bed.client, ROUTER_CLIENT_IP, port, timeout=30, proc=started)
        return Candidate(name, kind, ROUTER_CLIENT_IP, ports, Costs(started))

    def egress(self, name: str, base: int, source: str, cut: str | None = None) -> Candidate:
        """haproxy-egress: TCP routes from EGRESS_DESTINATION lines, the HTTP route and the
        forward proxy from a YAML key, compiled and checked as the router does, for the routes
        SERVES gives `name`; OURS_KNOBS adds `defaults: KNOBS` to the key; `cut` takes
        CUT_EDITS[cut] out of the compiled config."""
        ports = _ports(base, SERVES[name])
        lines = [f"{ports[r]} tcp {EXTERNAL_IP} {ORIGIN[r]}" for r in TCP_ROUTES if r in ports]
        key = self.proxy_route(ports[PROXY]) if PROXY in ports else {}
        routes = key.setdefault("routes", [])
        if FILE_HTTP in ports:
            destinations = [f"{EXTERNAL_IP}:{FILE_PORT}"]
            download = {"mode": "http", "listen": ports[FILE_HTTP], "destinations": destinations}
            routes.insert(0, {"name": "download-http", **download})
        if name == OURS_KNOBS:
            key["defaults"] = KNOBS
        env = {"EGRESS_DESTINATION": "\n".join(lines), "EGRESS_SOURCE": source}
        workdir = self.workdir / name.replace(":", "-")
        cfg = compile_router(workdir, {"bench.yaml": key}, env, haproxy_bin=self.haproxy)
        if cut is not None:
            cfg.write_text(cut_config(cfg.read_text(), cut))
            check(cfg, self.haproxy)
        with self.proxy_cpu():
            started = self.bed.start(self.bed.router, [self.haproxy, "-db", "-f", str(cfg)])
        return self._ready(name, "ours", started, ports)

    def proxy_route(self, port: int) -> dict[str, Any]:
        """The YAML key of the forward-proxy route alone (RULES, names from the bed's DNS)."""
        route = {"name": "web", "listen": port, "mode": "proxy", "policy": RULES}
        return {"routes": [route], "resolvers": {"nameservers": ["127.0.0.1:53"]}}

    def acl_proxy(self, source: str) -> Candidate:
        cfg = self.workdir / "haproxy-acl.cfg"
        rules = policy.parse_rules(RULES)
        cfg.write_text(acl_proxy_config(rules, self.proxy_cpus, HAND_PORT, source))
        check(cfg, self.haproxy)
        with self.proxy_cpu():
            started = self.bed.start(self.bed.router, [self.haproxy, "-db", "-f", str(cfg)])
        return self._ready(HAND, "peer", started, {PROXY: HAND_PORT})

    def tuned(self, index: int, name: str, source: str) -> Candidate:
        ports = _ports(TUNED_BASE + 10 * index, SERVES["tuned"])
        cfg = self.workdir / f"tuned-{name}.cfg"
        cfg.write_text(tuned_config(TUNED[name], self.proxy_cpus, ports, source))
        with self.proxy_cpu():
            argv = [self.haproxy, "-db", "-f", str(cfg)]
            started = self.bed.start(self.bed.router, argv, name=name)
        return self._ready(f"tuned:{name}", "peer", started, ports)

    def nginx(self, source: str) -> Candidate:
        ports = _ports(NGINX_BASE, SERVES["nginx"])
        directory = self.workdir / "nginx"
        directory.mkdir()
        cfg = directory / "nginx.conf"
        cfg.write_text(nginx_config(self.proxy_cpus, ports, source, directory))
        argv = ["nginx", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(cfg)]
        with self.proxy_cpu():
            started = self.bed.start(self.bed.router, argv, name="nginx")
        return self._ready("nginx", "peer", started, ports)

    def squid(self, source: str) -> Candidate:
        rules = policy.parse_rules(RULES)
        proxy = SourcedSquid(self.workdir / "squid", ROUTER_CLIENT_IP, SQUID_PORT, rules)
        proxy.source = source
        with self.proxy_cpu():
            proxy.start(self.bed, self.bed.router, self.bed.client)
        assert proxy.started is not None
        return self._ready(
            "squid", "peer", proxy.started, dict.fromkeys(SERVES["squid"], SQUID_PORT)
        )

    def tinyproxy(self, source: str) -> Candidate:
        directory = self.workdir / "tinyproxy"
        directory.mkdir()
        os.chmod(directory, 0o777)  # it drops root for nobody, then writes its pid and log
        patterns = tinyproxy_filter(policy.parse_rules(RULES))
        (directory / "filter").write_text("\n".join(patterns) + "\n")
        cfg = directory / "tinyproxy.conf"
        text = TINYPROXY_CFG.format(
            port=TINYPROXY_PORT, listen=ROUTER_CLIENT_IP, source=source, dir=directory
        )
        cfg.write_text(text)
        argv = ["tinyproxy", "-d", "-c", str(cfg)]
        with self.proxy_cpu():
            started = self.bed.start(self.bed.router, argv, name="tinyproxy")
        ports = dict.fromkeys(SERVES["tinyproxy"], TINYPROXY_PORT)
        return self._ready("tinyproxy", "peer", started, ports)

    def measure(self, workload: Workload, c: Candidate) -> Sample:
        """One bounded measurement of one candidate, with the CPU its processes used."""
        nat = dnat(self.bed, self.workdir, ORIGIN_PORTS, self.dnat_source)
        with nat if c.dnat else contextlib.nullcontext():
            if c.costs is not None:
                c.costs.begin()
            started = time.monotonic()
            value = workload.measure(self, c, c.ports[workload.route])
            elapsed = time.monotonic() - started
            cpu = c.costs.end() if c.costs is not None else None
        time.sleep(self.settle)  # let TIME_WAIT sockets and the softirq backlog settle
        return Sample(value, cpu, elapsed)


def candidate_names(tuned: Sequence[str], cuts: Sequence[str] = ()) -> list[str]:
    """Every candidate of a run, in table order."""
    tuned_names = [f"tuned:{t}" for t in tuned]
    ours = [OURS, OURS_KNOBS, *(f"{OURS}:{cut}" for cut in cuts)]
    return [*LIMITS, *ours, *tuned_names, "nginx", HAND, "squid", "tinyproxy"]


def plan(tuned: Sequence[str], cuts: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Every (workload, candidate) cell a run measures (the smoke test checks each is printed)."""
    return [
        (w.name, name) for w in WORKLOADS for name in candidate_names(tuned, cuts) if w.serves(name)
    ]


def start_candidates(
    bench: Bench, tuned: Sequence[str], cuts: Sequence[str] = ()
) -> list[Candidate]:
    """Every candidate, each leaving from its own source address."""
    bed = bench.bed
    bench.dnat_source = bed.add_router_source()
    limits = dict(ORIGIN)
    out = [
        Candidate("direct", "limit", EXTERNAL_IP, {r: limits[r] for r in SERVES["direct"]}),
        Candidate(
            "dnat", "limit", ROUTER_CLIENT_IP, {r: limits[r] for r in SERVES["dnat"]}, dnat=True
        ),
        bench.egress(OURS, EGRESS_BASE, bed.add_router_source()),
        bench.egress(OURS_KNOBS, EGRESS_BASE + 10, bed.add_router_source()),
    ]
    out += [
        bench.egress(f"{OURS}:{cut}", EGRESS_BASE + 20 + 10 * i, bed.add_router_source(), cut)
        for i, cut in enumerate(cuts)
    ]
    out += [bench.tuned(i, name, bed.add_router_source()) for i, name in enumerate(tuned)]
    out.append(bench.nginx(bed.add_router_source()))
    out.append(bench.acl_proxy(bed.add_router_source()))
    out.append(bench.squid(bed.add_router_source()))
    out.append(bench.tinyproxy(bed.add_router_source()))
    assert [c.name for c in out] == candidate_names(tuned, cuts)
    return out


Samples = dict[tuple[str, str], list[Sample]]


def run(args: argparse.Namespace) -> int:
    tuned = args.tuned.split(",")
    cuts = args.cut.split(",") if args.cut else []
    if cannot_run("peers", tuned, TUNED, "tuned variants") or (
        cuts and cannot_run("peers", cuts, CUTS, "cuts")
    ):
        return 2
    if args.pin:
        if len(os.sched_getaffinity(0)) < 2:
            print("--pin needs two CPUs", file=sys.stderr)
            return 2
        os.sched_setaffinity(0, {LOAD_CPU})  # generators, origins, DNS; proxies: proxy_cpu()
    proxy_cpus = 1 if args.pin else len(os.sched_getaffinity(0))
    workloads = [w for w in WORKLOADS if not args.only or any(o in w.name for o in args.only)]
    deadline = time.monotonic() + args.max_seconds
    started = time.monotonic()
    samples: Samples = {}
    rounds = 0
    with (
        tempfile.TemporaryDirectory(prefix="egress-peers-") as tmp,
        TestBed(Path(tmp), prefix=args.netns_prefix) as bed,
    ):
        workdir = Path(tmp)
        bench = Bench(
            bed, workdir, args.duration, args.settle, args.pin, proxy_cpus, haproxy=args.haproxy
        )
        origins = Origins(bed, workdir, args.file_mib << 20)
        try:
            origins.start()
            bed.forwarding(True)  # the direct and DNAT paths are routed by the router namespace
            bench.start_names()
            candidates = start_candidates(bench, tuned, cuts)
            costs = {c.name: c.costs for c in candidates if c.costs is not None}
            for round_ in range(args.repeat):
                if round_ and time.monotonic() > deadline:
                    print(f"  --max-seconds reached after {round_} rounds", file=sys.stderr)
                    break
                rounds += 1
                for w in workloads:
                    for c in rotated(candidates, round_):
                        if not w.serves(c.name):
                            continue
                        sample = bench.measure(w, c)
                        samples.setdefault((w.name, c.name), []).append(sample)
                        progress(round_, c.name, w.name, sample.value, w.unit)
        finally:
            bench.close()
            origins.close()
    names = [c.name for c in candidates]
    header = (
        f"# peers: {args.duration}s per measurement, median of {rounds} rounds, "
        f"{os.cpu_count()} CPUs{', --pin' if args.pin else ''}, "
        f"haproxy {version(args.haproxy)} ({args.haproxy}), "
        f"{time.monotonic() - started:.0f}s in all"
    )
    print(header)
    print_cells(samples, names)
    print_costs(costs)
    print_verdicts(samples)
    print()
    print(f"{OURS_KNOBS}: the same routes compiled with defaults {KNOBS}")
    print("tuned configs (hand-written, same routes and sources, no log):")
    for name in tuned:
        print(f"  tuned:{name}: {TUNED[name].describe(proxy_cpus)}")
    print(f"  nginx: worker_processes {proxy_cpus}, reuseport, proxy_buffer_size 64k")
    print(f"  {HAND}: mode http, nbthread {proxy_cpus}, one ACL per rule, no log")
    for cut in cuts:
        print(f"{OURS}:{cut}: {CUTS[cut]}")
    return 0


def _median(samples: Sequence[Sample]) -> float:
    return statistics.median(s.value for s in samples)


def _per_cpu(samples: Sequence[Sample]) -> float | None:
    """Work per CPU-second of the proxy (requests, or Gbit), median over the rounds."""
    ratios = [s.value * s.elapsed / s.cpu for s in samples if s.cpu]
    return statistics.median(ratios) if ratios else None


def best_peer(samples: Samples, workload: str, names: Sequence[str]) -> tuple[str, float] | None:
    peers = [
        (n, _median(samples[(workload, n)]))
        for n in names
        if n.split(":")[0] in PEERS and (workload, n) in samples
    ]
    return max(peers, key=lambda p: p[1]) if peers else None


def print_cells(samples: Samples, names: Sequence[str]) -> None:
    """One line per workload and candidate: the figure, its ratios, and the proxy's CPU."""
    print()
    print(
        "| workload | candidate | median | unit | × dnat | × best peer | proxy CPU s | per CPU-s |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for w in WORKLOADS:
        best = best_peer(samples, w.name, names)
        dnat_cell = samples.get((w.name, "dnat"))
        for name in names:
            cell = samples.get((w.name, name))
            if not cell:
                continue
            value = _median(cell)
            to_dnat = f"{value / _median(dnat_cell):.2f}×" if dnat_cell else "-"
            to_best = f"{value / best[1]:.2f}× ({best[0]})" if best else "-"
            cpu = sum(s.cpu for s in cell if s.cpu is not None) if cell[0].cpu is not None else None
            per = _per_cpu(cell)
            print(
                f"| {w.name} | {name} | {value:,.2f} | {w.unit} | {to_dnat} | {to_best} "
                f"| {'-' if cpu is None else f'{cpu:.2f}'} "
                f"| {'-' if per is None else f'{per:,.1f}'} |"
            )


def print_costs(costs: Mapping[str, Costs]) -> None:
    print()
    print("| proxy | CPU s over the run | peak RSS MB |")
    print("|---|---:|---:|")
    for name, c in costs.items():
        print(f"| {name} | {c.cpu:.1f} | {c.rss_peak / 2**20:.1f} |")


def _best_tuned(samples: Samples, workload: str) -> str | None:
    tuned = [n for (wn, n) in samples if wn == workload and n.startswith("tuned:")]
    return max(tuned, key=lambda n: _median(samples[(workload, n)])) if tuned else None


def goal_checks(
    samples: Samples, w: Workload, candidate: str = OURS
) -> list[tuple[str, float, float]]:
    """(against what, ratio, goal) for haproxy-egress on one workload, per the goals in
    docs/benchmarks.md."""
    ours = samples.get((w.name, candidate))
    if not ours:
        return []
    mine = _median(ours)
    against: list[tuple[str, float]] = []
    if w.goal == TCP_GOAL:
        against.append(("nginx", 1.0))
    if w.goal in (TCP_GOAL, HTTP_GOAL):
        best = _best_tuned(samples, w.name)
        if best:
            against.append((best, 0.97 if w.goal == TCP_GOAL else 0.9))
    if w.goal == PROXY_GOAL:
        against += [("squid", 1.0), ("tinyproxy", 1.0)]
    checks = [
        (name, mine / _median(samples[(w.name, name)]), goal)
        for name, goal in against
        if (w.name, name) in samples
    ]
    squid = samples.get((w.name, "squid"))
    mine_cpu, squid_cpu = _per_cpu(ours), _per_cpu(squid) if squid else None
    if w.goal == PROXY_GOAL and mine_cpu and squid_cpu:
        checks.append(("squid per CPU-s", mine_cpu / squid_cpu, 3.0))
    return checks


def print_verdicts(samples: Samples) -> None:
    print()
    print("goals (haproxy-egress against peers in this run):")
    for candidate in (OURS, OURS_KNOBS):
        for w in WORKLOADS:
            for against, r, goal in goal_checks(samples, w, candidate):
                verdict = "met" if r >= goal else "MISSED"
                print(f"  {candidate}: {w.name}: {r:.2f}× {against} (goal ≥ {goal:g}×): {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each cell is the median")
    parser.add_argument("--tuned", default="t1,splice", help=f"variants of {', '.join(TUNED)}")
    parser.add_argument("--pin", action="store_true", help="proxies on CPU 1, the rest on CPU 0")
    parser.add_argument("--file-mib", type=int, default=1024, help="size of the large download")
    parser.add_argument("--settle", type=float, default=0.3, help="pause after a measurement")
    parser.add_argument("--max-seconds", type=float, default=1800, help="no new round after")
    parser.add_argument("--only", action="append", help="run only workloads containing this")
    parser.add_argument(
        "--netns-prefix", default="he", help="start of the names of the bench's namespaces"
    )
    parser.add_argument(
        "--cut",
        default="",
        help="also run the router's config without one part, comma-separated: "
        + "; ".join(f"{k}: {v}" for k, v in CUTS.items()),
    )
    parser.add_argument(
        "--haproxy",
        default=HAPROXY,
        help="the haproxy binary haproxy-egress and the tuned peers run, e.g. "
        "/usr/local/bin/haproxy30 (the image's 3.0; tools/haproxy30.sh)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: 1 round of 1 s, a 64 MiB download, one tuned variant (< 60 s)",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeat, args.file_mib, args.settle = 1, 1, 64, 0.05
        args.tuned = ",".join(QUICK_TUNED)
    if not 1 <= args.duration <= 30 or not 1 <= args.repeat <= 7:
        parser.error("--duration must be 1..30 and --repeat 1..7 (the bench is bounded)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
