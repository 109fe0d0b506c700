"""Fuzzing every input surface: whole YAML documents, raw key bytes, the seed env vars together,
the legacy EGRESS_* lines, and the process settings.

tests/integration/test_injection.py splices payloads into one string field at a time; this
module reuses its base inputs and checks, and goes wider: any YAML value of any type at any
place of a document, byte-level damage to a key file (a half-written key is one of them), every
seed variable at once, multi-line legacy values built from the dialects' grammar and then
damaged, and all legacy settings at once from env vars and ConfigMap keys. The property is the
one of the issue: a clean `ConfigError` whose every problem names its source and location, or a
config that `haproxy -c` accepts and that holds only the sections, directives and server lines
the model implies. No other
exception may escape (hypothesis reports any as a failure).

Profiles: the default (`ci`) tries ~11,700 cases in a few minutes; HYPOTHESIS_PROFILE=nightly
multiplies every budget by FUZZ_SCALE (default 20). Each test records its figures
(tests/figures.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from haproxy_egress.commands.explain import explain
from haproxy_egress.config.document import Config, Resolvers
from haproxy_egress.config.policyfields import POLICY_MODES
from haproxy_egress.config.route import HealthCheck as Check
from haproxy_egress.config.route import Route
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.sources.legacy import DNS_PROXY, GATEWAY, REDIRECT, SOURCE
from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import render
from haproxy_egress.render.maps import render_maps
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from haproxy_egress.settings import SEED_VARS, Settings
from tests.conftest import QUIET
from tests.figures import record
from tests.integration.test_injection import (
    BASE_DOC,
    BASE_ENV,
    NAMESERVER,
    OPTIONS,
    PAYLOADS,
    TEXT,
    assert_outcome,
    haproxy_check,
    spliced,
    strings,
)

# HYPOTHESIS_PROFILE=nightly (registered in tests/conftest.py) also scales these budgets.
NIGHTLY = os.environ.get("HYPOTHESIS_PROFILE") == "nightly"
SCALE = int(os.environ.get("FUZZ_SCALE", "20" if NIGHTLY else "1"))


def budget(cases: int) -> settings:
    """The settings of one fuzz test: `cases` examples in CI, SCALE times more at night."""
    return settings(
        max_examples=cases * SCALE, deadline=None, database=None, suppress_health_check=QUIET
    )


# --- the property -------------------------------------------------------------------------

LEGACY_ROUTE_COMMENT = re.compile(
    r"^# route (redirect|dns-proxy)-[0-9]{1,5} "
    r"\((file )?(EGRESS_DESTINATION|EGRESS_DNS_PROXY_DESTINATION): line [0-9]+\)$"
)
_CHECKED: set[str] = set()  # digests of rendered texts haproxy -c already accepted


class Tally:
    """Outcomes of one fuzz test, for its figures and for the sanity checks at its end."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()

    def done(self, test: str, minimum: int) -> None:
        elapsed = time.monotonic() - self.started
        cases = self.counts["refused"] + self.counts["accepted"]
        record(test, cases=cases, seconds=round(elapsed, 1), failures=0, **self.counts)
        assert cases >= minimum, self.counts
        # A strategy that only ever produced refusals (or acceptances) would prove little.
        assert self.counts["refused"] > 0, self.counts
        assert self.counts["accepted"] > 0, self.counts


def outcome(
    snapshot: Snapshot, env: dict[str, str], located: Callable[[Problem], bool], tally: Tally
) -> None:
    """A located ConfigError, or a config haproxy accepts that holds only what the model says."""
    # Legacy routes name their line in the route comment; test_injection knows YAML/env.
    if assert_outcome(
        snapshot,
        env,
        located,
        comments=lambda text: {ln for ln in text.splitlines() if LEGACY_ROUTE_COMMENT.match(ln)},
        accepts=lambda text: _haproxy_accepts(text, tally),
    ):
        return
    tally.counts["refused"] += 1


def fuzz(
    figure: str,
    cases: int,
    minimum: int,
    prop: Callable[..., None],
    **strategies: st.SearchStrategy[Any],
) -> None:
    """`prop(**drawn, tally=...)` on `cases` examples of `strategies`, then the tally's
    figures recorded as `figure` and at least `minimum` cases decided (both times SCALE)."""
    tally = Tally()
    budget(cases)(given(**strategies)(prop))(tally=tally)
    tally.done(figure, minimum * SCALE)


def _haproxy_accepts(text: str, tally: Tally, run_dir: Path | None = None) -> None:
    """`haproxy -c` on each distinct rendering once (many cases normalise to the same text)."""
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest not in _CHECKED:
        haproxy_check(text if run_dir is None else text.replace(str(OPTIONS.run_dir), str(run_dir)))
        _CHECKED.add(digest)
        tally.counts["haproxy_checks"] += 1
    tally.counts["accepted"] += 1


def snapshot_of(*files: tuple[str, bytes]) -> Snapshot:
    return Snapshot(Path("/cfg"), tuple(sorted(files)))


# --- YAML documents: any value of any type at any place -----------------------------------

# Field names the model knows, so generated mappings often hit real keys with wrong values.
# Policy and hook fields render extra directives by design: they get their
# own surfaces once those land, and stay out of this one.
EXTENSIONS = {"hooks", "policy", "destination_port"}
FIELD_NAMES = sorted(
    (
        {f.name for f in dataclasses.fields(Route)}
        | set(Check.model_fields)
        | set(Resolvers.model_fields)
    )
    - EXTENSIONS
    | {"version", "defaults", "resolvers", "routes", "host", "port"}
)
INTERESTING: list[object] = [
    "tcp",
    "http",
    "roundrobin",
    "5s",
    "0s",
    "-1s",
    "99999999999s",
    "1.5s",
    "127.0.0.1:1",
    "[::1]:1",
    "a.test:443",
    "0.0.0.0/0",
    "::/0",
    "v2",
    "ipv6",
    "",
    "~",
    "yes",
    "on",
    ".nan",
    "0x1F",
    "0o17",
    "1_000",
    0,
    1,
    65535,
    65536,
    -1,
    2**63,
    10**30,
    True,
    False,
    None,
    1.5,
    float("inf"),
    float("nan"),
]
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    TEXT,
    st.sampled_from(PAYLOADS),
    st.sampled_from(INTERESTING),
)
KEY = st.one_of(st.sampled_from(FIELD_NAMES), TEXT)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEY, inner, max_size=3),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


BASE_PATHS = _paths(BASE_DOC)


def _container(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """BASE_DOC with 1-3 edits: a value replaced by any YAML value, a key deleted or added."""
    doc = copy.deepcopy(BASE_DOC)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["set", "set", "delete", "add"]))
        parent = _container(doc, path)
        if op == "set":
            parent[path[-1]] = draw(VALUE)
        elif op == "delete":
            del parent[path[-1]]
        else:
            target = parent[path[-1]]
            if isinstance(target, dict):
                target[draw(KEY)] = draw(VALUE)
            elif isinstance(target, list):
                target.append(draw(VALUE))
            else:
                parent[path[-1]] = draw(VALUE)
    return doc


def _yaml_located(p: Problem) -> bool:
    # A field of a YAML key: a path or a line inside it. Merged resolvers are named "resolvers".
    return p.source in ("routes.yaml", "resolvers") and bool(p.path or p.line)


@pytest.mark.timeout(600)
def test_yaml_documents_any_value_anywhere() -> None:
    def prop(doc: dict[str, Any], tally: Tally) -> None:
        data = yaml.safe_dump(doc, allow_unicode=True).encode()
        outcome(snapshot_of(("routes.yaml", data)), {}, _yaml_located, tally)

    fuzz("fuzz: YAML documents (any value anywhere)", 2000, 1600, prop, doc=mutated_documents())


# --- the bytes of a key file: damaged, half-written, YAML's own features ------------------

BASE_TEXT = yaml.safe_dump(BASE_DOC, sort_keys=False).encode()
YAML_PIECES = [
    b"&a ",
    b"*a",
    b"<<: *a\n",
    b"!!python/object/apply:os.system ['true']",
    b"!!binary aGk=",
    b"!!set {a, b}",
    b"!!timestamp 2001-12-14",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"%TAG ! tag:x,2000:\n",
    b"? ",
    b"- ",
    b": ",
    b"{",
    b"}",
    b"[",
    b"]",
    b"|\n",
    b">-\n",
    b"\t",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\x00",
    b"\xc3",
    b"  ",
    b"\n",
    b"\r",
    b"'",
    b'"',
    b"#",
]
PIECE = st.one_of(
    st.sampled_from(YAML_PIECES),
    st.sampled_from(PAYLOADS).map(lambda s: s.encode()),
    st.binary(max_size=12),
)


@st.composite
def damaged_keys(draw: st.DrawFn) -> bytes:
    """The base key file cut short (a half-written key), with bytes deleted, inserted or flipped."""
    data = bytearray(BASE_TEXT)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "delete", "insert", "insert", "flip", "dup-line"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(PIECE)
        elif op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "dup-line":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@pytest.mark.timeout(600)
def test_key_file_bytes_damaged_or_half_written() -> None:
    def prop(data: bytes, tally: Tally) -> None:
        # The file itself is the location: a byte offset, a line, or a field path inside it.
        outcome(
            snapshot_of(("routes.yaml", data)),
            {},
            lambda p: p.source in ("routes.yaml", "resolvers"),
            tally,
        )

    fuzz("fuzz: key file bytes (damaged, half-written)", 2000, 1600, prop, data=damaged_keys())


# --- the seed env vars, all of them at once ------------------------------------------------

SEED_VALID = {
    "SERVICE_NAME": ["svc", "tst-scr-svc"],
    "SERVICE_TCP_PORT": ["8443", "127.0.0.1:8443", "[::1]:8443"],
    "SERVICE_DEST_PORT": ["443", "1"],
    "SERVICE_DEST": ["www.example.test", "a.test;192.0.2.1:443;[2001:db8::1]", "a.test;"],
    "STATS_PORT": ["1936"],
    "STATS_USER": ["admin"],
    "STATS_PASSWORD": ["s3cr3t", "p@ss:w0rd!"],
}
NO_NUL = "\x00"  # environ cannot hold NUL


@st.composite
def seed_envs(draw: st.DrawFn) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in SEED_VARS:
        choice = draw(st.sampled_from(["base", "base", "fuzz", "absent"]))
        if choice == "base":
            env[var] = BASE_ENV[var]
        elif choice == "fuzz":
            env[var] = draw(strings(SEED_VALID[var]).filter(lambda v: NO_NUL not in v))
    return env


def _env_located(p: Problem) -> bool:
    return p.source in SEED_VARS or bool(p.path) or p.source.endswith("env")


# The key naming the loopback nameserver, beside the inputs under test.
DNS_KEY = ("dns.yaml", yaml.safe_dump({"resolvers": {"nameservers": [NAMESERVER]}}).encode())


@pytest.mark.timeout(600)
def test_seed_env_vars_all_at_once() -> None:
    def prop(env: dict[str, str], tally: Tally) -> None:
        outcome(snapshot_of(DNS_KEY), env, _env_located, tally)

    fuzz("fuzz: seed env vars (all at once)", 1200, 1000, prop, env=seed_envs())


# --- the legacy dialects: lines from their grammar, then damaged ---------------------------

PORT_TEXT = st.one_of(
    st.integers(1, 65535).map(str),
    st.sampled_from(["0", "65536", "-1", "080", "0000000000080", "99999999999999999999", "1e3"]),
    st.sampled_from(["٣", "８０", "+80", "80.0", "0x50"]),
)
IPS = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(
        [
            "198.18.0.1",
            "[2001:db8::1]",
            "2001:DB8::1",
            "fe80::1%eth0",
            "256.1.1.1",
            "1.2.3",
            "01.02.03.04",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "[::]",
            "a.test",
        ]
    ),
)
HOSTS = st.one_of(
    IPS,
    st.sampled_from(["a.test", "www.example.test", "A.TEST.", "x", "-a.test", "a..test"]),
    st.from_regex(r"\A[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){1,3}\Z"),
)
SEP = st.sampled_from([" ", "\t", "  ", " \t "])
PROTO = st.sampled_from(["tcp", "TCP", "udp", "sctp", "icmp", "tcp6"])
COMMENT = st.sampled_from(["", "", " # note", "\t#x", "#glued"])
EOL = st.sampled_from(["\n", "\n", "\r\n", "\n\n", "\n# comment\n"])


def _joined(parts: list[str], sep: str, comment: str) -> str:
    return sep.join(parts) + comment


@st.composite
def redirect_line(draw: st.DrawFn) -> str:
    parts = [draw(PORT_TEXT), draw(PROTO), draw(IPS)]
    if draw(st.booleans()):
        parts.append(draw(PORT_TEXT))
    if draw(st.integers(0, 9)) == 0:
        parts = [draw(IPS)]  # the fallback form
    return _joined(parts, draw(SEP), draw(COMMENT))


@st.composite
def dns_proxy_line(draw: st.DrawFn) -> str:
    parts = [draw(PORT_TEXT), draw(HOSTS)]
    if draw(st.booleans()):
        parts.append(draw(PORT_TEXT))
    return _joined(parts, draw(SEP), draw(COMMENT))


def _damaged(line: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A grammar line, usually intact, sometimes with a payload or arbitrary text spliced in."""
    return st.one_of(line, line, line, line.flatmap(lambda v: spliced([v])), TEXT)


def legacy_value(line: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.builds(
        lambda lines, eols: "".join(a + b for a, b in zip(lines, eols, strict=False)),
        st.lists(_damaged(line), min_size=1, max_size=5),
        st.lists(EOL, min_size=5, max_size=5),
    )


LEGACY_VALUES: dict[str, st.SearchStrategy[str]] = {
    REDIRECT: legacy_value(redirect_line()),
    DNS_PROXY: legacy_value(dns_proxy_line()),
    SOURCE: strings(["198.18.0.9", "198.18.0.9/24", "2001:db8::9", "2001:db8::9/64"]),
    GATEWAY: strings(["198.18.0.1"]),
}
LEGACY_SOURCES = {name: (name, f"file {name}") for name in LEGACY_VALUES}


@st.composite
def legacy_inputs(draw: st.DrawFn) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """Each legacy setting absent, in the env, as a ConfigMap key, or (refused) in both."""
    env: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    for name, values in LEGACY_VALUES.items():
        where = draw(st.sampled_from(["absent", "env", "env", "file", "file", "both"]))
        if where == "absent":
            continue
        value = draw(values)
        if where in ("env", "both"):
            env[name] = value.replace(NO_NUL, "")
        if where in ("file", "both"):
            raw = value.encode("utf-8", "surrogatepass")
            if draw(st.integers(0, 19)) == 0:
                raw += b"\xff"  # not UTF-8
            files.append((name, raw))
    if not env and not files:
        env[REDIRECT] = "80 tcp 198.18.0.1"
    return env, files


def _legacy_located(p: Problem) -> bool:
    """The setting (env var or key) and, for a line's problem, `line N`."""
    sources = {s for pair in LEGACY_SOURCES.values() for s in pair}
    return p.source in sources and (p.path == "" or p.path.startswith("line "))


@pytest.mark.timeout(600)
def test_legacy_dialect_lines() -> None:
    def prop(inputs: tuple[dict[str, str], list[tuple[str, bytes]]], tally: Tally) -> None:
        env, files = inputs
        outcome(snapshot_of(DNS_KEY, *files), env, _legacy_located, tally)

    fuzz("fuzz: legacy EGRESS_* lines (env and keys)", 2000, 1600, prop, inputs=legacy_inputs())


# --- the process settings -------------------------------------------------------------------

SETTING_VARS = {
    "EGRESS_DRAIN_SECONDS": ["30", "0", "2.5"],
    "EGRESS_RELOAD_DEBOUNCE": ["0.3"],
    "EGRESS_POLL_SECONDS": ["10"],
    "EGRESS_THREADS": ["4"],
    "SCRAPER_TCP_PORT": ["9101", "0"],
    "EGRESS_LOG": ["relay", "socklog", "stdout", "STDOUT"],
    "EGRESS_LOG_PIPE_BYTES": ["1048576", "4096"],
    "EGRESS_LOG_BUFFER_BYTES": ["16777216"],
    "EGRESS_LOG_WARN_SECONDS": ["60", "1"],
    "EGRESS_LOG_FORMAT": ["text", "json"],
    "EGRESS_EXPORT_UNUSED_SLOTS": ["true", "0"],
}
NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "1_0", " 5 ", "0x10", "", "٣"])


@pytest.mark.timeout(300)
def test_process_settings_env() -> None:
    """Settings.from_env: a Settings, or a ConfigError naming the variable; nothing else."""

    def prop(env: dict[str, str], tally: Tally) -> None:
        try:
            got = Settings.from_env(env)
        except ConfigError as exc:
            problems = exc.problems
        else:
            assert 0 <= got.drain_seconds <= 86400
            assert 0 <= got.metrics_port <= 65535
            assert got.poll_seconds >= 0.1
            tally.counts["accepted"] += 1
            return
        assert problems
        for p in problems:
            assert p.source in SETTING_VARS, p
            assert "\n" not in str(p), p
        tally.counts["refused"] += 1

    fuzz(
        "fuzz: process settings env",
        1000,
        800,
        prop,
        env=st.fixed_dictionaries(
            {},
            optional={
                var: st.one_of(strings(valid), NUMBERS).filter(lambda v: NO_NUL not in v)
                for var, valid in SETTING_VARS.items()
            },
        ),
    )


# --- YAML's alias expansion -------------------------------------------------------------------


def _alias_bomb(levels: int) -> bytes:
    """A few hundred bytes whose aliases expand to 10**levels routes."""
    lines = ['a0: &a0 {name: x, listen: 1, destinations: ["198.18.0.1:1"]}']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + f"\nroutes: *a{levels - 1}\n").encode()


@pytest.mark.timeout(120)
def test_yaml_alias_expansion_is_refused_quickly() -> None:
    data = _alias_bomb(6)  # 10**5 routes from 300 bytes
    assert len(data) < 400
    started = time.monotonic()
    with pytest.raises(ConfigError):
        load_snapshot(snapshot_of(("routes.yaml", data)), {})
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "fields",
    [{"allow_from": [False]}, {"allow_from": [167772160]}, {"source": 5}, {"source": True}],
    ids=["allow-from-false", "allow-from-int", "source-int", "source-true"],
)
def test_numbers_are_not_addresses(fields: dict[str, Any]) -> None:
    doc = {"routes": [{"name": "a", "listen": 1, "destinations": ["198.18.0.1:1"], **fields}]}
    data = yaml.safe_dump(doc).encode()
    with pytest.raises(ConfigError):
        load_snapshot(snapshot_of(("routes.yaml", data)), {})


def test_control_character_message_is_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_snapshot(snapshot_of(("routes.yaml", b"routes:\n  - \x00\n")), {})
    (problem,) = caught.value.problems
    assert "\n" not in str(problem)
    assert problem.line == 2


# --- policy rules, hook arguments, the explain argument ------------------------
#
# These render directives test_injection's exact layout does not know (policy ACLs, Lua loads,
# set-var lines), so an accepted case is held to the vocabulary of reference renderings of the
# same route shapes: the same section headers, no (section, directive) pair the references never
# use, and Lua loaded only from the run dir's content-addressed files.

DNS_KEY = ("dns.yaml", yaml.safe_dump({"resolvers": {"nameservers": [NAMESERVER]}}).encode())
LUA_LOAD = re.compile(r"^    lua-load(-per-thread)? /run/haproxy-egress/lua/[0-9a-f]{64}\.lua$")


def _vocabulary(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    headers: set[str] = set()
    words: set[tuple[str, str]] = set()
    kind = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            headers.add(line)
            kind = line.split()[0]
            continue
        words.add((kind, line.split()[0]))
    return headers, words


def _reference(
    *snapshots: tuple[Snapshot, dict[str, str]],
) -> tuple[set[str], set[tuple[str, str]]]:
    headers: set[str] = set()
    words: set[tuple[str, str]] = set()
    for snapshot, env in snapshots:
        h, w = _vocabulary(render(load_snapshot(snapshot, env), OPTIONS))
        headers |= h
        words |= w
    return headers, words


def extended_outcome(
    snapshot: Snapshot,
    env: dict[str, str],
    located: Callable[[Problem], bool],
    reference: tuple[set[str], set[tuple[str, str]]],
    tally: Tally,
) -> None:
    """As `outcome`, with the reference-vocabulary check for policy and hook renderings."""
    try:
        # Hooks are resolved while rendering, so render's ConfigError is part of the compile.
        config = load_snapshot(snapshot, env)
        text = render(config, OPTIONS)
    except ConfigError as exc:
        problems = exc.problems
    else:
        _accepted_extended(snapshot, config, text, reference, tally)
        return
    assert problems
    for p in problems:
        assert p.source, p
        assert p.message, p
        shown = str(p)
        assert "\n" not in shown, repr(shown)
        assert "\r" not in shown, repr(shown)
        assert located(p), p
    tally.counts["refused"] += 1


def _accepted_extended(
    snapshot: Snapshot,
    config: Config,
    text: str,
    reference: tuple[set[str], set[tuple[str, str]]],
    tally: Tally,
) -> None:
    assert "\r" not in text
    assert "\x00" not in text
    headers, words = _vocabulary(text)
    assert headers <= reference[0], headers - reference[0]
    assert words <= reference[1], words - reference[1]
    for line in text.splitlines():
        if "lua-load" in line:
            assert LUA_LOAD.match(line), line
    with tempfile.TemporaryDirectory(prefix="egress-fuzz-run.") as run:
        # haproxy -c opens the Lua files the config loads: stage them where it looks, as
        # tests/netns_policy.py does (pipeline.compile_snapshot does not stage connect.lua yet).
        hook_set = hooks.resolve(config, snapshot.files)
        if any(r.mode in POLICY_MODES for r in config.routes):
            hook_set = hook_set.including(hooks.shipped_lua("connect"))
        staging.stage(hook_set, RunDir(Path(run)).lua)
        staging.write_maps(RunDir(Path(run)).maps, render_maps(config))  # the policy lists
        _haproxy_accepts(text, tally, run_dir=Path(run))


POLICY_KEY = "EGRESS_HTTP_PROXY_DESTINATION"


NAMES = st.one_of(
    st.sampled_from(["api.github.test", "example.test", "a.b.c.test", "x", "EXAMPLE.TEST"]),
    st.from_regex(r"\A[a-z0-9-]{1,8}(\.[a-z0-9-]{1,8}){1,3}\Z"),
)
NETS = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"{a}/{int(str(a).split('.')[0]) % 33}"),
    st.sampled_from(["10.0.0.0/8", "2001:db8::/32", "[2001:db8::/32]", "169.254.169.254", "::1"]),
)
RULE_PORTS = st.sampled_from(["", "", ":443", ":22,443", ":0", ":65536", ":", ":x"])


@st.composite
def policy_rule(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["host", "domain", "squid-domain", "net", "any"]))
    body = {
        "host": draw(NAMES),
        "domain": "*." + draw(NAMES),
        "squid-domain": "." + draw(NAMES),
        "net": draw(NETS),
        "any": "*",
    }[kind]
    deny = "!" if draw(st.integers(0, 3)) == 0 else ""
    return deny + body + draw(RULE_PORTS)


POLICY_TEXT = legacy_value(policy_rule())
POLICY_BASE = "api.github.test\n*.example.test:443\n!10.0.0.0/8\n198.18.0.0/15\n*\n"


def _policy_located(p: Problem) -> bool:
    return POLICY_KEY in p.source or (p.source == "policy.yaml" and bool(p.path or p.line))


def _policy_yaml(rules: list[str]) -> bytes:
    route = {"name": "pol", "listen": 18080, "mode": "proxy", "policy": rules}
    return yaml.safe_dump({"routes": [route]}, allow_unicode=True).encode()


@pytest.mark.timeout(600)
def test_policy_lines() -> None:
    reference = _reference(
        (snapshot_of(DNS_KEY), {POLICY_KEY: POLICY_BASE}),
        (snapshot_of(DNS_KEY, ("policy.yaml", _policy_yaml(POLICY_BASE.split()))), {}),
        (snapshot_of(DNS_KEY, ("policy.yaml", _policy_yaml(["a.test"]))), {}),
    )

    def prop(text: str, where: str, tally: Tally) -> None:
        if where == "env":
            snap, env = snapshot_of(DNS_KEY), {POLICY_KEY: text.replace(NO_NUL, "")}
        elif where == "file":
            snap, env = snapshot_of(DNS_KEY, (POLICY_KEY, text.encode())), {}
        else:
            snap, env = snapshot_of(DNS_KEY, ("policy.yaml", _policy_yaml(text.split("\n")))), {}
        extended_outcome(snap, env, _policy_located, reference, tally)

    fuzz(
        "fuzz: policy rules (env, key, YAML policy)",
        1200,
        900,
        prop,
        text=st.one_of(POLICY_TEXT, spliced([POLICY_BASE]), TEXT),
        where=st.sampled_from(["env", "file", "yaml"]),
    )


def _hook_doc(hooks_value: object) -> bytes:
    route = {
        "name": "hooked",
        "listen": 18090,
        "mode": "http",
        "destinations": ["198.18.0.1:80"],
        "hooks": hooks_value,
    }
    return yaml.safe_dump({"routes": [route]}, allow_unicode=True).encode()


HOOK_ENTRY = st.fixed_dictionaries(
    {"use": strings(["audit", "deny_page", "proxy_auth"])},
    optional={
        "at": strings(["tcp-request", "http-request", "http-response", "service"]),
        "args": st.dictionaries(
            strings(["contact", "secret_dir", "x"]),
            st.one_of(strings(["ops@example.test", "/var/run/secrets/parent"]), SCALAR),
            max_size=3,
        ),
    },
)


@pytest.mark.timeout(600)
def test_hook_arguments() -> None:
    references = [
        [{"use": "audit"}],
        [{"use": "deny_page", "args": {"contact": "ops@example.test"}}],
        [{"use": "proxy_auth", "args": {"secret_dir": "/var/run/secrets/parent"}}],
        [
            {"use": "audit"},
            {"use": "deny_page", "args": {"contact": "a"}},
            {"use": "proxy_auth", "args": {"secret_dir": "/s"}},
        ],
    ]
    reference = _reference(*((snapshot_of(("hooks.yaml", _hook_doc(r))), {}) for r in references))

    def prop(entries: list[object], tally: Tally) -> None:
        extended_outcome(
            snapshot_of(("hooks.yaml", _hook_doc(entries))),
            {},
            lambda p: p.source == "hooks.yaml" and bool(p.path or p.line),
            reference,
            tally,
        )

    fuzz(
        "fuzz: Lua hook names, phases and arguments",
        1000,
        800,
        prop,
        entries=st.lists(st.one_of(HOOK_ENTRY, VALUE), min_size=1, max_size=3),
    )


@pytest.mark.timeout(300)
def test_explain_argument() -> None:
    """`explain DEST`: a verdict (exit 0/1) or a ValueError the CLI turns into exit 2."""
    config = load_snapshot(snapshot_of(DNS_KEY), {POLICY_KEY: POLICY_BASE})
    valid = ["https://api.github.test", "http://[2001:db8::1]:8080/x", "198.18.0.5:22", "a.test"]

    def prop(dest: str, tally: Tally) -> None:
        try:
            verdict = explain(config, dest, addresses=None, resolve=None)
        except ValueError as exc:
            message = str(exc)
        else:
            assert all("\n" not in line for line in verdict.lines())
            tally.counts["accepted"] += 1
            return
        assert message
        assert "\n" not in message or "\n" in dest  # a quoted argument, as given
        tally.counts["refused"] += 1

    fuzz(
        "fuzz: explain argument",
        1500,
        1200,
        prop,
        dest=st.one_of(strings(valid), st.sampled_from(PAYLOADS)),
    )
