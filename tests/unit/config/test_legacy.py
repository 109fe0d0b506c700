"""Legacy EGRESS_* dialects: every accepted and refused line form, the originals' defects fixed,
loading from env vars and ConfigMap keys, and the migration to YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

import pytest
import yaml

from haproxy_egress.commands.migrate import migrate
from haproxy_egress.config.document import Config
from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.config.sources.legacy import (
    DNS_PROXY,
    FALLBACK_ADVICE,
    PARSERS,
    REDIRECT,
    parse_redirect,
    parse_source,
    read_lines,
)
from haproxy_egress.errors import ConfigError
from haproxy_egress.render.compiler import RenderOptions, render
from tests.support import write_configmap

# --- the shared line reader ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("\n\n   \n\t\n", []),
        ("# only a comment\n  # indented comment\n\t# tab comment", []),
        ("a b\nc", [(1, "a b"), (2, "c")]),
        ("a b\r\nc d\r\n", [(1, "a b"), (2, "c d")]),  # CRLF (refused by the originals)
        ("a\tb \t c", [(1, "a b c")]),  # tabs separate fields (refused by the originals)
        ("a b # inline comment\n", [(1, "a b")]),  # inline comments (refused by the originals)
        ("a b\t# after a tab", [(1, "a b")]),
        ("a#b", [(1, "a#b")]),  # '#' inside a token is no comment: the token stays invalid
        ("\n\n# c\nx\n\ny", [(4, "x"), (6, "y")]),  # numbers count blank and comment lines
        ("\ufeffa b\r\n", [(1, "a b")]),  # UTF-8 BOM from a Windows editor
    ],
)
def test_read_lines(text: str, expected: list[tuple[int, str]]) -> None:
    assert [(line.number, line.text) for line in read_lines(text)] == expected


def test_read_lines_keeps_the_raw_line() -> None:
    (line,) = read_lines("  80\ttcp 198.18.2.2   # web\r\n")
    assert line.raw == "  80\ttcp 198.18.2.2   # web"
    assert line.fields == ["80", "tcp", "198.18.2.2"]
    assert line.where == "line 1"


# --- both line dialects: EGRESS_DESTINATION and EGRESS_DNS_PROXY_DESTINATION ---------------


def _route(prefix: str, listen: int, host: str, port: int) -> dict[str, Any]:
    return {
        "name": f"{prefix}-{listen}",
        "listen": listen,
        "destinations": [{"host": host, "port": port}],
    }


# Lines of either dialect and the route each one is.
ACCEPTS = [
    # redirect mode
    (REDIRECT, "80 tcp 203.0.113.25", ("redirect", 80, "203.0.113.25", 80)),
    (REDIRECT, "8080 tcp 203.0.113.26 80", ("redirect", 8080, "203.0.113.26", 80)),
    (REDIRECT, "8080\ttcp\t203.0.113.26\t80", ("redirect", 8080, "203.0.113.26", 80)),  # tabs
    (REDIRECT, "8080 tcp 203.0.113.26 80\r", ("redirect", 8080, "203.0.113.26", 80)),  # CRLF
    (REDIRECT, "  80   tcp   203.0.113.25  ", ("redirect", 80, "203.0.113.25", 80)),
    (REDIRECT, "80 tcp 203.0.113.25 # web", ("redirect", 80, "203.0.113.25", 80)),  # inline comment
    (REDIRECT, "80 TCP 203.0.113.25", ("redirect", 80, "203.0.113.25", 80)),
    (REDIRECT, "443 tcp 2001:db8::1", ("redirect", 443, "2001:db8::1", 443)),  # IPv6
    (REDIRECT, "443 tcp [2001:db8::1] 8443", ("redirect", 443, "2001:db8::1", 8443)),
    (REDIRECT, "443 tcp 2001:DB8:0::1", ("redirect", 443, "2001:db8::1", 443)),  # canonical form
    (REDIRECT, "1 tcp 203.0.113.25 65535", ("redirect", 1, "203.0.113.25", 65535)),
    (REDIRECT, "65535 tcp 203.0.113.25", ("redirect", 65535, "203.0.113.25", 65535)),
    (REDIRECT, "080 tcp 203.0.113.25", ("redirect", 80, "203.0.113.25", 80)),
    # DNS proxy mode
    (DNS_PROXY, "80 203.0.113.25", ("dns-proxy", 80, "203.0.113.25", 80)),
    (DNS_PROXY, "8080 203.0.113.26 80", ("dns-proxy", 8080, "203.0.113.26", 80)),
    (DNS_PROXY, "100 example.com", ("dns-proxy", 100, "example.com", 100)),
    (DNS_PROXY, "8443 foobar.com 443", ("dns-proxy", 8443, "foobar.com", 443)),
    (DNS_PROXY, "8443\tFooBar.COM.\t443 # comment", ("dns-proxy", 8443, "foobar.com", 443)),
    (DNS_PROXY, "443 2001:db8::1", ("dns-proxy", 443, "2001:db8::1", 443)),
    (DNS_PROXY, "443 [2001:db8::1] 8443", ("dns-proxy", 443, "2001:db8::1", 8443)),
    (
        DNS_PROXY,
        "443 a-b.c-d.svc.cluster.local 443\r",
        ("dns-proxy", 443, "a-b.c-d.svc.cluster.local", 443),
    ),
]


@pytest.mark.parametrize(("dialect", "line", "route"), ACCEPTS)
def test_accepts(dialect: str, line: str, route: tuple[str, int, str, int]) -> None:
    parsed = PARSERS[dialect](line)
    assert parsed.all_problems() == []
    assert [data for _, data in parsed.routes] == [_route(*route)]


# Values of either dialect, the line refused and what its message says.
REFUSES = [
    # redirect mode
    (REDIRECT, "invalid", 1, "Bad destination 'invalid': not a valid IP address"),
    (REDIRECT, "80 tcp", 1, "Bad destination '80 tcp': expected 'PORT tcp IP'"),
    (REDIRECT, "80 tcp 203.0.113.25 80 90", 1, "Bad destination"),
    (REDIRECT, "http tcp 203.0.113.25", 1, "Bad destination 'http tcp 203.0.113.25'"),
    (REDIRECT, "80 tcp 203.0.113.25 http", 1, "Bad destination"),
    (REDIRECT, "80 icmp 203.0.113.25", 1, "unknown protocol 'icmp'"),
    (REDIRECT, "80 tcp example.com", 1, "put DNS names in EGRESS_DNS_PROXY_DESTINATION"),
    # The originals accepted any digits as an IPv4 octet.
    (REDIRECT, "80 tcp 300.1.2.3", 1, "Bad destination '80 tcp 300.1.2.3': not a valid IP address"),
    (REDIRECT, "80 tcp 10.0.0.256 80", 1, "not a valid IP address: '10.0.0.256'"),
    (REDIRECT, "256.1.1.1", 1, "Bad destination '256.1.1.1': not a valid IP address"),
    (REDIRECT, "80 tcp 2001:db8::zz", 1, "not a valid IP address"),
    (REDIRECT, "80 tcp 203.0.113.25#x", 1, "not a valid IP address: '203.0.113.25#x'"),
    (REDIRECT, "0 tcp 203.0.113.25", 1, "Invalid port: 0, must be in the range 1 to 65535"),
    (REDIRECT, "800000 tcp 10.4.5.6", 1, "Invalid port: 800000, must be in the range 1 to 65535"),
    (REDIRECT, "80 tcp 10.4.5.6 65536", 1, "Invalid port: 65536, must be in the range 1 to 65535"),
    (REDIRECT, "9" * 5000 + " tcp 10.4.5.6", 1, "Bad destination"),
    (REDIRECT, "80 udp 10.4.5.6", 1, "udp cannot be carried: haproxy proxies TCP only"),
    (REDIRECT, "80 sctp 10.4.5.6 90", 1, "sctp cannot be carried: haproxy proxies TCP only"),
    (REDIRECT, "80 tcp 10.4.5.6\n10.1.2.3", 2, f"fallback IP 10.1.2.3: {FALLBACK_ADVICE}"),
    (REDIRECT, "2001:db8::9", 1, f"fallback IP 2001:db8::9: {FALLBACK_ADVICE}"),
    (REDIRECT, "10.1.2.3\n80 tcp 10.4.5.6", 1, "fallback IP must be the last line"),
    (
        REDIRECT,
        "80 tcp 10.4.5.6\n10.1.2.3\n8080 tcp 10.7.8.9 80",
        2,
        "fallback IP must be the last line",
    ),
    (
        REDIRECT,
        "80 tcp 10.4.5.6\n8080 tcp 10.7.8.9 80\n80 tcp 10.7.8.9 900",
        3,
        "localport 80 is already used, must be unique for each destination (line 1)",
    ),
    (
        REDIRECT,
        "# c\n\n80 tcp 10.4.5.6 # a\n80 tcp 10.4.5.7 # b",
        4,
        "localport 80 is already used",
    ),
    # DNS proxy mode
    (DNS_PROXY, "80 11.12.13.14\ninvalid", 2, "Bad destination 'invalid'"),
    (DNS_PROXY, "80 11.12.13.14\n8080 invalid", 2, "Bad destination '8080 invalid'"),
    (DNS_PROXY, "80", 1, "Bad destination '80'"),
    (DNS_PROXY, "80 a.example 90 100", 1, "Bad destination"),
    (DNS_PROXY, "x a.example", 1, "Bad destination"),
    (DNS_PROXY, "80 a.example x", 1, "Bad destination"),
    (DNS_PROXY, "80 -bad-.example", 1, "not a valid host name"),
    (DNS_PROXY, "80 under_score.example", 1, "not a valid host name"),
    (DNS_PROXY, "80 300.1.2.3", 1, "Bad destination '80 300.1.2.3': not a valid IP address"),
    (DNS_PROXY, "99999 11.12.13.14", 1, "Invalid port: 99999, must be in the range 1 to 65535"),
    (DNS_PROXY, "80 11.12.13.14 88888", 1, "Invalid port: 88888, must be in the range 1 to 65535"),
    (DNS_PROXY, "80 11.12.13.14 " + "9" * 5000, 1, "Bad destination"),
    (
        DNS_PROXY,
        "80 11.12.13.14\n80 21.22.23.24 100",
        2,
        "Proxy port 80 already used, must be unique for each destination (line 1)",
    ),
]


@pytest.mark.parametrize(("dialect", "text", "line", "message"), REFUSES)
def test_refuses(dialect: str, text: str, line: int, message: str) -> None:
    problems = PARSERS[dialect](text).all_problems()
    assert [p.path for p in problems] == [f"line {line}"], problems
    assert message in problems[0].message
    assert problems[0].source == dialect


# --- redirect mode: EGRESS_DESTINATION ------------------------------------------------------


def test_redirect_fallback_not_last_also_says_what_to_do() -> None:
    (problem,) = parse_redirect("10.1.2.3\n10.4.5.6").all_problems()[:1]
    assert problem.message.startswith("fallback IP must be the last line")
    assert "list each port you use" in problem.message


def test_redirect_port_uniqueness_is_per_protocol() -> None:
    """The originals refused `80 tcp` next to `80 udp`; here udp gets its own, truthful error
    and the tcp line is carried."""
    parsed = parse_redirect("80 udp 10.4.5.6\n80 tcp 10.4.5.7\n80 sctp 10.4.5.8")
    assert [data["destinations"] for _, data in parsed.routes] == [
        [{"host": "10.4.5.7", "port": 80}]
    ]
    messages = [p.message for p in parsed.all_problems()]
    assert len(messages) == 2
    assert all("cannot be carried" in m for m in messages)
    assert not any("already used" in m for m in messages)


def test_redirect_reports_every_bad_line_at_once() -> None:
    text = "80 tcp 10.4.5.6\nbad\n53 udp 10.4.5.6\n99999 tcp 10.4.5.6\n81 tcp 10.4.5.6"
    parsed = parse_redirect(text)
    assert [p.path for p in parsed.all_problems()] == ["line 2", "line 3", "line 4"]
    assert [d["name"] for _, d in parsed.routes] == ["redirect-80", "redirect-81"]


# --- EGRESS_SOURCE ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("198.18.2.100", "198.18.2.100"),
        (" 198.18.2.100 ", "198.18.2.100"),
        ("198.18.2.100/24", "198.18.2.100"),  # the later originals took IP/PREFIX
        ("2001:db8::5", "2001:db8::5"),
        ("2001:db8::5/64", "2001:db8::5"),
        ("", None),
    ],
)
def test_source_accepts(value: str, address: str | None) -> None:
    assert parse_source(value) == (address, [])


@pytest.mark.parametrize("value", ["not an IP", "300.1.1.1", "198.18.2.100/33", "1.2.3.4/x/y"])
def test_source_refuses(value: str) -> None:
    address, problems = parse_source(value)
    assert address is None
    assert [p.source for p in problems] == ["EGRESS_SOURCE"]
    assert "unspecified or invalid" in problems[0].message


# --- through the loader: env vars, ConfigMap keys, YAML next to them ------------------------

REDIRECT_EXAMPLE = "80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n"
DNS_EXAMPLE = "80 203.0.113.25\n8080 203.0.113.26 80\n100 example.com\n8443 foobar.com 443\n"


def _load(tmp_path: Path, keys: dict[str, object], env: dict[str, str]) -> Config:
    directory = tmp_path / "cm"
    write_configmap(directory, keys)
    return load_snapshot(read_snapshot(directory), env)


def _summary(config: Config) -> list[tuple[str, int, list[str], str | None]]:
    return [
        (
            r.name,
            r.listen.port,
            [d.hostport for d in r.destinations],
            None if r.source is None else str(r.source),
        )
        for r in config.routes
    ]


@pytest.mark.parametrize("as_file", [False, True], ids=["env", "configmap-key"])
def test_redirect_example_loads(tmp_path: Path, as_file: bool) -> None:
    keys: dict[str, object] = {"EGRESS_DESTINATION": REDIRECT_EXAMPLE} if as_file else {}
    env = {} if as_file else {"EGRESS_DESTINATION": REDIRECT_EXAMPLE}
    env["EGRESS_SOURCE"] = "198.18.2.100"
    env["EGRESS_GATEWAY"] = "198.18.2.254"
    config = _load(tmp_path, keys, env)
    assert _summary(config) == [
        ("redirect-80", 80, ["203.0.113.25:80"], "198.18.2.100"),
        ("redirect-8080", 8080, ["203.0.113.26:80"], "198.18.2.100"),
    ]
    source = "file EGRESS_DESTINATION" if as_file else "EGRESS_DESTINATION"
    assert config.origin_of("redirect-8080") == f"{source}: line 2"


@pytest.mark.parametrize("as_file", [False, True], ids=["env", "configmap-key"])
def test_dns_proxy_example_loads(tmp_path: Path, as_file: bool) -> None:
    keys: dict[str, object] = {"EGRESS_DNS_PROXY_DESTINATION": DNS_EXAMPLE} if as_file else {}
    env = {} if as_file else {"EGRESS_DNS_PROXY_DESTINATION": DNS_EXAMPLE}
    config = _load(tmp_path, keys, env)
    assert _summary(config) == [
        ("dns-proxy-80", 80, ["203.0.113.25:80"], None),
        ("dns-proxy-8080", 8080, ["203.0.113.26:80"], None),
        ("dns-proxy-100", 100, ["example.com:100"], None),
        ("dns-proxy-8443", 8443, ["foobar.com:443"], None),
    ]
    assert config.needs_resolvers
    text = render(config, RenderOptions(run_dir=tmp_path))
    assert "server-template example.com_100- 4 example.com:100" in text
    assert "resolvers dns" in text


def test_source_key_file_and_yaml_routes_combine(tmp_path: Path) -> None:
    keys: dict[str, object] = {
        "EGRESS_SOURCE": "198.18.2.100\n",
        "routes.yaml": {"routes": [{"name": "api", "listen": 9000, "destinations": ["a.test:1"]}]},
    }
    config = _load(tmp_path, keys, {"EGRESS_DESTINATION": "80 tcp 203.0.113.25"})
    assert [(r.name, str(r.source)) for r in config.routes] == [
        ("api", "198.18.2.100"),
        ("redirect-80", "198.18.2.100"),
    ]
    assert "    source 198.18.2.100\n" in render(config, RenderOptions(run_dir=tmp_path))


def test_source_conflicting_with_yaml_defaults_is_an_error(tmp_path: Path) -> None:
    keys: dict[str, object] = {"routes.yaml": {"defaults": {"source": "198.18.2.7"}}}
    env = {"EGRESS_SOURCE": "198.18.2.100", "EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, keys, env)
    assert "defaults.source: also set to a different value" in exc.value.summary()


def test_legacy_and_yaml_listen_collide(tmp_path: Path) -> None:
    keys: dict[str, object] = {
        "routes.yaml": {"routes": [{"name": "web", "listen": 80, "destinations": ["a.test:1"]}]}
    }
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, keys, {"EGRESS_DNS_PROXY_DESTINATION": "80 203.0.113.25"})
    assert "EGRESS_DNS_PROXY_DESTINATION: line 1.listen: listen 80 is already used by route" in (
        exc.value.summary()
    )


def test_both_env_and_key_is_an_error(tmp_path: Path) -> None:
    env = {"EGRESS_DESTINATION": "80 tcp 203.0.113.25"}
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, {"EGRESS_DESTINATION": "80 tcp 203.0.113.25"}, env)
    assert exc.value.problems[0].source == "file EGRESS_DESTINATION"
    assert "also set as an environment variable" in exc.value.problems[0].message


def test_every_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    keys: dict[str, object] = {"EGRESS_DESTINATION": "80 tcp 10.4.5.6\r\n53 udp 10.4.5.6\r\n"}
    env = {"EGRESS_DNS_PROXY_DESTINATION": "\n\n90 bad\n", "EGRESS_SOURCE": "x"}
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, keys, env)
    lines = exc.value.summary().splitlines()
    assert lines[0] == "invalid configuration (3 problems)"
    assert any(ln.startswith("  file EGRESS_DESTINATION: line 2: udp cannot") for ln in lines)
    assert any(
        ln.startswith("  EGRESS_DNS_PROXY_DESTINATION: line 3: Bad destination") for ln in lines
    )
    assert any(ln.startswith("  EGRESS_SOURCE: unspecified or invalid") for ln in lines)


def test_non_utf8_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, {"EGRESS_DESTINATION": b"80 tcp 10.4.5.6 \xff\n"}, {})
    assert str(exc.value.problems[0]) == "file EGRESS_DESTINATION: not UTF-8 text (byte 16)"


def test_gateway_alone_is_accepted_and_ignored(tmp_path: Path) -> None:
    config = _load(tmp_path, {}, {"EGRESS_GATEWAY": "198.18.2.254"})
    assert config.routes == ()


# --- migration ------------------------------------------------------------------------------


def test_migrate_round_trips_to_the_same_config(tmp_path: Path) -> None:
    env = {
        "EGRESS_DESTINATION": "80 tcp 203.0.113.25\n8443 tcp 2001:db8::1 443\n53 udp 1.2.3.4",
        "EGRESS_SOURCE": "198.18.2.100/24",
        "EGRESS_GATEWAY": "198.18.2.254",
    }
    files = {"EGRESS_DNS_PROXY_DESTINATION": b"100 example.com\n8080 foobar.com 443\n"}
    result = migrate(env, files)
    manifest = yaml.safe_load(result.text)
    assert manifest["kind"] == "ConfigMap"
    assert manifest["metadata"]["name"] == "haproxy-egress"
    document = manifest["data"]["routes.yaml"]
    assert result.routes == 4
    assert result.invalid == ()
    assert [p.path for p in result.dropped] == ["line 3"]
    assert "# NOT CARRIED OVER: EGRESS_DESTINATION line 3: 53 udp 1.2.3.4" in document
    assert "# EGRESS_GATEWAY=198.18.2.254 dropped:" in document

    env_only = {k: v for k, v in env.items() if k != "EGRESS_DESTINATION"}
    env_only["EGRESS_DESTINATION"] = "80 tcp 203.0.113.25\n8443 tcp 2001:db8::1 443"
    legacy = _load(
        tmp_path / "a",
        {"EGRESS_DNS_PROXY_DESTINATION": files["EGRESS_DNS_PROXY_DESTINATION"]},
        env_only,
    )
    migrated = _load(tmp_path / "b", {"routes.yaml": document}, {})
    assert migrated.routes == legacy.routes


def test_migrate_bare_document_and_leftover_conflicts() -> None:
    result = migrate(
        {"EGRESS_DESTINATION": "80 tcp 203.0.113.25", "EGRESS_DNS_PROXY_DESTINATION": "80 a.test"},
        configmap=None,
    )
    assert result.text.startswith("# Migrated by `haproxy-egress migrate` from ")
    assert yaml.safe_load(result.text)["version"] == 1
    assert [p.path for p in result.invalid] == ["routes[1].listen"]
    assert "# WARNING: haproxy-egress refuses this document until these are fixed:" in result.text
    assert not result.complete


def test_migrate_comment_cannot_break_out_of_yaml() -> None:
    hostile = "80 tcp 1.2.3.4\u2028routes: evil\n53 udp 1.2.3.4 # \x85x: y"
    result = migrate({"EGRESS_DESTINATION": hostile}, configmap=None)
    document = yaml.safe_load(result.text)
    assert set(document) == {"version", "routes"}
    assert document["routes"] == []


class _Names(TypedDict, total=False):
    """The names `migrate` takes by keyword."""

    configmap: str
    key: str


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"configmap": "Bad Name"}, "not a valid ConfigMap name"),
        ({"key": "routes.txt"}, "not a valid YAML key name"),
        ({"key": "a/b.yaml"}, "not a valid YAML key name"),
    ],
)
def test_migrate_refuses_bad_names(kwargs: _Names, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        migrate({}, **kwargs)


def test_migrate_nothing_is_refused() -> None:
    """An empty result would only be refused by `check` later: say so now."""
    with pytest.raises(ValueError, match="nothing to migrate: none of EGRESS_DESTINATION"):
        migrate({}, configmap=None)


SQUID_MODE = "# lab\n*.github.com:443\n!10.0.0.0/8\n198.51.100.0/24\n*\n"


def test_migrate_squid_mode_to_a_proxy_route_with_the_same_rules(tmp_path: Path) -> None:
    env = {"EGRESS_HTTP_PROXY_DESTINATION": SQUID_MODE}
    result = migrate(env, configmap=None)
    assert result.complete, result.text
    assert result.routes == 1
    assert '      - "!10.0.0.0/8"  # line 3' in result.text
    legacy = _load(tmp_path / "a", {}, env)
    migrated = _load(tmp_path / "b", {"routes.yaml": result.text}, {})
    assert migrated.routes == legacy.routes
    # The port is the user's to choose, and a bad line is not carried over silently.
    moved = migrate({"EGRESS_HTTP_PROXY_DESTINATION": SQUID_MODE + "bad line\n"}, proxy_port=3128)
    document = yaml.safe_load(yaml.safe_load(moved.text)["data"]["routes.yaml"])
    assert document["routes"][0]["listen"] == 3128
    assert [p.path for p in moved.dropped] == ["line 6"]


def test_legacy_port_clash_names_the_way_out(tmp_path: Path) -> None:
    env = {"EGRESS_HTTP_PROXY_DESTINATION": SQUID_MODE, "EGRESS_DESTINATION": "8080 tcp 1.2.3.4"}
    with pytest.raises(ConfigError) as exc:
        _load(tmp_path, {}, env)
    (problem,) = exc.value.problems
    assert "listen 8080 is already used by route 'redirect-8080'" in problem.message
    assert "convert to YAML to choose the port" in problem.message
    clash = migrate(env, configmap=None)
    assert "--proxy-port PORT" in clash.text
    assert migrate(env, configmap=None, proxy_port=3128).complete
