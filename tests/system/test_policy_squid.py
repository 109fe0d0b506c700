"""Differential test: the same rules and request corpus through squid (configured like Red Hat's
http-proxy mode) and through haproxy-egress's proxy route; every allow/deny must agree.

A case is "denied" when the proxy answers 403; anything else (200, 502/503 for an origin that
is down or a name that does not resolve) is "allowed by the policy". Loopback and link-local
destinations are left out on purpose: there haproxy-egress denies (its guard) where squid
allows, a documented difference (docs/policy.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_egress.config import policy
from tests.netns import ROUTER_CLIENT_IP, TestBed, available, start_in
from tests.netns_policy import V6_EXTERNAL, add_ipv6, connect_tunnel, proxy_get, start_router
from tests.squid import Squid
from tests.support import DnsServer

pytestmark = pytest.mark.netns

STRICT = [
    "!*.bad.test",
    "*.good.test",
    "!deny.good.test",  # shadowed by the rule before it: first match wins
    "exact.test",
    "api.port.test:80",
    "!198.18.2.20",
    "198.18.2.16/28",
    "!198.18.2.0/24",
    "198.18.0.0/15",
    "[2001:2:0:2::/64]:8080",
]
OPEN = ["!*.bad.test", "!198.18.2.12", "!other.test", "*"]
NAMES = {
    "good.test": "198.18.2.10",
    "www.good.test": "198.18.2.10",
    "deny.good.test": "198.18.2.11",
    "a.b.good.test": "198.18.2.12",
    "bad.test": "198.18.2.16",
    "x.bad.test": "198.18.2.17",
    "exact.test": "198.18.2.12",
    "sub.exact.test": "198.18.2.12",
    "api.port.test": "198.18.2.12",
    "other.test": "198.18.2.13",
    "in-cidr.test": "198.18.2.17",
    "in-cidr2.test": "198.18.2.30",
    "excluded.test": "198.18.2.20",
    "lan.test": "198.18.2.14",
    "wide.test": "198.18.3.7",
    "six.test": V6_EXTERNAL,
    "goodtest.test": "198.18.2.10",
}
UNRESOLVABLE = ["nx.good.test", "nx.test", "nx.bad.test"]
LITERALS = [
    "198.18.2.10",
    "198.18.2.17",
    "198.18.2.20",
    "198.18.2.31",
    "198.18.3.9",
    f"[{V6_EXTERNAL}]",
]
PORTS = [80, 8080]


def corpus() -> list[tuple[str, str, int]]:
    """(method, host, port): names, wildcards, CIDRs, denies, literals, ports, CONNECT."""
    hosts = [*NAMES, *UNRESOLVABLE, *LITERALS]
    cases = [("GET", h, p) for h, p in itertools.product(hosts, PORTS)]
    cases += [("CONNECT", h, p) for h, p in itertools.product(hosts, [443, 8080])]
    return cases


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[TestBed]:
    why = available()
    if why:
        pytest.fail(f"{why} (the tests run as root through ./dev.sh test)")
    with TestBed(tmp_path) as testbed:
        yield testbed


@pytest.mark.timeout(600)
def test_same_decisions_as_squid(bed: TestBed, tmp_path: Path) -> None:
    add_ipv6(bed)
    for ip in sorted({v for v in NAMES.values() if v.startswith("198.18.2.")} | {"198.18.2.31"}):
        bed.external.run("ip", "addr", "add", f"{ip}/32", "dev", "to-router")
    dns = start_in(bed.router, DnsServer(records={k: [v] for k, v in NAMES.items()}, port=53))
    try:
        routes = [
            {"name": "strict", "listen": 8080, "mode": "proxy", "policy": STRICT},
            {"name": "open", "listen": 8081, "mode": "proxy", "policy": OPEN},
        ]
        keys = {
            "r.yaml": {
                "resolvers": {"nameservers": ["127.0.0.1:53"]},
                "defaults": {"connect_timeout": "1s"},
                "routes": routes,
            }
        }
        start_router(bed, tmp_path, keys, {}, [8080, 8081])
        squids = {
            name: Squid(tmp_path / f"squid-{name}", ROUTER_CLIENT_IP, port, rules).start(
                bed, bed.router, bed.client
            )
            for name, port, rules in (
                ("strict", 3128, policy.parse_rules(STRICT)),
                ("open", 3129, policy.parse_rules(OPEN)),
            )
        }
        mismatches = []
        count = 0
        for (variant, haproxy_port), case in itertools.product(
            (("strict", 8080), ("open", 8081)), corpus()
        ):
            squid_port = squids[variant].port
            got = {
                who: _denied(bed, port, *case)
                for who, port in (("haproxy", haproxy_port), ("squid", squid_port))
            }
            count += 1
            if got["haproxy"] != got["squid"]:
                mismatches.append((variant, case, got))
        assert count >= 200
        assert not mismatches, mismatches
    finally:
        dns.stop()


def _denied(bed: TestBed, port: int, method: str, host: str, dport: int) -> bool:
    proxy = (ROUTER_CLIENT_IP, port)
    if method == "GET":
        url = f"http://{host}:{dport}/"
        status = proxy_get(bed.client, proxy, url, f"{host}:{dport}", timeout=10).status
    else:
        with connect_tunnel(bed.client, proxy, f"{host}:{dport}", timeout=10) as (reply, _):
            status = reply.status
    return status == 403
