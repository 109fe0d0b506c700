"""No policy rule can inject haproxy directives (test_injection.py, for the policy proxy).

Rules never reach haproxy.cfg: they live in map files (render/maps.py). The property: a
located ConfigError, or a haproxy.cfg byte-identical to the one of any other rule list, map
files whose every line has the shape `KEY VALUE`, and `haproxy -c` accepting both.
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
from haproxy_egress.render.maps import render_maps
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
# A map line: one key without blanks, one blank, a value of printable ASCII (a rule as written).
MAP_LINE = re.compile(r"^[0-9A-Za-z.*:/=_-]+ [!-~]+$")
ACL_LINE = re.compile(r"^[0-9]+$")  # the ports .acl files hold ports
NAME_LINE = re.compile(r"^[a-z0-9.-]+$")  # the doh .acl files hold the shipped names


def _texts(snapshot: Snapshot, env: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """(haproxy.cfg text, map files), or None for a located ConfigError."""
    try:
        config = load_snapshot(snapshot, env)
    except ConfigError as exc:
        for p in exc.problems:
            assert p.source, p
            assert "\n" not in str(p), repr(str(p))
            assert p.path or p.line or p.source.startswith(("EGRESS", "file EGRESS")), p
        return None
    hook_set = hooks.resolve(config).including(hooks.shipped_lua("connect"))
    return render(config, OPTIONS, hooks=hook_set), render_maps(config)


def _check(snapshot: Snapshot, env: dict[str, str], baseline: str) -> None:
    """Rules never reach haproxy.cfg (it equals the baseline's); every map line has its shape;
    `haproxy -c` accepts the config with its maps."""
    texts = _texts(snapshot, env)
    if texts is None:
        return
    text, maps = texts
    if maps:  # the policy route exists (an empty EGRESS_HTTP_PROXY_DESTINATION makes none)
        assert text == baseline
    for name, content in maps.items():
        assert content == "" or content.endswith("\n"), name
        shape = MAP_LINE
        if name.endswith(".acl"):
            shape = NAME_LINE if name.endswith(".doh.acl") else ACL_LINE
        for line in content.splitlines():
            assert shape.match(line), (name, line)
    with tempfile.TemporaryDirectory(prefix="egress-policy-inj.") as tmp:
        run = RunDir(Path(tmp))
        staging.stage(
            hooks.resolve(load_snapshot(snapshot, env)).including(hooks.shipped_lua("connect")),
            run.lua,
        )
        staging.write_maps(run.maps, maps)
        haproxy_check(text.replace(str(OPTIONS.run_dir), tmp))


def _baseline(snapshot: Snapshot, env: dict[str, str]) -> str:
    texts = _texts(snapshot, env)
    assert texts is not None
    return texts[0]


@pytest.mark.parametrize("route", [0, 1])
def test_policy_rules(route: int) -> None:
    baseline = _baseline(
        Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(DOC).encode()),)), {}
    )

    @settings(settings.get_profile(PROFILE))
    @given(value=strings(VALID_RULES))
    def run(value: str) -> None:
        doc = copy.deepcopy(DOC)
        doc["routes"][route]["policy"][0] = value
        data = yaml.safe_dump(doc, allow_unicode=True).encode()
        _check(Snapshot(Path("/cfg"), (("routes.yaml", data),)), {}, baseline)

    run()


def test_http_proxy_destination() -> None:
    key = "EGRESS_HTTP_PROXY_DESTINATION"
    baseline = _baseline(Snapshot(Path("/cfg"), ()), {key: "a.test"})

    @settings(settings.get_profile(PROFILE))
    @given(value=strings(["a.test\n!b.test\n*", "10.0.0.0/8\r\n# c\n*.a.test"]))
    def run(value: str) -> None:
        if "\x00" in value:
            return
        _check(Snapshot(Path("/cfg"), ()), {key: value}, baseline)

    run()
