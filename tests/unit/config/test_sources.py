"""Loading: YAML keys, the seed env vars, the ConfigMap snapshot, merging and located errors."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from haproxy_egress.config.document import Config
from haproxy_egress.config.scalars import Listen
from haproxy_egress.config.sources import configdir, load, load_snapshot, read_snapshot
from haproxy_egress.config.sources.configdir import MAX_KEY_BYTES, Snapshot
from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.settings import Settings
from tests.support import write_configmap


def snap(**keys: str) -> Snapshot:
    """An in-memory snapshot; keyword names use '_' for '.' (routes_yaml → routes.yaml)."""
    files = tuple(
        sorted((k.replace("_", "."), textwrap.dedent(v).encode()) for k, v in keys.items())
    )
    return Snapshot(Path("/cfg"), files)


def errors(snapshot: Snapshot, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_snapshot(snapshot, env or {})
    return [str(p) for p in info.value.problems]


ISSUE_EXAMPLE = """\
    version: 1
    defaults: {mode: tcp, connect_timeout: 5s, idle_timeout: 1h, source: 192.0.2.10}
    routes:
      - name: github-api            # unique, [a-z0-9][a-z0-9._-]*
        listen: 8443                # port, "ADDR:PORT" or "[V6]:PORT"
        mode: tcp                   # tcp | http
        destinations: ["api.github.com:443", "198.51.100.7:443"]
        balance: roundrobin         # roundrobin | first (ordered failover) | leastconn | source
        allow_from: ["10.128.0.0/14"]   # client CIDRs; default everyone
        source: 192.0.2.11          # fixed egress source address for this route
    """


def test_issue_example_loads() -> None:
    config = load_snapshot(snap(routes_yaml=ISSUE_EXAMPLE), {})
    (r,) = config.routes
    assert r.name == "github-api"
    assert r.listen == Listen(port=8443)
    assert [d.hostport for d in r.destinations] == ["api.github.com:443", "198.51.100.7:443"]
    assert str(r.source) == "192.0.2.11"  # the route's own value beats defaults
    assert [str(n) for n in r.allow_from] == ["10.128.0.0/14"]
    assert config.needs_resolvers
    assert config.resolvers.nameservers == ()
    assert config.origin_of("github-api") == "routes.yaml: routes[0]"


def test_defaults_apply_to_every_key_and_the_env_route() -> None:
    config = load_snapshot(
        snap(
            a_yaml="""
            defaults: {idle_timeout: 10m, check: {interval: 5s}}
            routes: [{name: a, listen: 1001, destinations: ["192.0.2.1:80"], check: {rise: 5}}]
            """,
            b_yml="""
            routes: [{name: b, listen: 1002, destinations: ["192.0.2.2:80"], idle_timeout: 1m}]
            """,
        ),
        {"SERVICE_TCP_PORT": "1003", "SERVICE_DEST": "192.0.2.3:80"},
    )
    by_name = {r.name: r for r in config.routes}
    assert [r.name for r in config.routes] == ["a", "b", "egress"]
    assert by_name["a"].idle_timeout == 600_000
    assert by_name["b"].idle_timeout == 60_000
    assert by_name["egress"].idle_timeout == 600_000
    # `check` merges one level deep: defaults' interval and the route's rise both hold.
    assert (by_name["a"].check.interval, by_name["a"].check.rise) == (5000, 5)


def test_seed_env_route_and_stats() -> None:
    env = {
        "SERVICE_NAME": "tst-scr-svc",
        "SERVICE_TCP_PORT": "8443",
        "SERVICE_DEST_PORT": "443",
        "SERVICE_DEST": "www.example.test; 192.0.2.7:8443 ;[2001:db8::1];2001:db8::2;",
        "STATS_PORT": "1936",
        "STATS_USER": "admin",
        "STATS_PASSWORD": "pw",
    }
    config = load_snapshot(snap(), env)
    (r,) = config.routes
    assert (r.name, r.listen.port, r.listen.address) == ("tst-scr-svc", 8443, None)
    assert [d.hostport for d in r.destinations] == [
        "www.example.test:443",
        "192.0.2.7:8443",
        "[2001:db8::1]:443",
        "[2001:db8::2]:443",
    ]
    assert config.stats is not None
    assert (config.stats.port, config.stats.user, config.stats.password) == (1936, "admin", "pw")
    assert config.origin_of("tst-scr-svc") == "SERVICE_* env: route"


def test_seed_env_listen_address_and_default_name() -> None:
    (r,) = load_snapshot(
        snap(), {"SERVICE_TCP_PORT": "[::1]:8443", "SERVICE_DEST": "a.test:1"}
    ).routes
    assert (r.name, r.listen.address, r.listen.port) == ("egress", "::1", 8443)


def test_unset_seed_env_means_no_route() -> None:
    assert load_snapshot(snap(), {"SERVICE_NAME": "x", "SERVICE_DEST_PORT": "443"}).routes == ()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SERVICE_TCP_PORT": "8443", "SERVICE_DEST": "a.test;b.test:443;;c d"},
            [
                "SERVICE_DEST: item 1: missing port in 'a.test' (write host:port or set "
                "SERVICE_DEST_PORT)",
                "SERVICE_DEST: item 3: empty destination",
                "SERVICE_DEST: item 4: not a valid host name or IP address: 'c d'",
            ],
        ),
        (
            {"SERVICE_TCP_PORT": "70000", "SERVICE_DEST": "a.test", "SERVICE_DEST_PORT": "x"},
            [
                "SERVICE_DEST: item 1: missing port in 'a.test' (write host:port or set "
                "SERVICE_DEST_PORT)",
                "SERVICE_DEST_PORT: port must be a number 1..65535 (got 'x')",
                "SERVICE_TCP_PORT: port 70000 out of range 1..65535",
            ],
        ),
        (
            {"SERVICE_DEST": "a.test:1"},
            ["SERVICE_TCP_PORT: must be set together with SERVICE_DEST"],
        ),
        (
            {"SERVICE_TCP_PORT": "1", "SERVICE_DEST": "a.test:1", "SERVICE_NAME": "My Svc"},
            ["SERVICE_NAME: invalid value 'My Svc': must match ^[a-z0-9][a-z0-9._-]{0,62}$"],
        ),
        ({"STATS_USER": "admin"}, ["STATS_USER: has no effect without STATS_PORT"]),
        ({"STATS_PORT": "0"}, ["STATS_PORT: port 0 out of range 1..65535"]),
        (
            {"STATS_PORT": "1936", "STATS_USER": "admin"},
            ["STATS_* env: the stats page needs STATS_USER and STATS_PASSWORD (basic auth)"],
        ),
        (
            {"STATS_PORT": "1936", "STATS_USER": "admin", "STATS_PASSWORD": "a b"},
            ["STATS_* env: password: invalid value (not shown: it is a secret)"],
        ),
        (
            {
                "STATS_PORT": "8443",
                "STATS_USER": "admin",
                "STATS_PASSWORD": "pw",
                "SERVICE_TCP_PORT": "8443",
                "SERVICE_DEST": "a.test:1",
            },
            ["SERVICE_* env: route.listen: listen 8443 collides with the stats page (STATS_PORT)"],
        ),
    ],
)
def test_seed_env_problems(env: dict[str, str], expected: list[str]) -> None:
    found = errors(snap(), env)
    assert len(found) == len(expected), found
    for line, want in zip(found, expected, strict=True):
        assert line.startswith(want), (line, want)


def test_yaml_errors_carry_file_and_line() -> None:
    found = errors(
        snap(
            routes_yaml="""\
            version: 1
            routes:
              - name: ok
                listen: 8443
                destinations: ["a.test:443"]
              - name: Bad_Name
                listen: 70000
                destinations:
                  - "b.test"
                mode: udp
            """
        )
    )
    assert found == [
        "routes.yaml:6: routes[1].name: invalid value 'Bad_Name': must match "
        "^[a-z0-9][a-z0-9._-]{0,62}$",
        "routes.yaml:7: routes[1].listen: port 70000 out of range 1..65535",
        "routes.yaml:9: routes[1].destinations[0]: missing port in 'b.test'",
        "routes.yaml:10: routes[1].mode: "
        "Input should be 'tcp', 'http', 'proxy' or 'tls' (got 'udp')",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routes: [\n  {name: a\n", "routes.yaml:3: YAML syntax error: "),
        ("- a\n- b\n", "routes.yaml: top level must be a mapping"),
        ("version: 2\n", "routes.yaml:1: version: unsupported version 2 (only 1)"),
        (
            "rutes: []\n",
            "routes.yaml:1: rutes: unknown top-level key (did you mean `routes`? expected one of",
        ),
        ("routes: {a: 1}\n", "routes.yaml:1: routes: must be a list"),
        ("routes: [1]\n", "routes.yaml:1: routes[0]: must be a mapping"),
        ("defaults: 5\n", "routes.yaml:1: defaults: must be a mapping"),
        ("defaults:\n  mode: udp\n", "routes.yaml:2: defaults.mode: Input should be 'tcp' or"),
        ("defaults:\n  tiemout: 5s\n", "routes.yaml:2: defaults.tiemout: unknown field"),
        (
            "resolvers:\n  nameservers: [dns.test]\n",
            "routes.yaml:2: resolvers.nameservers[0]: nameserver must be an IP address",
        ),
        (
            "resolvers:\n  hold_valid: 10\n",
            "routes.yaml:2: resolvers.hold_valid: duration '10' needs",
        ),
        ("version: 1\nversion: 1\n", "routes.yaml:2: version: key appears twice"),
        (b"\xff\xfe".decode("latin-1"), "routes.yaml: "),
    ],
)
def test_yaml_shape_errors(text: str, expected: str) -> None:
    found = errors(snap(routes_yaml=text))
    assert any(line.startswith(expected) for line in found), found


def test_not_utf8() -> None:
    snapshot = Snapshot(Path("/cfg"), (("routes.yaml", b"routes: [\xff]\n"),))
    assert errors(snapshot) == ["routes.yaml: not UTF-8 text (byte 9)"]


def test_empty_key_and_non_yaml_keys_contribute_nothing() -> None:
    config = load_snapshot(snap(empty_yaml="", README_md="routes: [1]", notes_txt="x: ["), {})
    assert config.routes == ()


def test_names_and_listeners_unique_across_keys_and_env() -> None:
    found = errors(
        snap(
            a_yaml="""\
            routes:
              - {name: web, listen: 8080, destinations: ["192.0.2.1:80"]}
              - {name: api, listen: "127.0.0.1:8443", destinations: ["192.0.2.1:443"]}
            """,
            b_yaml="""\
            routes:
              - {name: web, listen: 9090, destinations: ["192.0.2.2:80"]}
              - {name: other, listen: "0.0.0.0:8443", destinations: ["192.0.2.2:443"]}
            """,
        ),
        {"SERVICE_NAME": "api", "SERVICE_TCP_PORT": "9090", "SERVICE_DEST": "192.0.2.9:1"},
    )
    assert found == [
        "SERVICE_* env: route.listen: listen 9090 is already used by route 'web' "
        "(b.yaml: routes[0])",
        "SERVICE_* env: route.name: route name 'api' is already used by a.yaml: routes[1]",
        "b.yaml:2: routes[0].name: route name 'web' is already used by a.yaml: routes[0]",
        "b.yaml:3: routes[1].listen: listen 0.0.0.0:8443 is already used by route 'api' "
        "(a.yaml: routes[1])",
    ]


def test_sections_merge_across_keys_but_conflicts_are_errors() -> None:
    config = load_snapshot(
        snap(
            a_yaml="resolvers: {nameservers: ['127.0.0.1:5353']}\ndefaults: {mode: http}\n",
            b_yaml="resolvers: {hold_valid: 2s}\ndefaults: {mode: http, maxconn: 10}\n"
            "routes: [{name: a, listen: 1, destinations: ['x.test:80']}]\n",
        ),
        {},
    )
    assert config.resolvers.hold_valid == 2000
    assert [ns.hostport for ns in config.resolvers.nameservers] == ["127.0.0.1:5353"]
    (r,) = config.routes
    assert (r.mode, r.maxconn) == ("http", 10)

    found = errors(snap(a_yaml="defaults: {mode: http}\n", b_yaml="\n\ndefaults:\n  mode: tcp\n"))
    assert found == ["b.yaml:4: defaults.mode: also set to a different value in a.yaml"]


def test_all_problems_at_once_across_sources() -> None:
    snapshot = snap(
        a_yaml="routes:\n  - {name: a, listen: 0, destinations: ['x.test:1']}\n",
        b_yaml="routes: [\n",
        c_yaml="routes:\n  - {name: c, listen: 2, destinations: []}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_snapshot(snapshot, {"SERVICE_TCP_PORT": "x", "SERVICE_DEST": "y.test:1"})
    summary = info.value.summary().splitlines()
    assert summary[0] == "invalid configuration (4 problems)"
    assert [line.split(":")[0].strip() for line in summary[1:]] == [
        "SERVICE_TCP_PORT",
        "a.yaml",
        "b.yaml",
        "c.yaml",
    ]


def test_every_problem_with_its_reason_in_one_pass() -> None:
    """Bad networks say why (the same text the same way in allow_from and in rules), a
    misplaced `*` is reported with the other problems, a single value where a list belongs
    shows the list, and a misspelt field names the closest known one."""
    got = errors(
        snap(
            routes_yaml="""\
            routes:
              - name: web
                listen: 3128
                mode: proxy
                allow_from: [10.0.0.1/8, 10.0.0.0/33]
                policy: ["*", 10.0.0.1/8, 10.0.0.0/33]
              - name: db
                listen: 5432
                allow-from: [10.0.0.0/8]
                destinations: 127.0.0.1:80
            """
        )
    )
    assert got == [
        "routes.yaml:5: routes[0].allow_from[0]: invalid network '10.0.0.1/8': host bits set:"
        " did you mean 10.0.0.0/8?",
        "routes.yaml:5: routes[0].allow_from[1]: invalid network '10.0.0.0/33': prefix /33 is"
        " out of range (IPv4: /0 to /32)",
        "routes.yaml:6: routes[0].policy: Wildcard must be last rule, if present",
        "routes.yaml:6: routes[0].policy[1]: Bad destination '10.0.0.1/8': host bits set:"
        " did you mean 10.0.0.0/8?",
        "routes.yaml:6: routes[0].policy[2]: Bad destination '10.0.0.0/33': prefix /33 is out"
        " of range (IPv4: /0 to /32)",
        "routes.yaml:9: routes[1].allow-from: unknown field (did you mean `allow_from`? see"
        " `haproxy-egress schema` for every field)",
        "routes.yaml:10: routes[1].destinations: must be a list, not the single value"
        " '127.0.0.1:80': write `destinations: [127.0.0.1:80]`, or one `- 127.0.0.1:80` per"
        " line below `destinations:`",
    ]


def test_a_misspelt_key_of_an_endpoint_or_a_listener_names_the_known_one() -> None:
    """Endpoints and listeners written as mappings are checked key by key like a route."""
    got = errors(
        snap(
            routes_yaml="""\
            routes:
              - name: web
                listen: {port: 8080, adress: 127.0.0.1}
                destinations:
                  - {host: 192.0.2.1, prot: 443}
            """
        )
    )
    assert got == [
        "routes.yaml:3: routes[0].listen.adress: unknown field (did you mean `address`? see"
        " `haproxy-egress schema` for every field)",
        "routes.yaml:5: routes[0].destinations[0].port: Field required",
        "routes.yaml:5: routes[0].destinations[0].prot: unknown field (did you mean `port`? see"
        " `haproxy-egress schema` for every field)",
    ]


def test_a_listener_written_as_a_mapping_takes_what_the_text_form_takes() -> None:
    """A host name has no address to bind (it would have bound every address); the port is
    1..65535; an IPv6 literal may come in brackets."""
    got = errors(
        snap(
            routes_yaml="""\
            routes:
              - name: a
                listen: {address: example.com, port: 20001}
                destinations: [192.0.2.1:443]
              - name: b
                listen: {address: "[::1]", port: "20002"}
                destinations: [192.0.2.1:443]
              - name: c
                listen: {address: 127.0.0.1, port: 0}
                destinations: [192.0.2.1:443]
            """
        )
    )
    assert got == [
        "routes.yaml:3: routes[0].listen: not a valid IP address: 'example.com'",
        "routes.yaml:9: routes[2].listen: port 0 out of range 1..65535",
    ]


def test_allow_from_takes_what_policy_rules_take() -> None:
    """Bracketed IPv6 and bare addresses mean the same network in allow_from as in rules."""
    config = load_snapshot(
        snap(
            routes_yaml="""\
            routes:
              - {name: web, listen: 3128, mode: proxy, allow_from: &nets [
                  "[2001:db8::/32]", 127.0.0.1, "::1"], policy: *nets}
            """
        ),
        {},
    )
    (route,) = config.routes
    assert [str(n) for n in route.allow_from] == ["2001:db8::/32", "127.0.0.1/32", "::1/128"]
    assert [r.value for r in route.rules] == ["2001:db8::/32", "127.0.0.1/32", "::1/128"]


# --- the directory snapshot ---------------------------------------------------------------


def kubelet_publish(directory: Path, version: str, keys: dict[str, str]) -> None:
    """Publish keys the way the kubelet's atomic writer does: new dir, swap ..data, key links."""
    target = directory / f"..{version}"
    target.mkdir(parents=True)
    for name, text in keys.items():
        (target / name).write_text(text)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, directory / "..data")
    for name in keys:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


ROUTE_A = "routes: [{name: a, listen: 1001, destinations: ['192.0.2.1:80']}]\n"
ROUTE_B = "routes: [{name: b, listen: 1002, destinations: ['192.0.2.2:80']}]\n"


def test_kubelet_layout_reads_one_version(tmp_path: Path) -> None:
    kubelet_publish(tmp_path, "2026_11_26_10_00_00.1", {"routes.yaml": ROUTE_A})
    first = read_snapshot(tmp_path)
    assert [name for name, _ in first.files] == ["routes.yaml"]

    # A new version is published: the snapshot follows ..data, never mixing the two.
    kubelet_publish(tmp_path, "2026_11_26_10_05_00.2", {"routes.yaml": ROUTE_B, "more.yaml": ""})
    second = read_snapshot(tmp_path)
    assert [name for name, _ in second.files] == ["more.yaml", "routes.yaml"]
    assert dict(second.files)["routes.yaml"] == ROUTE_B.encode()
    assert first.digest != second.digest
    assert read_snapshot(tmp_path).digest == second.digest
    (r,) = load_snapshot(second, {}).routes
    assert r.name == "b"


def test_plain_directory_snapshot(tmp_path: Path) -> None:
    write_configmap(tmp_path, {"a.yaml": ROUTE_A, ".swp.yaml": "garbage: [", "b.yml": ROUTE_B})
    (tmp_path / "subdir.yaml").mkdir()
    snapshot = read_snapshot(tmp_path)
    assert [name for name, _ in snapshot.files] == ["a.yaml", "b.yml"]
    assert [r.name for r in load_snapshot(snapshot, {}).routes] == ["a", "b"]


def test_bad_keys_are_problems(tmp_path: Path) -> None:
    write_configmap(tmp_path, {"bad name.yaml": ROUTE_A, "big.yaml": b"#" * (MAX_KEY_BYTES + 1)})
    found = errors(read_snapshot(tmp_path))
    assert found == [
        "'bad name.yaml': not a valid ConfigMap key name",
        f"big.yaml: {MAX_KEY_BYTES + 1} bytes is more than a ConfigMap may hold (1 MiB)",
    ]


def test_missing_directory_is_empty(tmp_path: Path) -> None:
    snapshot = read_snapshot(tmp_path / "absent")
    assert not snapshot.exists
    assert snapshot.files == ()
    assert load_snapshot(snapshot, {}).routes == ()


def test_load_from_settings_reserves_the_metrics_port(tmp_path: Path) -> None:
    write_configmap(
        tmp_path, {"a.yaml": "routes: [{name: a, listen: 9101, destinations: ['192.0.2.1:1']}]"}
    )
    settings = Settings(config_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        load(settings)
    assert [str(p) for p in info.value.problems] == [
        "a.yaml:1: routes[0].listen: listen 9101 collides with the metrics endpoint "
        "(SCRAPER_TCP_PORT=9101)"
    ]
    snapshot, config = load(Settings(config_dir=tmp_path, metrics_port=0))
    assert isinstance(config, Config)
    assert snapshot.exists
    assert config.routes[0].name == "a"


def test_a_single_value_with_a_line_break_is_shown_quoted_in_one_line() -> None:
    (got,) = errors(snap(routes_yaml='defaults:\n  allow_from: "\\n"\nroutes: []\n'))
    assert got == "routes.yaml:2: defaults.allow_from: must be a list, not the single value '\\n'"


def test_a_snapshot_read_during_a_swap_is_one_whole_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet deletes the old version's files right after the swap: a read that resolved
    the old version before the swap must not return what was left of it (a torn read would
    drop the missing keys' routes). Here the swap lands between the resolve and the listing."""
    old = {f"k{i}.yaml": f"# old {i}\n" for i in range(6)}
    new = {f"k{i}.yaml": f"# new {i}\n" for i in range(6)}
    kubelet_publish(tmp_path, "2026_12_07_10_00_00.1", old)
    read_dir = configdir._read_dir
    swapped: list[Path] = []

    def swap_then_read(target: Path) -> tuple[list[tuple[str, bytes]], list[Problem]]:
        if not swapped:  # the first read: swap, and delete half of the old version's files
            kubelet_publish(tmp_path, "2026_12_07_10_05_00.2", new)
            for name in ("k1.yaml", "k3.yaml", "k5.yaml"):
                (target / name).unlink()
            swapped.append(target)
        return read_dir(target)

    monkeypatch.setattr(configdir, "_read_dir", swap_then_read)
    snapshot = read_snapshot(tmp_path)
    assert swapped
    assert dict(snapshot.files) == {k: v.encode() for k, v in new.items()}
