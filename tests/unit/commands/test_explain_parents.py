"""`explain` on a route with parent proxies: per destination, direct or which parent."""

from __future__ import annotations

from pathlib import Path

import yaml

from haproxy_egress.commands.explain import explain
from haproxy_egress.config.document import Config
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot

ROUTE = {
    "name": "web",
    "listen": 8080,
    "mode": "proxy",
    "policy": ["*.github.com", "*.svc.cluster.local", "10.0.0.0/8"],
    "parent": {
        "proxies": ["squid-a.corp.example:3128", "squid-b.corp.example:3128"],
        "direct": ["*.svc.cluster.local", "10.0.0.0/8"],
    },
}


def _config(route: dict[str, object], env: dict[str, str] | None = None) -> Config:
    data = yaml.safe_dump({"routes": [route]}).encode()
    return load_snapshot(Snapshot(Path("/cm"), (("routes.yaml", data),)), env or {})


def test_a_name_the_router_cannot_resolve_goes_to_the_first_parent() -> None:
    verdict = explain(_config(ROUTE), "https://api.github.com", resolve=lambda _h: [])
    (route,) = verdict.routes
    assert route.allowed
    assert route.verdict == "allow"
    assert route.via == "parent"
    assert "via parent squid-a.corp.example:3128, failing over to squid-b" in route.reason


def test_direct_names_and_networks_go_direct() -> None:
    config = _config(ROUTE)
    for dest, address in (("db.ns.svc.cluster.local:5432", "10.1.2.3"), ("10.9.9.9:22", None)):
        addresses = [address] if address else None
        (route,) = explain(config, dest, addresses=addresses).routes
        assert route.allowed, route
        assert route.via == "direct"
    # Direct, but unresolvable: the router connects itself, so it answers 503.
    (route,) = explain(config, "x.svc.cluster.local:80", resolve=lambda _h: []).routes
    assert route.verdict == "unresolved"


def test_denied_is_denied_whatever_the_parent() -> None:
    (route,) = explain(_config(ROUTE), "https://example.com", resolve=lambda _h: []).routes
    assert not route.allowed
    assert route.via == ""


def test_parent_from_the_environment_round_robin_wording() -> None:
    route = {**ROUTE, "parent": "env"}
    env = {"HTTPS_PROXY": "http://proxy.corp.example:3128", "NO_PROXY": ".svc.cluster.local"}
    (verdict,) = explain(
        _config(route, env), "https://api.github.com", resolve=lambda _h: []
    ).routes
    assert "via parent proxy.corp.example:3128 " in verdict.reason
    (direct,) = explain(
        _config(route, env), "a.svc.cluster.local:443", addresses=["10.0.0.5"]
    ).routes
    assert direct.via == "direct"
