"""The `@doh` rule word and `deny_doh`: well-known DNS-over-HTTPS resolvers denied before any
rule on policy routes unless a route opts out; `explain` says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from haproxy_egress.commands.explain import explain
from haproxy_egress.config.categories import DOH
from haproxy_egress.config.model import Config
from haproxy_egress.config.policy import CategoryRule, decide, parse_rule
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.errors import ConfigError
from haproxy_egress.render.maps import render_maps


def _config(**route: Any) -> Config:
    doc = {
        "resolvers": {"nameservers": ["127.0.0.1:53"]},
        "routes": [{"name": "web", "listen": 3128, "mode": "proxy", "policy": ["*"], **route}],
    }
    return load_snapshot(Snapshot(Path("/cfg"), (("r.yaml", yaml.safe_dump(doc).encode()),)), {})


def test_the_list_is_lower_case_ascii_names_without_duplicates() -> None:
    assert len(DOH) == len(set(DOH)) >= 30
    assert {"dns.google", "cloudflare-dns.com", "dns.quad9.net"} <= set(DOH)
    assert all(n == n.lower() and n.isascii() and " " not in n for n in DOH)


def test_the_rule_word() -> None:
    rule = parse_rule("!@doh:443")
    assert isinstance(rule, CategoryRule)
    assert (rule.action, rule.ports) == ("deny", (443,))
    assert rule.matches("dns.google", None, 443)
    assert not rule.matches("dns.google", None, 80)
    assert not rule.matches("google.com", None, 443)
    with pytest.raises(ValueError, match="unknown category"):
        parse_rule("@dns")


def test_denied_before_a_wildcard_by_default() -> None:
    d = decide([parse_rule("*")], "cloudflare-dns.com", None, 443, deny_doh=True)
    assert (d.verdict, d.rule_id) == ("deny", "doh")
    assert "DNS-over-HTTPS" in d.reason
    assert decide([parse_rule("*")], "cloudflare-dns.com", None, 443).rule_id == "1"
    # A report-only list reports it, as it does its own denies.
    report = decide([parse_rule("*")], "dns.google", None, 443, enforce=False, deny_doh=True)
    assert (report.verdict, report.rule_id) == ("would-deny", "doh")


def test_explain_names_the_category_and_the_opt_out() -> None:
    verdict = explain(_config(), "https://dns.google", addresses=["8.8.8.8"])
    (web,) = verdict.routes
    assert (web.allowed, web.rule_id) == (False, "doh")
    opted_out = explain(_config(deny_doh=False), "https://dns.google", addresses=["8.8.8.8"])
    assert opted_out.routes[0].allowed
    denied = explain(
        _config(deny_doh=False, policy=["!@doh", "*"]), "dns.quad9.net:443", addresses=["9.9.9.9"]
    )
    assert (denied.routes[0].allowed, denied.routes[0].rule) == (False, "!@doh")


def test_allowing_doh_needs_the_opt_out() -> None:
    with pytest.raises(ConfigError, match="set deny_doh: false"):
        _config(policy=["@doh", "*"])
    assert _config(policy=["@doh"], deny_doh=False).routes[0].rules[0].kind == "category"


def test_maps_carry_the_list_and_the_rule_word() -> None:
    files = render_maps(_config(policy=["!@doh:443", "*"], deny_doh=False))
    assert files["web.doh.acl"] == ""  # opted out: nothing denied before the rules
    index = files["web.index.map"]
    assert "=dns.google/default/443 1\n" in index
    on = render_maps(_config())
    assert on["web.doh.acl"].splitlines() == list(DOH)
    assert "default/doh deny\n" in on["web.rules.map"]
    assert "default/doh @doh\n" in on["web.reasons.map"]
