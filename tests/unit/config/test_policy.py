"""Policy rules: parsing (Red Hat's EGRESS_HTTP_PROXY_DESTINATION syntax) and first-match."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from haproxy_egress.config import classes, policy
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.sources.http_proxy import parse_policy
from haproxy_egress.config.vocabulary import Verdict
from haproxy_egress.errors import ConfigError
from haproxy_egress.metrics.decisions import PolicyCollector, parse_table
from haproxy_egress.render.maps import NAME, render_maps


@pytest.mark.parametrize(
    ("text", "action", "kind", "value", "ports"),
    [
        ("example.com", "allow", "host", "example.com", ()),
        ("!Example.COM.", "deny", "host", "example.com", ()),
        ("*.example.com", "allow", "domain", "example.com", ()),
        ("192.168.1.1", "allow", "network", "192.168.1.1/32", ()),
        ("192.168.1.0/24", "allow", "network", "192.168.1.0/24", ()),
        ("fe80::/10", "allow", "network", "fe80::/10", ()),
        ("!2001:db8::1", "deny", "network", "2001:db8::1/128", ()),
        ("*.github.com:443", "allow", "domain", "github.com", (443,)),
        ("10.0.0.0/8:443,22", "allow", "network", "10.0.0.0/8", (22, 443)),
        ("[2001:db8::/32]:443", "allow", "network", "2001:db8::/32", (443,)),
        ("*", "allow", "any", "*", ()),
    ],
)
def test_parse_rule(text: str, action: str, kind: str, value: str, ports: tuple[int, ...]) -> None:
    rule = policy.parse_rule(text)
    assert (rule.action, rule.kind, rule.value, rule.ports) == (action, kind, value, ports)


@pytest.mark.parametrize(
    "text",
    [
        "foo bar",
        "!*",
        "*.",
        "a..b",
        "-a.test",
        "300.1.1.1",
        "10.0.0.0/33",
        "a.test:0",
        "a.test:x",
        "fe80::1%eth0",
        "*.*.a.test",
        "a.test:80:90",
        "[::1",
    ],
)
def test_bad_rules(text: str) -> None:
    with pytest.raises(ValueError, match=r"Bad destination|port"):
        policy.parse_rule(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("192.168.1.7/24", "host bits set: did you mean 192.168.1.0/24?"),
        ("[2001:db8::1/32]:443", "host bits set: did you mean 2001:db8::/32?"),
        ("10.0.0.0/33", "prefix /33 is out of range (IPv4: /0 to /32)"),
        ("!::/129", "prefix /129 is out of range (IPv6: /0 to /128)"),
    ],
)
def test_bad_networks_say_why(text: str, reason: str) -> None:
    """Host bits are refused with the network to write instead (squid masks them silently,
    which hid typos), and a prefix out of range says the range: as allow_from does."""
    with pytest.raises(ValueError, match=re.escape(reason) + "$"):
        policy.parse_rule(text)


def test_first_match_wins_and_default_deny() -> None:
    rules = policy.parse_rules(["!*.bad.test", "*.test", "!10.0.0.0/8", "10.0.0.0/7"])
    ip = ipaddress.ip_address
    assert policy.decide(rules, "x.bad.test", ip("10.0.0.1"), 80).rule_id == "1"
    assert policy.decide(rules, "bad.test", None, 80).verdict == Verdict.DENY
    assert policy.decide(rules, "a.test", ip("10.0.0.1"), 80).verdict == Verdict.ALLOW
    assert policy.decide(rules, "a.example", ip("10.0.0.1"), 80).rule_id == "3"
    assert policy.decide(rules, "a.example", ip("11.0.0.1"), 80).rule_id == "4"
    d = policy.decide(rules, "a.example", ip("12.0.0.1"), 80)
    assert (d.verdict, d.rule_id) == ("deny", "default")
    assert policy.decide(rules, "a.example", None, 80).rule_id == "default"


def test_wildcard_only_last() -> None:
    with pytest.raises(ValueError, match=policy.WILDCARD_LAST):
        policy.parse_rules(["*", "a.test"])
    assert (
        policy.decide(policy.parse_rules(["!a.test", "*"]), "b.test", None, 1).verdict
        == Verdict.ALLOW
    )


def test_guard_needs_an_address_rule() -> None:
    ip = ipaddress.ip_address
    rules = policy.parse_rules(["*.corp.test", "127.0.0.1", "*"])
    d = policy.decide(rules, "x.corp.test", ip("127.0.0.1"), 80)
    assert (d.verdict, d.rule_id) == ("deny", "guard-loopback")
    assert policy.decide(rules, "127.0.0.1", ip("127.0.0.1"), 80).verdict == Verdict.ALLOW
    assert policy.decide(rules, "m.test", ip("169.254.169.254"), 80).verdict == Verdict.DENY
    assert policy.decide(rules, "m.test", ip("fd00:ec2::254"), 80).verdict == Verdict.DENY
    # An embedded IPv4 address is judged as that address: by the address rule too.
    assert policy.decide(rules, "m.test", ip("::ffff:127.0.0.1"), 80).rule_id == "2"
    assert (
        policy.decide(rules[:1], "x.corp.test", ip("::ffff:127.0.0.1"), 80).verdict == Verdict.DENY
    )
    assert policy.decide(rules, "m.test", ip("198.18.0.1"), 80).verdict == Verdict.ALLOW


def test_ports() -> None:
    rules = policy.parse_rules(["*.github.com:443"])
    assert policy.decide(rules, "api.github.com", None, 443).verdict == Verdict.ALLOW
    assert policy.decide(rules, "api.github.com", None, 80).verdict == Verdict.DENY


def test_legacy_reader_reports_lines_in_the_original_words() -> None:
    parsed = parse_policy("# c\r\n!*.bad.test\n\nfoo bar\n*\nlate.test\n")
    assert [r.text for _, r in parsed.rules] == ["!*.bad.test", "*"]
    assert [str(p) for p in parsed.problems] == [
        "EGRESS_HTTP_PROXY_DESTINATION: line 4: Bad destination 'foo bar': one rule per line,"
        " no blanks",
        "EGRESS_HTTP_PROXY_DESTINATION: line 6: Wildcard must be last rule, if present (line 5)",
    ]


def _snapshot(**files: bytes) -> Snapshot:
    return Snapshot(Path("/cfg"), tuple(sorted(files.items())))


@pytest.mark.parametrize("as_file", [False, True])
def test_http_proxy_destination_becomes_a_proxy_route(as_file: bool) -> None:
    text = "!*.example.com\n!192.168.1.0/24\n*\n"
    key = "EGRESS_HTTP_PROXY_DESTINATION"
    if as_file:
        config = load_snapshot(_snapshot(**{key: text.encode()}), {})
    else:
        config = load_snapshot(_snapshot(), {key: text})
    (route,) = config.routes
    assert (route.name, route.listen.port, route.mode) == ("http-proxy", 8080, "proxy")
    assert route.policy == ("!*.example.com", "!192.168.1.0/24", "*")
    assert config.needs_resolvers


def test_http_proxy_destination_problems() -> None:
    key = "EGRESS_HTTP_PROXY_DESTINATION"
    with pytest.raises(ConfigError) as exc:
        load_snapshot(_snapshot(**{key: b"a.test\n"}), {key: "b.test"})
    assert "also set as an environment variable" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_snapshot(_snapshot(), {key: "# only a comment\n"})
    assert "No EGRESS_HTTP_PROXY_DESTINATION specified" in str(exc.value)


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"mode": "proxy"}, "needs a policy"),
        ({"mode": "proxy", "policy": ["*"], "destinations": ["a.test:1"]}, "takes no destinations"),
        ({"mode": "tcp", "policy": ["*"], "destinations": ["a.test:1"]}, "policy needs mode"),
        ({"mode": "proxy", "policy": ["*", "a.test"]}, "Wildcard must be last"),
        ({"mode": "tls", "policy": ["a b"]}, "Bad destination"),
        ({"mode": "proxy", "policy": ["*"], "destination_port": 443}, "needs mode: tls"),
    ],
)
def test_yaml_policy_problems(route: dict[str, object], message: str) -> None:
    doc = {"routes": [{"name": "p", "listen": 8080, **route}]}
    with pytest.raises(ConfigError) as exc:
        load_snapshot(_snapshot(**{"r.yaml": yaml.safe_dump(doc).encode()}), {})
    assert message in str(exc.value)


def test_policy_metrics_from_show_table() -> None:
    text = (
        "# table: _egress_policy, type: string, size:65536, used:2\n"
        "0x1: key=web/default/2/allow use=0 exp=0 gpc0=5\n"
        "0x2: key=sni/default/no-sni/deny use=0 exp=0 gpc0=2\n"
        "0x3: key=web/ci/guard-cgnat/deny use=0 exp=0 gpc0=1\n"
        "0x4: key=web/ci/3/would-deny use=0 exp=0 gpc0=4\n"
    )
    assert parse_table(text) == {
        ("web", "default", "2", "allow"): 5,
        ("sni", "default", "no-sni", "deny"): 2,
        ("web", "ci", "guard-cgnat", "deny"): 1,
        ("web", "ci", "3", "would-deny"): 4,
    }
    registry = CollectorRegistry()
    registry.register(PolicyCollector(lambda: text))
    out = generate_latest(registry).decode()
    assert (
        'haproxy_egress_policy_decisions_total{group="default",route="web",rule="2",'
        'verdict="allow"} 5.0'
    ) in out

    def down() -> str:
        raise ConnectionRefusedError

    registry = CollectorRegistry()
    registry.register(PolicyCollector(down))
    assert "haproxy_egress_policy_decisions_total{" not in generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::127.0.0.1", "loopback"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:7f00:1::", "loopback"),
        ("169.254.169.254", "metadata"),
        ("::ffff:169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("2002:6440:1::", "cgnat"),
        ("100.100.100.200", "metadata"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.1.2.3", "this-network"),
        ("::", "unspecified"),
        ("2001::1", "teredo"),
        ("64:ff9b:1::1", "nat64-local"),
        ("10.0.0.1", None),  # private is opt-in
        ("198.51.100.7", None),
        ("2001:db8::1", None),
    ],
)
def test_address_classes(address: str, expected: str | None) -> None:
    assert classes.classify(ipaddress.ip_address(address), classes.DEFAULT) == expected


def test_guard_lists() -> None:
    assert "private" in classes.expand(["default", "private"])
    assert "cgnat" not in classes.expand(["default", "-cgnat"])
    with pytest.raises(ValueError, match="unknown address class 'privat'"):
        classes.expand(["privat"])


def test_map_files_keep_lists_out_of_the_config() -> None:
    doc = {"routes": [{"name": "web", "listen": 8080, "mode": "proxy", "policy": ["a.test"]}]}
    config = load_snapshot(_snapshot(**{"r.yaml": yaml.safe_dump(doc).encode()}), {})
    files = render_maps(config)
    assert all(NAME.match(name) for name in files)
    assert "=a.test/default/* 1\n" in files["web.index.map"]
    # deny_doh (the default): the DNS-over-HTTPS resolvers are denied before any rule.
    assert files["web.rules.map"] == "default/1 allow\ndefault/default deny\ndefault/doh deny\n"
