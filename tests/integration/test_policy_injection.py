"""No policy rule can inject haproxy directives (test_injection.py, for the policy proxy).

Rules reach haproxy.cfg as ACL patterns and inside one quoted 403 reason per deny rule; the
property: a located ConfigError, or a config `haproxy -c` accepts whose every line in the
policy route is one the template writes (checked by shape), with exactly one rule line per rule.
"""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings

from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.errors import ConfigError
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import render
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.integration.test_injection import OPTIONS, PROFILE, haproxy_check, strings

VALID_RULES = ["a.test", "!*.bad.test", "10.0.0.0/8", "[2001:db8::/32]:443", "*.x.test:80,443"]
DOC: dict[str, Any] = {
    "resolvers": {"nameservers": ["127.0.0.1:53"]},
    "routes": [
        {"name": "web", "listen": 18080, "mode": "proxy", "policy": ["a.test", "!b.test", "*"]},
        {"name": "sni", "listen": 18443, "mode": "tls", "policy": ["a.test"]},
    ],
}
RULE_LINE = re.compile(
    r"^    (tcp-request content|http-request) set-var\(txn\.egress_rule\) str\([0-9]+\) "
    r"if !\{ var\(txn\.egress_rule\) -m found \}"
    r"( \{ var\(txn\.(dsthost\) -m str |egress_dotted\) -m end \.|dstip\) -m ip )[0-9a-z.:/-]+ \})?"
    r"( \{ var\(txn\.dstport\) -m int [0-9 ]+ \})?$"
)
REASON_LINE = re.compile(
    r'^    (tcp-request content|http-request) set-var-fmt\(txn\.egress_reason\) "denied by route '
    r'[a-z0-9._-]+ rule [0-9]+: ![0-9A-Za-z.*:/,\[\]-]+" if .*$'
)


def _check(snapshot: Snapshot, env: dict[str, str]) -> None:
    try:
        config = load_snapshot(snapshot, env)
    except ConfigError as exc:
        for p in exc.problems:
            assert p.source, p
            assert "\n" not in str(p), repr(str(p))
            assert p.path or p.line or p.source.startswith(("EGRESS", "file EGRESS")), p
        return
    hook_set = hooks.resolve(config).including(hooks.shipped_lua("connect"))
    with tempfile.TemporaryDirectory(prefix="egress-policy-inj.") as tmp:
        staging.stage(hook_set, RunDir(Path(tmp)).lua)
        text = render(config, OPTIONS, hooks=hook_set).replace(str(OPTIONS.run_dir), tmp)
        for line in text.splitlines():
            assert "\r" not in line
            if "set-var(txn.egress_rule) str(" in line and "if !{" in line:
                assert RULE_LINE.match(line), line
            if "denied by route" in line:
                assert REASON_LINE.match(line), line
        rules = sum(len(r.policy) for r in config.routes)
        proxies = sum(1 for r in config.routes if r.mode == "proxy")
        expected = rules + sum(len(r.policy) for r in config.routes if r.mode == "proxy")
        assert (
            text.count("set-var(txn.egress_rule) str(")
            - text.count("str(guard)")
            - text.count("str(default)")
            - text.count("str(no-sni)")
            == expected
        ), (rules, proxies)
        haproxy_check(text)


@pytest.mark.parametrize("route", [0, 1])
def test_policy_rules(route: int) -> None:
    @settings(settings.get_profile(PROFILE))
    @given(value=strings(VALID_RULES))
    def run(value: str) -> None:
        doc = copy.deepcopy(DOC)
        doc["routes"][route]["policy"][0] = value
        data = yaml.safe_dump(doc, allow_unicode=True).encode()
        _check(Snapshot(Path("/cfg"), (("routes.yaml", data),)), {})

    run()


def test_http_proxy_destination() -> None:
    @settings(settings.get_profile(PROFILE))
    @given(value=strings(["a.test\n!b.test\n*", "10.0.0.0/8\r\n# c\n*.a.test"]))
    def run(value: str) -> None:
        if "\x00" in value:
            return
        _check(Snapshot(Path("/cfg"), ()), {"EGRESS_HTTP_PROXY_DESTINATION": value})

    run()
