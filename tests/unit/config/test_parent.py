"""config/parent.py: the `parent:` model, `parent: env` from OpenShift-style variables, and the
credential from a basic-auth Secret; every bad input is a located problem."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml

from haproxy_egress.config.parent import Parent, basic_credential, from_environment
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot, read_snapshot
from haproxy_egress.errors import ConfigError


def _load(route_parent: object, env: dict[str, str] | None = None) -> Parent | None:
    doc = {
        "routes": [
            {
                "name": "web",
                "listen": 8080,
                "mode": "proxy",
                "policy": ["*"],
                "parent": route_parent,
            }
        ]
    }
    snapshot = Snapshot(Path("/cm"), (("routes.yaml", yaml.safe_dump(doc).encode()),))
    return load_snapshot(snapshot, env or {}).routes[0].parents


def test_defaults_are_ordered_failover_without_direct_entries() -> None:
    parent = _load({"proxies": ["squid-a.corp.example:3128", "[2001:db8::1]:3128"]})
    assert parent is not None
    assert parent.balance == "first"
    assert [p.hostport for p in parent.proxies] == [
        "squid-a.corp.example:3128",
        "[2001:db8::1]:3128",
    ]
    assert parent.proxies[0].is_name
    assert not parent.proxies[1].is_name
    assert parent.credential is None


@pytest.mark.parametrize(
    ("parent", "message"),
    [
        ({"proxies": []}, "routes[0].parent: proxies: name at least one"),
        ({"from_env": True, "proxies": ["a:1"]}, "leave out proxies"),
        ({"proxies": ["squid:3128", "squid:3128"]}, "listed twice"),
        ({"proxies": ["squid"]}, "missing port"),
        ({"proxies": ["squid:3128"], "direct": ["!*.corp"]}, "no '!'"),
        ({"proxies": ["squid:3128"], "direct": ["a.corp:443"]}, "no ports"),
        ({"proxies": ["squid:3128"], "balance": "leastconn"}, "balance"),
        ({"proxies": ["squid:3128"], "credentials_dir": "relative/dir"}, "absolute path"),
        ({"proxies": ["squid:3128"], "credentials_dir": "/nonexistent/x"}, "cannot be read"),
        ("environment", "routes[0].parent"),
    ],
)
def test_bad_parents_are_located(parent: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _load(parent)
    assert message in str(err.value)


def test_parent_needs_mode_proxy() -> None:
    doc = {"routes": [{"name": "t", "listen": 1, "destinations": ["a:1"], "parent": "env"}]}
    snapshot = Snapshot(Path("/cm"), (("routes.yaml", yaml.safe_dump(doc).encode()),))
    with pytest.raises(ConfigError, match="parent needs mode: proxy"):
        load_snapshot(snapshot, {"HTTPS_PROXY": "http://p:3128"})


def test_env_takes_openshift_variables() -> None:
    env = {
        "HTTPS_PROXY": "http://proxy.corp.example:3128/",
        "HTTP_PROXY": "http://proxy2.corp.example:8080",
        "NO_PROXY": ".cluster.local,.svc,10.0.0.0/16,172.30.0.1,localhost,*",
    }
    parent = from_environment(env)
    assert [p.hostport for p in parent.proxies] == [
        "proxy.corp.example:3128",
        "proxy2.corp.example:8080",
    ]
    assert parent.direct == (
        "*.cluster.local",
        "*.svc",
        "10.0.0.0/16",
        "172.30.0.1",
        "*.localhost",
        "*",
    )
    assert parent.goes_direct("api.ns.svc", None)
    assert parent.goes_direct("x", ipaddress.ip_address("10.0.3.4"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "parent: env needs one of HTTPS_PROXY"),
        ({"HTTPS_PROXY": "http://user:pw@proxy:3128"}, "credentials in the URL"),
        ({"HTTPS_PROXY": "https://proxy:3128"}, "expected http://HOST:PORT"),
        ({"HTTPS_PROXY": "http://proxy"}, "HTTPS_PROXY: missing port"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.corp:8443"}, "NO_PROXY: entry 'a.corp:8443'"),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ok.corp,a_b"},
            "NO_PROXY: Bad destination '\\*.a_b'",
        ),
    ],
)
def test_env_problems_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_environment(env)
    with pytest.raises(ConfigError, match=r"routes.yaml:2: routes\[0\].parent: "):
        _load("env", env)


def test_credentials_from_a_secret_dir_stay_out_of_dumps(tmp_path: Path) -> None:
    secret = tmp_path / "auth"
    secret.mkdir()
    (secret / "username").write_text("egress\n")
    (secret / "password").write_text("s3cret")
    parent = _load({"proxies": ["squid:3128"], "credentials_dir": str(secret)})
    assert parent is not None
    assert parent.credential == "ZWdyZXNzOnMzY3JldA=="
    assert "ZWdyZXNz" not in repr(parent)
    assert "ZWdyZXNz" not in str(parent.model_dump())
    with pytest.raises(ValueError, match="username"):
        basic_credential(b"a:b", b"pw", "/x")


def test_a_rotated_secret_changes_the_snapshot_digest(tmp_path: Path) -> None:
    secret = tmp_path / "auth"
    secret.mkdir()
    (secret / "username").write_text("egress")
    (secret / "password").write_text("one")
    cm = tmp_path / "cm"
    cm.mkdir()
    (cm / "routes.yaml").write_text(f"routes:\n  - parent:\n      credentials_dir: {secret}\n")
    before = read_snapshot(cm).digest
    (secret / "password").write_text("two")
    assert read_snapshot(cm).digest != before
