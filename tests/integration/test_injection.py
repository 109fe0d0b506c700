"""No input can inject haproxy directives: a property test over every string field.

For each string the YAML or the seed env vars accept, hypothesis tries valid values, values
with an injection payload spliced in (newline, '#', quotes, blanks, ACL and directive text)
and arbitrary text. The outcome must be either a clean ConfigError whose every problem names
its source and location, or a config that `haproxy -c` accepts and that has exactly the
expected sections, directives and server lines. No other exception may escape.

Profiles: `ci` (default, bounded) and `dev` (HYPOTHESIS_PROFILE=dev, many more examples).
Every rendering names explicit nameservers, so no generated host name reaches libc.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from haproxy_egress.config.document import Config
from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions, audit_log_format, render
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from haproxy_egress.settings import SEED_VARS
from tests.support import HAPROXY, with_pattern_files

# The profiles are registered in tests/conftest.py.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

NAMESERVER = "127.0.0.1:53"
BASE_DOC: dict[str, Any] = {
    "version": 1,
    "defaults": {"mode": "tcp", "connect_timeout": "5s", "source": "127.0.0.1"},
    "resolvers": {"nameservers": [NAMESERVER], "hold_valid": "10s"},
    "routes": [
        {
            "name": "tcp-route",
            "listen": "127.0.0.1:18001",
            "mode": "tcp",
            "destinations": [
                "api.github.test:443",
                "198.51.100.7:443",
                {"host": "h.test", "port": 1},
            ],
            "balance": "roundrobin",
            "allow_from": ["10.128.0.0/14"],
            "source": "127.0.0.2",
            "idle_timeout": "1h",
            "proxy_protocol": "v2",
            "resolve_prefer": "ipv4",
            "check": {"interval": "2s"},
        },
        {
            "name": "http-route",
            "listen": 18002,
            "mode": "http",
            "destinations": ["[2001:db8::1]:80"],
            "check": {"http_path": "/healthz"},
        },
    ],
}
BASE_ENV = {
    "SERVICE_NAME": "seed",
    "SERVICE_TCP_PORT": "18003",
    "SERVICE_DEST_PORT": "443",
    "SERVICE_DEST": "seed.example.test;192.0.2.1:8443",
    "STATS_PORT": "18004",
    "STATS_USER": "admin",
    "STATS_PASSWORD": "s3cr3t",
}
assert set(BASE_ENV) == set(SEED_VARS)

# Every string-valued place of the public YAML shape: (path, valid examples).
YAML_FIELDS: dict[tuple[str | int, ...], list[str]] = {
    ("routes", 0, "name"): ["a", "github-api", "a.b_c-1"],
    ("routes", 0, "listen"): ["8443", "127.0.0.1:8443", "[::1]:8443", "*:8443"],
    ("routes", 0, "mode"): ["tcp", "http"],
    ("routes", 0, "destinations", 0): ["a.test:443", "[2001:db8::2]:443", "192.0.2.9:1"],
    ("routes", 0, "destinations", 2, "host"): ["h.test", "2001:db8::3", "[2001:db8::4]"],
    ("routes", 0, "destinations", 2, "port"): ["1", "65535"],
    ("routes", 0, "balance"): ["roundrobin", "first", "leastconn", "source"],
    ("routes", 0, "allow_from", 0): ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"],
    ("routes", 0, "source"): ["192.0.2.11", "2001:db8::10"],
    ("routes", 0, "connect_timeout"): ["5s", "500ms", "1h"],
    ("routes", 0, "idle_timeout"): ["1h", "30m", "1d"],
    ("routes", 0, "proxy_protocol"): ["v1", "v2"],
    ("routes", 0, "resolve_prefer"): ["ipv4", "ipv6"],
    ("routes", 0, "check", "interval"): ["2s", "100ms"],
    ("routes", 1, "check", "http_path"): ["/", "/healthz", "/a?b=c&d=%20"],
    ("defaults", "mode"): ["tcp"],
    ("defaults", "source"): ["192.0.2.12"],
    ("defaults", "connect_timeout"): ["3s"],
    ("resolvers", "nameservers", 0): ["127.0.0.1", "127.0.0.1:5353", "[::1]:53"],
    ("resolvers", "hold_valid"): ["10s", "1m"],
}
PAYLOADS = [
    "\n",
    "\r\n",
    "#",
    " #x",
    '"',
    "'",
    " ",
    "\t",
    "\\",
    "$HOME",
    "${HOME}",
    "%[src]",
    " if TRUE",
    "\nserver evil 127.0.0.1:1",
    "\n    server evil 127.0.0.1:1",
    "\nlua-load /tmp/evil.lua",
    "\n    acl x src 0.0.0.0/0",
    "\nfrontend evil\n  bind :1",
    ";",
    "{}",
    "%",
    ":",
    "[",
    "]",
    "/",
    "\u2028",
    "\x85",
    "\x0b",
    "é",
    "\x00",
]
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


def spliced(valid: list[str]) -> st.SearchStrategy[str]:
    """A valid value with a payload (or arbitrary text) put at its start, middle or end."""
    piece = st.one_of(st.sampled_from(PAYLOADS), TEXT)

    def splice(value: str, insert: str, where: float) -> str:
        at = round(where * len(value))
        return value[:at] + insert + value[at:]

    return st.builds(splice, st.sampled_from(valid), piece, st.floats(0, 1))


def strings(valid: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(valid), spliced(valid), TEXT)


# --- what a rendered config may contain ---------------------------------------------------

DIRECTIVES = {
    "global": {
        "pidfile",
        "stats",
        "log",
        "nbthread",
        "server-state-file",
    },
    "defaults": {
        "log",
        "mode",
        "option",
        "retries",
        "timeout",
        "default-server",
        "load-server-state-from-file",
    },
    "resolvers": {
        "nameserver",
        "parse-resolv-conf",
        "accepted_payload_size",
        "resolve_retries",
        "timeout",
        "hold",
    },
    "frontend": {
        "bind",
        "mode",
        "option",
        "timeout",
        "maxconn",
        "acl",
        "tcp-request",
        "default_backend",
        "no",
        "stats",
    },
    "backend": {
        "mode",
        "balance",
        "hash-type",
        "timeout",
        "source",
        "option",
        "server",
        "server-template",
    },
}
SERVER_LINE = re.compile(
    r"^    (server [^\s#]+|server-template [^\s#]+ [0-9]+) [^\s#]+"
    r"( check inter [0-9]+(ms|s|m|h|d) rise [0-9]+ fall [0-9]+)?( send-proxy(-v2)?)?"
    r"( resolvers dns resolve-prefer ipv[46])?$"
)
ROUTE_COMMENT = re.compile(
    r"^# route [a-z0-9][a-z0-9._-]* \((SERVICE_\* env|[-._a-zA-Z0-9]+): (routes\[[0-9]+\]|route)\)$"
)


def expected_sections(config: Config) -> list[str]:
    out = ["global", "defaults"]
    if config.needs_resolvers:
        out.append("resolvers dns")
    if config.stats:
        out.append("frontend _stats")
    for r in config.routes:
        out += [f"frontend {r.name}", f"backend {r.name}"]
    return out


def assert_only_expected_content(text: str, config: Config, template_comments: set[str]) -> None:
    """Sections, directive keywords, server lines and comments are exactly the template's."""
    assert "\r" not in text
    assert "\x00" not in text
    uses_hooks = any(r.hooks for r in config.routes)
    if not uses_hooks:
        assert "lua-load" not in text
    headers: list[str] = []
    servers: dict[str, int] = {}
    acls: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            assert line in template_comments or ROUTE_COMMENT.match(line), line
            continue
        if not line.startswith(" "):
            headers.append(line)
            continue
        assert line.startswith("    "), line
        assert not line.startswith("     "), line
        word = line.split()[0]
        if word == "#":
            assert line in template_comments, line
            continue
        if uses_hooks and any(p.match(line) for p in HOOK_LINES):
            continue  # the exact shapes hook lines may take (see the Lua hooks section below)
        kind = headers[-1].split()[0]
        assert word in DIRECTIVES[kind], (headers[-1], line)
        if word in ("server", "server-template"):
            assert SERVER_LINE.match(line), line
            servers[headers[-1]] = servers.get(headers[-1], 0) + 1
        if word in ("acl", "tcp-request"):
            acls[headers[-1]] = acls.get(headers[-1], 0) + 1
    assert headers == expected_sections(config)
    for r in config.routes:
        assert servers.get(f"backend {r.name}") == len(r.destinations)
        # acl + reject; with the deny_page hook the refusal is an http-request hook line.
        deny_page = any(h.use == "deny_page" for h in r.hooks)
        expected_acls = (1 if deny_page else 2) if r.allow_from else 0
        assert acls.get(f"frontend {r.name}", 0) == expected_acls


def haproxy_check(text: str, directory: Path | None = None) -> None:
    """`haproxy -c` on `text`, written into `directory` (beside staged files) or a temp dir."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="egress-injection.") as tmp:
            haproxy_check(text, Path(tmp))
        return
    path = directory / "haproxy.cfg"
    path.write_text(with_pattern_files(text, directory), encoding="utf-8")
    proc = subprocess.run(
        [HAPROXY, "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n" + text


OPTIONS = RenderOptions(run_dir=Path("/run/haproxy-egress"))


def comments_of(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.lstrip().startswith("#")}


BASE_CONFIG = load_snapshot(
    Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(BASE_DOC).encode()),)), BASE_ENV
)
# `balance source` adds its own comment (consistent hashing for runtime destinations).
_SOURCE_DOC = copy.deepcopy(BASE_DOC)
_SOURCE_DOC["routes"][0]["balance"] = "source"
_SOURCE_CONFIG = load_snapshot(
    Snapshot(Path("/cfg"), (("routes.yaml", yaml.safe_dump(_SOURCE_DOC).encode()),)), BASE_ENV
)
TEMPLATE_COMMENTS = {
    c
    for config in (BASE_CONFIG, _SOURCE_CONFIG)
    for c in comments_of(render(config, OPTIONS))
    if not c.startswith("# route ")
}


def assert_outcome(
    snapshot: Snapshot,
    env: dict[str, str],
    located: Callable[[Problem], bool],
    comments: Callable[[str], set[str]] = lambda text: set(),
    accepts: Callable[[str], None] = haproxy_check,
) -> bool:
    """The property: a located ConfigError, or a config haproxy accepts with nothing extra
    (beyond the template's comments and `comments(text)`). True when it was accepted."""
    try:
        config = load_snapshot(snapshot, env)
    except ConfigError as exc:
        problems = exc.problems
    else:
        text = render(config, OPTIONS)
        assert_only_expected_content(text, config, TEMPLATE_COMMENTS | comments(text))
        accepts(text)
        return True
    assert problems
    for p in problems:
        assert p.source, p
        assert p.message, p
        shown = str(p)
        assert "\n" not in shown, repr(shown)  # one line per problem: output cannot be forged
        assert "\r" not in shown, repr(shown)
        assert located(p), p
    return False


def _located(where: str) -> Callable[[Problem], bool]:
    def located(p: Problem) -> bool:
        if where == "yaml":  # a field of a YAML key: a path or a line inside it
            return bool(p.path or p.line)
        if where == "env":  # the variable itself, or the env route / stats page path
            return bool(p.source in SEED_VARS or p.path or p.source.endswith("env"))
        return True  # where == "file": the key (file) name is the location

    return located


def check_outcome(snapshot: Snapshot, env: dict[str, str], where: str) -> None:
    """The property, with the location a problem of a YAML, env or file input must name."""
    assert_outcome(snapshot, env, _located(where))


def with_value(base: Any, path: tuple[str | int, ...], value: object) -> Any:
    """A deep copy of the document `base` with `value` at `path`."""
    doc = copy.deepcopy(base)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def check_strings_at(
    base: Any, path: tuple[str | int, ...], valid: list[str], check: Callable[[Any], None]
) -> None:
    """`check` copies of the document `base` with a string at `path`: one of `valid`, one
    with a payload spliced in, or any text (`strings`)."""

    @settings(settings.get_profile(PROFILE))
    @given(value=strings(valid))
    def run(value: str) -> None:
        check(with_value(base, path, value))

    run()


def check_routes_yaml(doc: Any) -> None:
    """`doc` as the routes.yaml key, beside the base env."""
    data = yaml.safe_dump(doc, allow_unicode=True).encode()
    check_outcome(Snapshot(Path("/cfg"), (("routes.yaml", data),)), BASE_ENV, where="yaml")


def test_base_inputs_are_valid() -> None:
    assert [r.name for r in BASE_CONFIG.routes] == ["tcp-route", "http-route", "seed"]
    check_routes_yaml(BASE_DOC)


@pytest.mark.parametrize("path", list(YAML_FIELDS), ids=lambda p: ".".join(map(str, p)))
def test_yaml_string_fields(path: tuple[str | int, ...]) -> None:
    check_strings_at(BASE_DOC, path, YAML_FIELDS[path], check_routes_yaml)


@pytest.mark.parametrize("place", ["route key", "top-level key"])
def test_yaml_key_names(place: str) -> None:
    """Unknown keys are refused by name, whatever the name holds."""

    @settings(settings.get_profile(PROFILE))
    @given(key=strings(["name", "listen", "routes", "x"]))
    def run(key: str) -> None:
        doc = copy.deepcopy(BASE_DOC)
        target = doc["routes"][0] if place == "route key" else doc
        target[key] = "x"
        check_routes_yaml(doc)

    run()


@pytest.mark.parametrize("var", SEED_VARS)
def test_seed_env_vars(var: str) -> None:
    valid = {
        "SERVICE_NAME": ["svc", "tst-scr-svc"],
        "SERVICE_TCP_PORT": ["8443", "127.0.0.1:8443"],
        "SERVICE_DEST_PORT": ["443"],
        "SERVICE_DEST": ["www.example.test", "a.test;192.0.2.1:443;[2001:db8::1]"],
        "STATS_PORT": ["1936"],
        "STATS_USER": ["admin"],
        "STATS_PASSWORD": ["s3cr3t", "p@ss:w0rd!"],
    }[var]

    @settings(settings.get_profile(PROFILE))
    @given(value=strings(valid).filter(lambda v: "\x00" not in v))  # environ cannot hold NUL
    def run(value: str) -> None:
        env = {**BASE_ENV, var: value}
        doc = {"resolvers": {"nameservers": [NAMESERVER]}}
        data = yaml.safe_dump(doc).encode()
        check_outcome(Snapshot(Path("/cfg"), (("dns.yaml", data),)), env, where="env")

    run()


def test_configmap_key_names() -> None:
    """A file name reaches haproxy.cfg (in a comment) only if it is a valid ConfigMap key."""

    @settings(settings.get_profile(PROFILE))
    @given(stem=strings(["routes", "10-tcp", "a.b_c"]))
    def run(stem: str) -> None:
        name = f"{stem}.yaml"
        if "/" in name or "\x00" in name or len(name.encode()) > 255 or name.startswith("."):
            return
        with tempfile.TemporaryDirectory(prefix="egress-keys.") as tmp:
            (Path(tmp) / name).write_text(yaml.safe_dump(BASE_DOC))
            snapshot = read_snapshot(Path(tmp))
        check_outcome(snapshot, {}, where="file")

    run()


# --- Lua hooks: names, phases and arguments reach haproxy.cfg only in these shapes -

HOOK_LINES = [
    re.compile(r"^    lua-load-per-thread /[^\s#]*/lua/[0-9a-f]{64}\.lua$"),
    re.compile(
        r"^    (http-request|http-response|tcp-request content) set-var\(txn\."
        r"(arg\.[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,31}|egress_rule)\) "
        r"str\([A-Za-z0-9._:/@+=-]{1,128}\)( unless client_allowed)?$"
    ),
    re.compile(
        r"^    (http-request|http-response|tcp-request content) (use-service )?"
        r"lua\.[a-z][a-z0-9_]{0,31}( unless client_allowed)?$"
    ),
    re.compile(r"^    http-request set-var\(txn\.audit_host\) req\.fhdr\(host\),bytes\(0,200\)$"),
    # The audit log-format is a constant of the compiler: no input reaches it.
    *(
        re.compile("^    log-format " + re.escape(f'"{audit_log_format(mode)}"') + "$")
        for mode in ("tcp", "http")
    ),
]
STAMP_LUA = b"""
core.register_action("stamp", {"tcp-req", "http-req", "http-res"}, function(txn) end, 0)
core.register_service("stamp", "http", function(applet) applet:set_status(204) end)
"""
HOOKS_DOC: dict[str, Any] = {
    "resolvers": {"nameservers": [NAMESERVER]},
    "routes": [
        {
            "name": "web",
            "listen": "127.0.0.1:18011",
            "mode": "http",
            "allow_from": ["10.0.0.0/8"],
            "destinations": ["a.test:80"],
            "hooks": [
                {"use": "stamp", "at": "http-request", "args": {"value": "v-1"}},
                "audit",
                {"use": "deny_page", "args": {"contact": "sec@corp.test"}},
                {"use": "proxy_auth", "args": {"secret_dir": "/var/run/secrets/parent"}},
            ],
        },
        {
            "name": "raw",
            "listen": "127.0.0.1:18012",
            "destinations": ["192.0.2.1:443"],
            "hooks": ["audit", {"use": "stamp", "at": "tcp-request"}],
        },
    ],
}
HOOK_FIELDS: dict[tuple[str | int, ...], list[str]] = {
    ("routes", 0, "hooks", 0, "use"): ["stamp"],
    ("routes", 0, "hooks", 0, "at"): ["http-request", "http-response", "tcp-request", "service"],
    ("routes", 0, "hooks", 0, "args", "value"): ["v-1", "a.b/c:d@e+f=g"],
    ("routes", 0, "hooks", 2, "args", "contact"): ["sec@corp.test", "https://wiki.test/x"],
    ("routes", 0, "hooks", 3, "args", "secret_dir"): ["/var/run/secrets/parent", "/s"],
    ("routes", 1, "hooks", 0): ["audit"],
}


def _hooks_snapshot(doc: Any) -> Snapshot:
    data = yaml.safe_dump(doc, allow_unicode=True).encode()
    return Snapshot(Path("/cfg"), (("routes.yaml", data), ("stamp.lua", STAMP_LUA)))


def _render_hooks(snapshot: Snapshot, run_dir: Path) -> tuple[Config, hooks.HookSet, str]:
    config = load_snapshot(snapshot, {})
    hook_set = hooks.resolve(config, snapshot.files)
    return config, hook_set, render(config, RenderOptions(run_dir=run_dir), hooks=hook_set)


HOOK_COMMENTS = comments_of(_render_hooks(_hooks_snapshot(HOOKS_DOC), Path("/run/x"))[2])
HOOK_COMMENTS = {c for c in HOOK_COMMENTS if not c.startswith("# route ")}


def check_hooks_outcome(snapshot: Snapshot) -> None:
    """The property for hook fields: a located ConfigError, or only the expected shapes and a
    config `haproxy -c` accepts with the staged Lua files."""
    with tempfile.TemporaryDirectory(prefix="egress-hooks.") as tmp:
        try:
            config, hook_set, text = _render_hooks(snapshot, Path(tmp))
        except ConfigError as exc:
            problems = exc.problems
        else:
            problems = ()
        if problems:
            for p in problems:
                assert p.source, p
                assert p.path or p.line, p
                assert "\n" not in str(p), repr(str(p))
            return
        assert_only_expected_content(text, config, HOOK_COMMENTS)
        staging.stage(hook_set, RunDir(Path(tmp)).lua)
        haproxy_check(text, Path(tmp))


def test_hook_base_inputs_are_valid() -> None:
    config, hook_set, _ = _render_hooks(_hooks_snapshot(HOOKS_DOC), Path("/run/x"))
    assert [f.key for f in hook_set.files] == [
        "vocabulary.lua",  # generated (config/vocabulary.py), loaded first
        "audit.lua",
        "deny_page.lua",
        "proxy_auth.lua",
        "stamp.lua",
    ]
    assert [len(r.hooks) for r in config.routes] == [4, 2]
    check_hooks_outcome(_hooks_snapshot(HOOKS_DOC))


@pytest.mark.parametrize("path", list(HOOK_FIELDS), ids=lambda p: ".".join(map(str, p)))
def test_hook_string_fields(path: tuple[str | int, ...]) -> None:
    check_strings_at(
        HOOKS_DOC, path, HOOK_FIELDS[path], lambda doc: check_hooks_outcome(_hooks_snapshot(doc))
    )


def test_hook_argument_names() -> None:
    @settings(settings.get_profile(PROFILE))
    @given(key=strings(["value", "a_b", "x1"]))
    def run(key: str) -> None:
        doc = copy.deepcopy(HOOKS_DOC)
        doc["routes"][0]["hooks"][0]["args"] = {key: "v"}
        check_hooks_outcome(_hooks_snapshot(doc))

    run()
