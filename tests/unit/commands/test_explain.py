"""`explain`: the route, rule and location that decide a destination, without traffic."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from haproxy_egress.commands.explain import explain, parse_destination, rule_locations
from haproxy_egress.config.document import Config
from haproxy_egress.config.scalars import Listen
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot

DOC = {
    "resolvers": {"nameservers": ["127.0.0.1:53"]},
    "routes": [
        {
            "name": "web",
            "listen": 3128,
            "mode": "proxy",
            "policy": ["!*.bad.test", "*.github.test:443", "198.51.100.0/24", "!10.0.0.0/8"],
        },
        {
            "name": "sni",
            "listen": 8443,
            "mode": "tls",
            "destination_port": 443,
            "policy": ["api.github.test"],
        },
        {"name": "db", "listen": 5432, "destinations": ["db.test:5432"]},
    ],
}
LEGACY = "# egress\n!*.evil.test\n203.0.113.0/24\n"


def _setup() -> tuple[Config, dict[str, tuple[str, ...]]]:
    snap = Snapshot(
        Path("/cfg"),
        (
            ("EGRESS_HTTP_PROXY_DESTINATION", LEGACY.encode()),
            ("routes.yaml", yaml.safe_dump(DOC, sort_keys=False).encode()),
        ),
    )
    return load_snapshot(snap, {}), rule_locations(snap, {})


def test_allowed_by_a_rule_with_its_file_and_line() -> None:
    config, locs = _setup()
    v = explain(config, "https://api.github.test", locations=locs)
    assert v.allowed
    web = next(r for r in v.routes if r.route == "web")
    assert web.allowed
    assert web.rule == "*.github.test:443"
    assert web.location is not None
    assert web.location.startswith("routes.yaml:")
    sni = next(r for r in v.routes if r.route == "sni")
    assert sni.allowed


def test_denied_with_legacy_line() -> None:
    config, locs = _setup()
    v = explain(config, "http://x.evil.test/", locations=locs)
    assert not v.allowed
    legacy = next(r for r in v.routes if r.route == "http-proxy")
    assert legacy.location == "file EGRESS_HTTP_PROXY_DESTINATION:2"
    assert "!*.evil.test" in legacy.reason


def test_address_rules_use_the_resolved_address() -> None:
    config, _ = _setup()
    assert explain(config, "203.0.113.5:22").allowed
    resolved = explain(
        config,
        "cdn.test:443",
        resolve=lambda name: [ipaddress.ip_address("198.51.100.9")],
    )
    assert resolved.allowed
    assert not explain(config, "cdn.test:443", addresses=["10.1.2.3"]).allowed
    assert explain(config, "db.test:5432").allowed


def test_each_route_decides_on_the_address_family_it_prefers() -> None:
    """A name with a public A record and a loopback AAAA: the IPv4 route connects to the
    public address; an IPv6-preferring route would connect to loopback, which the guard
    refuses. explain must say what each route would do, not what the first answer says."""
    doc = {
        "resolvers": {"nameservers": ["127.0.0.1:53"]},
        "routes": [
            {"name": "v4", "listen": 3128, "mode": "proxy", "policy": ["*.dual.test"]},
            {
                "name": "v6",
                "listen": 3129,
                "mode": "proxy",
                "resolve_prefer": "ipv6",
                "policy": ["*.dual.test"],
            },
        ],
    }
    snap = Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(doc).encode()),))
    config = load_snapshot(snap, {})
    answers = [ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("::1")]
    v = explain(config, "www.dual.test:80", resolve=lambda name: answers)
    by_route = {r.route: r for r in v.routes}
    assert by_route["v4"].allowed
    assert not by_route["v6"].allowed
    assert "loopback" in by_route["v6"].reason


@pytest.mark.parametrize("bad", ["ftp://x", "http://", "a b", "host:99999"])
def test_bad_destination_is_a_usage_error(bad: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_destination(bad)


def test_lines() -> None:
    config, locs = _setup()
    text = "\n".join(explain(config, "x.bad.test:443", locations=locs).lines())
    assert "DENIED" in text
    assert "route web (proxy): deny" in text


GROUPS = {
    "routes": [
        {
            "name": "web",
            "listen": 3128,
            "mode": "proxy",
            "clients": [
                {"name": "ci", "from": ["10.1.0.0/16"], "policy": ["*.github.test"]},
                {"name": "trial", "from": ["10.2.0.0/16"], "policy": ["a.test"], "enforce": False},
            ],
            "policy": ["a.test"],
        }
    ]
}


def _groups_config() -> Config:
    snap = Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(GROUPS).encode()),))
    return load_snapshot(snap, {})


@pytest.mark.parametrize(
    ("client", "dest", "verdict", "rule", "group"),
    [
        (None, "a.test:80", "allow", "1", "default"),
        ("10.1.2.3", "a.test:80", "deny", "default", "ci"),
        ("10.1.2.3", "api.github.test:443", "allow", "1", "ci"),
        ("10.2.0.9", "b.test:80", "would-deny", "default", "trial"),
        ("10.9.0.1", "api.github.test:443", "deny", "default", "default"),
    ],
)
def test_client_groups_and_report_mode(
    client: str | None, dest: str, verdict: str, rule: str, group: str
) -> None:
    v = explain(_groups_config(), dest, addresses=["198.51.100.7"], client=client)
    (web,) = v.routes
    assert (web.verdict, web.rule_id, web.group) == (verdict, rule, group)
    assert web.allowed == (verdict != "deny")


def test_address_classes_and_self() -> None:
    config = _groups_config()
    v = explain(config, "a.test:80", addresses=["100.64.0.1"])
    assert (v.routes[0].rule_id, v.routes[0].allowed) == ("guard-cgnat", False)
    assert "address class cgnat" in v.routes[0].reason
    assert "guard: [default, -cgnat]" in v.routes[0].reason
    v = explain(config, "127.0.0.1:3128")
    assert v.routes[0].rule_id == "guard-self"


def test_the_metrics_port_is_self_in_explain() -> None:
    """The process's own listeners (here the metrics endpoint on :9101) are `self` too."""
    snap = Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(DOC).encode()),))
    metrics = {"metrics endpoint (SCRAPER_TCP_PORT=9101)": Listen(port=9101)}
    config = load_snapshot(snap, {}, metrics)
    (web,) = (r for r in explain(config, "127.0.0.1:9101").routes if r.route == "web")
    assert (web.rule_id, web.allowed) == ("guard-self", False)


def test_allow_from_refuses_a_client_outside_it_before_any_rule() -> None:
    github = {"name": "github", "listen": 8443, "mode": "tls", "policy": ["api.github.com"]}
    db = {"name": "db", "listen": 5432, "destinations": ["db.test:5432"]}
    github |= {"destination_port": 443, "allow_from": ["10.128.0.0/14"]}
    db["allow_from"] = ["10.128.0.0/14", "2001:db8::/32"]
    doc = {"resolvers": DOC["resolvers"], "routes": [github, db]}
    snap = Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(doc).encode()),))
    config = load_snapshot(snap, {})
    addresses = ["198.51.100.7"]
    outside = explain(config, "https://api.github.com", addresses=addresses, client="192.168.1.1")
    assert not outside.allowed
    (route,) = outside.routes
    assert (route.verdict, route.rule_id) == ("deny", "allow_from")
    assert "192.168.1.1 is not in allow_from (10.128.0.0/14)" in route.reason
    inside = explain(config, "https://api.github.com", addresses=addresses, client="10.129.0.5")
    assert inside.allowed
    # The IPv4-mapped spelling is the same client, as for haproxy's `src`.
    assert explain(
        config, "https://api.github.com", addresses=addresses, client="::ffff:10.129.0.5"
    ).allowed
    unknown = explain(config, "https://api.github.com", addresses=addresses)
    assert unknown.allowed
    assert "only for clients in allow_from: 10.128.0.0/14" in unknown.routes[0].reason
    assert not explain(config, "db.test:5432", client="192.168.1.1").allowed
    assert explain(config, "db.test:5432", client="2001:db8::9").allowed


def test_limits_are_named_where_they_could_still_refuse() -> None:
    doc = {
        "resolvers": DOC["resolvers"],
        "routes": [
            {"name": "capped", "listen": 3128, "mode": "proxy", "policy": ["198.51.100.0/24"]}
            | {"limits": {"tunnels": 10, "request_rate": 50, "period": "10s"}}
        ],
    }
    snap = Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(doc).encode()),))
    (route,) = explain(load_snapshot(snap, {}), "198.51.100.7:443").routes
    assert route.allowed
    assert route.reason.endswith(
        "(while within its limits: at most 10 CONNECT tunnels at a time (503), 50 requests per"
        " 10s per client (429))"
    )
