"""International names: a Unicode rule and its `xn--` form are one rule; explain agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from haproxy_egress.commands.explain import explain, parse_destination
from haproxy_egress.config.addresses import normalize_host
from haproxy_egress.config.policy import parse_rule
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.errors import ConfigError

A_LABEL = "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "spelling",
    [
        "bücher.example",
        "BÜCHER.example",
        "xn--bcher-kva.example",
        "XN--BCHER-KVA.EXAMPLE",
        "bücher\u3002example",  # ideographic full stop
        "bücher\uff0eexample",  # fullwidth full stop
        "bücher\uff61example",  # halfwidth ideographic full stop
        "bu\u0308cher.example",  # decomposed ü: UTS #46 normalises it
        "bücher.example.",
    ],
)
def test_every_spelling_is_one_name(spelling: str) -> None:
    assert normalize_host(spelling) == A_LABEL
    rule = parse_rule(spelling)
    assert (rule.kind, rule.value) == ("host", A_LABEL)


def test_wildcards_ports_and_denies_keep_their_meaning() -> None:
    rule = parse_rule("!*\uff0ebücher.example:443")
    assert (rule.action, rule.kind, rule.value, rule.ports) == ("deny", "domain", A_LABEL, (443,))
    assert rule.matches("shop.xn--bcher-kva.example", None, 443)


def test_mixed_script_is_its_own_name_not_the_latin_one() -> None:
    """A Cyrillic a (U+0430) in 'paypal.example' is another name: it cannot ride the Latin rule."""
    rule = parse_rule("paypal.example")
    lookalike = normalize_host("p\u0430ypal.example")
    assert lookalike.startswith("xn--")
    assert not rule.matches(lookalike, None, 443)


@pytest.mark.parametrize(
    "bad",
    ["xn--bcher-xxx.example", "xn--.example", "xn--a.example", "ex\u200dample.example"],
)
def test_malformed_labels_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a valid international domain name"):
        parse_rule(bad)
    with pytest.raises(ValueError, match="not a valid international domain name"):
        parse_destination(bad)


def _config(policy: list[str]) -> Snapshot:
    doc = {
        "resolvers": {"nameservers": ["127.0.0.1:53"]},
        "routes": [{"name": "web", "listen": 3128, "mode": "proxy", "policy": policy}],
    }
    return Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(doc).encode()),))


def test_a_malformed_xn_label_is_a_located_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_snapshot(_config(["ok.example", "xn--bcher-xxx.example"]), {})
    (problem,) = info.value.problems
    assert problem.source == "routes.yaml"
    assert problem.path == "routes[0].policy[1]"
    assert problem.line is not None
    assert "xn--bcher-xxx.example" in problem.message


@pytest.mark.parametrize(
    "asked", ["https://bücher.example", "bücher\u3002example:443", "https://xn--bcher-kva.example"]
)
def test_explain_takes_either_spelling(asked: str) -> None:
    config = load_snapshot(_config(["!bücher.example", "*"]), {})
    verdict = explain(config, asked, addresses=["203.0.113.5"])
    (web,) = verdict.routes
    assert not web.allowed
    assert web.rule == "!bücher.example"


def test_haproxy_gets_the_rule_in_ascii() -> None:
    assert (
        parse_rule("!*.bücher.example:443,8443").ascii_text == "!*.xn--bcher-kva.example:443,8443"
    )
    assert parse_rule("bücher.example").ascii_text == "xn--bcher-kva.example"
    assert parse_rule("!*.plain.example").ascii_text == "!*.plain.example"  # as written
