"""The live proxy and `explain` make the same decision: same verdict, same rule, every case.

A seeded generator writes rule lists (names, wildcards, networks v4/v6, denies, ports, `*`,
address classes switched on and off, report-only lists, client groups chosen by loopback
source addresses) and destinations (names that resolve, through a test DNS
server, into every class and none; names that do not resolve; IP literals in every spelling,
IPv4 embedded in IPv6 forms; the router's own ports). Each rule list is one proxy route of a
single haproxy; each case is one request, plain HTTP on keep-alive connections or CONNECT.
The proxy's verdict and rule come from its own decision log line (`rule=… verdict=…`), the
expected ones from `commands.explain.explain` on the same config.

Nothing leaves the machine: every route connects from `source 127.0.0.1`, and the kernel
refuses to route a loopback source anywhere but loopback (connect fails with EINVAL), so an
allowed destination outside 127.0.0.0/8 gets a 503 and is still logged as allowed.
"""

from __future__ import annotations

import http.client
import ipaddress
import random
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from haproxy_egress.commands.explain import explain
from haproxy_egress.config.addresses import IPAddress
from haproxy_egress.config.document import Config
from tests.policy_proxy import PolicyProxy
from tests.support import DnsServer, free_port, wait_for

SEED = 20261201
ROUTES = 40
CASES_PER_ROUTE = 60  # 2,400 cases
PORTS = (81, 444, 8444, 5999)  # nothing listens there; a rule's port list picks from these

DOMAINS = ("a.test", "b.a.test", "c.b.a.test", "x.test", "corp.example", "api.corp.example")
LABELS = ("www", "api", "m", "b", "c", "deep.m")
# Where names resolve: every address class, public test ranges, IPv6 and embedded forms.
ADDRESSES = (
    "127.0.0.1",
    "127.0.0.5",
    "10.1.2.3",
    "10.200.0.1",
    "172.16.5.5",
    "192.168.1.1",
    "100.64.3.4",
    "100.100.100.200",
    "169.254.169.254",
    "169.254.1.1",
    "0.1.2.3",
    "240.1.2.3",
    "255.255.255.255",
    "224.0.0.9",
    "198.51.100.7",
    "198.51.100.200",
    "203.0.113.9",
    "2001:db8::5",
    "2001:db8:1::7",
    "::1",
    "fe80::1",
    "fd00:ec2::254",
    "fc00::9",
    "ff02::1",
    "2001::1",
    "64:ff9b:1::a00:1",
)
LITERALS = (
    *ADDRESSES,
    "::ffff:127.0.0.1",
    "::ffff:10.1.2.3",
    "::ffff:198.51.100.7",
    "::127.0.0.1",
    "::100.64.3.4",
    "64:ff9b::7f00:1",
    "64:ff9b::c633:6407",
    "64:ff9b::a9fe:a9fe",
    "2002:7f00:1::1",
    "2002:c633:6407::1",
    "2002:6440:304::",
    "::",
)
NETWORKS = (
    "127.0.0.0/8",
    "127.0.0.5",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "100.64.0.0/10",
    "169.254.169.254",
    "169.254.0.0/16",
    "198.51.100.0/24",
    "198.51.100.128/25",
    "203.0.113.9/32",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "[2001:db8::/32]",
    "[::1]",
    "[::/0]",
    "[fe80::/10]",
    "[2002::/16]",
    "[::ffff:127.0.0.0/104]",
    "[fc00::/7]",
)
# Client addresses (all loopback) and the networks client groups are made of.
SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9")
GROUP_SOURCES = ("127.0.0.2/32", "127.0.0.2/31", "127.0.0.4/32", "127.0.0.0/29", "::1/128")
# Some routes take only some of those clients: the others are refused on connect, unlogged.
ALLOW_FROM = (["127.0.0.0/30"], ["127.0.0.1", "127.0.0.9/32"])
GUARDS = (["default"], ["default", "private"], ["default", "-loopback"], ["default", "-cgnat"])


@dataclass(frozen=True)
class Case:
    """One request: to which route, where, and how (HTTP or CONNECT)."""

    route: str
    port: int  # the route's listen port
    host: str  # as written in the request (IPv6 without brackets)
    dport: int
    connect: bool
    source: str  # the client address: it picks the client group

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.dport}"

    @property
    def key(self) -> tuple[str, str, int, str]:
        """What the decision log line names: route, destination host (lower case), port,
        client address."""
        return self.route, self.host.lower(), self.dport, self.source


def _name(rng: random.Random) -> str:
    domain = rng.choice(DOMAINS)
    return domain if rng.random() < 0.3 else f"{rng.choice(LABELS)}.{domain}"


def _rule(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        body = _name(rng)
    elif kind < 0.6:
        body = "*." + rng.choice(DOMAINS)
    else:
        body = rng.choice(NETWORKS)
    if rng.random() < 0.3:
        ports = ",".join(str(p) for p in sorted(rng.sample(PORTS, rng.randint(1, 2))))
        if body.startswith("[") or ":" not in body:
            body = f"{body}:{ports}"
    elif body.startswith("[") and rng.random() < 0.5:
        body = body[1:-1]
    return ("!" if rng.random() < 0.3 else "") + body


def _rules(rng: random.Random) -> list[str]:
    rules = [_rule(rng) for _ in range(rng.randint(1, 12))]
    if rng.random() < 0.3:
        rules.append("*")
    return rules


def _records(rng: random.Random) -> dict[str, list[str]]:
    """Every name the cases may ask for → its A/AAAA answers (some names resolve to none)."""
    names = {d for d in DOMAINS} | {f"{label}.{d}" for label in LABELS for d in DOMAINS}
    out: dict[str, list[str]] = {}
    for name in sorted(names):
        pick = rng.random()
        if pick < 0.1:
            continue  # NXDOMAIN
        v4 = [a for a in ADDRESSES if ":" not in a]
        v6 = [a for a in ADDRESSES if ":" in a]
        if pick < 0.75:
            out[name] = [rng.choice(v4)]
        elif pick < 0.9:
            out[name] = [rng.choice(v6)]  # only AAAA: the proxy falls back to IPv6
        else:
            out[name] = [rng.choice(v4), rng.choice(v6)]
    return out


def _cases(rng: random.Random, routes: list[tuple[str, int]]) -> list[Case]:
    own_ports = [p for _, p in routes]
    cases: dict[tuple[str, str, int, str], Case] = {}
    for name, port in routes:
        while sum(1 for c in cases.values() if c.route == name) < CASES_PER_ROUTE:
            pick = rng.random()
            if pick < 0.55:
                host = _name(rng)
            elif pick < 0.6:
                host = rng.choice(("nx.test", "gone.a.test", "NX.Corp.Example"))
            else:
                host = rng.choice(LITERALS)
            dport = rng.choice(PORTS)
            if rng.random() < 0.05:  # back into the router itself
                host, dport = rng.choice(("127.0.0.1", "127.0.0.5", "::1")), rng.choice(own_ports)
            source = rng.choice(SOURCES)
            case = Case(name, port, host, dport, connect=rng.random() < 0.25, source=source)
            cases.setdefault(case.key, case)
    return list(cases.values())


def _config(dns_port: int) -> tuple[dict[str, Any], list[Case], dict[str, list[str]]]:
    rng = random.Random(SEED)
    records = _records(rng)
    ports: set[int] = set()
    while len(ports) < ROUTES:  # free_port() may hand out one port twice
        ports.add(free_port())
    routes = [(f"r{i}", port) for i, port in enumerate(sorted(ports))]
    doc = {
        # A short timeout: a name that does not exist costs the proxy a few resolver timeouts.
        "resolvers": {
            "nameservers": [f"127.0.0.1:{dns_port}"],
            "hold_valid": "1h",
            "timeout": "200ms",
        },
        "routes": [
            {
                "name": name,
                "listen": f"127.0.0.1:{port}",
                "mode": "proxy",
                "source": "127.0.0.1",
                "connect_timeout": "2s",
                "guard": rng.choice(GUARDS),
                **({"allow_from": rng.choice(ALLOW_FROM)} if rng.random() < 0.2 else {}),
                "enforce": rng.random() > 0.2,  # some lists are report-only
                "clients": [
                    {
                        "name": f"g{g}",
                        "from": rng.sample(GROUP_SOURCES, rng.randint(1, 2)),
                        "policy": _rules(rng),
                        **({"enforce": False} if rng.random() < 0.2 else {}),
                    }
                    for g in range(rng.choice((0, 0, 1, 2, 3)))
                ],
                "policy": _rules(rng),
            }
            for name, port in routes
        ],
    }
    return doc, _cases(rng, routes), records


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[Config, list[Case], dict[str, list[str]], Path]]:
    dns = DnsServer().start()
    doc, cases, records = _config(dns.port)
    dns.records.update(records)
    running = PolicyProxy(tmp_path, doc)
    try:
        running.start()
        assert running.config is not None
        yield running.config, cases, records, running.log
    finally:
        running.stop()
        dns.stop()


def _send_http(cases: list[Case]) -> None:
    """HTTP cases of one route and client address over keep-alive connections (a new one
    when the proxy closed the last)."""
    conn: http.client.HTTPConnection | None = None
    for case in cases:
        for _attempt in range(2):
            if conn is None:
                conn = http.client.HTTPConnection(
                    "127.0.0.1", case.port, timeout=10, source_address=(case.source, 0)
                )
            current = conn
            try:
                current.request(
                    "GET", f"http://{case.authority}/", headers={"Host": case.authority}
                )
                response = current.getresponse()
                response.read()
                if response.will_close:
                    current.close()
                    conn = None
                break
            except (http.client.HTTPException, OSError):
                current.close()
                conn = None
    if conn is not None:
        conn.close()


def _send_connect(case: Case) -> bytes:
    """One CONNECT; what the proxy answered (b"" when it reset or closed at once)."""
    answer = b""
    try:
        with socket.create_connection(
            ("127.0.0.1", case.port), timeout=10, source_address=(case.source, 0)
        ) as s:
            s.sendall(
                f"CONNECT {case.authority} HTTP/1.1\r\nHost: {case.authority}\r\n\r\n".encode()
            )
            s.settimeout(3)
            while (chunk := s.recv(65536)) and b"\r\n\r\n" not in (answer := answer + chunk):
                pass
    except OSError:
        pass  # reset: refused on connect (allow_from), or the upstream connect failed
    return answer


def _decisions(log: Path) -> dict[tuple[str, str, int, str], set[tuple[str, str, str]]]:
    """The proxy's decision log → (route, host, port, client) → {(verdict, rule, group)}."""
    out: dict[tuple[str, str, int, str], set[tuple[str, str, str]]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if " egress route=" not in line:
            continue
        fields = dict(f.split("=", 1) for f in line.split(" egress ", 1)[1].split() if "=" in f)
        host, port = fields["dst"].rsplit(":", 1)
        client = line.split(" ", 1)[0].rsplit(":", 1)[0]
        key = (fields["route"], host, int(port), client)
        out.setdefault(key, set()).add((fields["verdict"], fields["rule"], fields["group"]))
    return out


@pytest.mark.timeout(120)
def test_live_proxy_and_explain_agree_on_every_case(
    proxy: tuple[Config, list[Case], dict[str, list[str]], Path],
) -> None:
    config, cases, records, log = proxy
    assert len(cases) >= 2000
    started = time.monotonic()
    by_route: dict[str, list[Case]] = {}
    for case in cases:
        by_route.setdefault(case.route, []).append(case)

    def send(route_cases: list[Case]) -> None:
        for case in route_cases:
            if case.connect:
                _send_connect(case)
        for source in SOURCES:
            _send_http([c for c in route_cases if not c.connect and c.source == source])

    def resolve(name: str) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in records.get(name.lower(), [])]

    expected = {}
    for case in cases:
        verdict = explain(config, case.authority, resolve=resolve, client=case.source)
        (route_verdict,) = [r for r in verdict.routes if r.route == case.route]
        expected[case.key] = route_verdict
    # allow_from refuses these clients on connect: the proxy decides nothing and logs nothing.
    refused = {k for k, v in expected.items() if v.rule_id == "allow_from"}
    assert refused, "the corpus must reach allow_from"

    # One client thread per route: the order of cases does not matter, the log names each.
    with ThreadPoolExecutor(max_workers=len(by_route)) as pool:
        list(pool.map(send, by_route.values()))
    keys = {c.key for c in cases} - refused
    try:
        wait_for(lambda: keys <= set(_decisions(log)), timeout=5)
    except AssertionError:
        # A keep-alive request can meet a connection the proxy is just closing, twice: such a
        # request never reached the proxy; send it once more on a connection of its own.
        for case in (c for c in cases if c.key in keys and c.key not in _decisions(log)):
            if case.connect:
                _send_connect(case)
            else:
                _send_http([case])
    try:
        wait_for(lambda: keys <= set(_decisions(log)), timeout=10)
    except AssertionError:
        missing = sorted(keys - set(_decisions(log)))
        raise AssertionError(f"{len(missing)} cases not in the log: {missing[:20]}") from None
    live = _decisions(log)
    assert not refused & set(live), sorted(refused & set(live))[:20]
    # A refused client gets no answer at all, not a 403: haproxy closes before reading.
    for case in [c for c in cases if c.key in refused][:10]:
        assert _send_connect(case) == b"", case

    mismatches = []
    for case in cases:
        if case.key in refused:
            continue
        want = (expected[case.key].verdict, expected[case.key].rule_id, expected[case.key].group)
        got = live.get(case.key)
        if got != {want}:
            route = next(r for r in config.routes if r.name == case.route)
            mismatches.append(
                f"{case.route} {'CONNECT' if case.connect else 'GET'} {case.authority}"
                f" from {case.source} ({records.get(case.host.lower())}): proxy {got},"
                f" explain {want}; guard {list(route.guard)}, policy {list(route.policy)},"
                f" clients {[(g.name, list(map(str, g.sources)), g.policy) for g in route.clients]}"
            )
    kinds = {v for got in live.values() for v, _, _ in got}
    assert not mismatches, f"{len(mismatches)} of {len(cases)} differ:\n" + "\n".join(
        mismatches[:30]
    )
    # The corpus reaches every verdict and the guard, or it would prove little.
    assert {"allow", "deny", "unresolved", "would-deny"} <= kinds, kinds
    rules = {r for got in live.values() for _, r, _ in got}
    assert {"default", "guard-self", "guard-loopback"} <= rules, sorted(rules)
    assert len({g for got in live.values() for _, _, g in got}) > 2  # groups were chosen
    assert time.monotonic() - started < 90
