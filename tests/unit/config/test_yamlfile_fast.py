"""The one-walk YAML reader must give what the full path (PyYAML's constructor, then the line,
duplicate-key and alias walks) gives: the same data, the same problems, the same lines."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from haproxy_egress.config.sources import load_snapshot, yamlfile
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.sources.raw import Fragment
from haproxy_egress.errors import ConfigError

# Documents the fast path reads itself, and ones it must hand to the full path.
DOCUMENTS = {
    "valid": """\
        version: 1
        defaults: {check: false, allow_from: ["10.0.0.0/8"]}
        routes:
          - {name: a, listen: 8001, destinations: ["198.51.100.1:443"]}
          - name: b
            listen: "127.0.0.1:8002"
            mode: http
            destinations: ["api.example.com:443", {host: 198.51.100.2, port: 443}]
        """,
    "yaml 1.1 scalars": """\
        defaults: {check: {enabled: yes, rise: 0x2, fall: 0o3, interval: 1:30}}
        routes:
          - {name: a, listen: 0755, destinations: ["198.51.100.1:443"], log: off}
          - {name: b, listen: 1_000, destinations: ["198.51.100.1:443"], maxconn: ~}
          - {name: c, listen: 8003, destinations: ["198.51.100.1:443"], maxconn: 1.5e3}
          - {name: d, listen: "8004", destinations: ["198.51.100.1:443"], check: Off}
        """,
    "field errors": """\
        routes:
          - name: a
            listen: 70000
            destinations: []
          - name: Bad Name
            listen: 8002
            destinations: ["198.51.100.1:99999"]
            allow_from: [not-a-network]
        """,
    "cross-route errors": """\
        routes:
          - {name: a, listen: 8001, destinations: ["198.51.100.1:443"]}
          - {name: a, listen: 8001, destinations: ["198.51.100.1:443"]}
        """,
    "top level": """\
        version: 2
        defaults: [1]
        resolvers: {timeout: 1}
        rutes: []
        routes: {name: a}
        """,
    "route not a mapping": "routes:\n  - just-a-string\n  - [1, 2]\n",
    "duplicate keys": """\
        routes:
          - name: a
            listen: 8001
            listen: 8002
            destinations: ["198.51.100.1:443"]
          - {name: b, listen: 8003, "listen": 8004, destinations: ["198.51.100.1:443"]}
        """,
    "keys equal once constructed": """\
        routes:
          - {name: a, listen: 8001, destinations: ["198.51.100.1:443"], check: {true: 1, True: 2}}
        """,
    "raw-equal keys of different types": """\
        routes:
          - {name: a, listen: 8001, destinations: ["198.51.100.1:443"], check: {1: x, "1": y}}
        """,
    "anchors and merge keys": """\
        base: &base {listen: 8001, destinations: ["198.51.100.1:443"]}
        routes:
          - {<<: *base, name: a}
        """,
    "merge without an anchor": """\
        routes:
          - {<<: {listen: 8001, destinations: ["198.51.100.1:443"]}, name: a}
        """,
    "explicit tags": """\
        routes:
          - {name: !!str a, listen: !!int "8001", destinations: ["198.51.100.1:443"]}
          - {name: b, listen: 8002, destinations: ["198.51.100.1:443"], source: !!binary aGk=}
          - {name: c, listen: 8003, destinations: ["198.51.100.1:443"], maxconn: 2001-12-14}
        """,
    "broken explicit value": """\
        routes:
          - {name: a, listen: !!int "eighty", destinations: ["198.51.100.1:443"]}
        """,
    "unknown tag": "routes:\n  - !custom {name: a}\n",
    "unhashable key": "routes:\n  - {[1]: a}\n",
    "skipped path segments": """\
        function-x: {routes: [1]}
        tagged-union: 1
        routes:
          - {name: a, listen: 8001, destinations: ["198.51.100.1:443"]}
        """,
    "syntax error": "routes:\n  - {name: a\n",
    "two documents": "routes: []\n---\nroutes: []\n",
    "empty": "",
    "only a comment": "# nothing yet\n",
    "a list": "- a\n- b\n",
}


def _snapshot(text: str) -> Snapshot:
    return Snapshot(Path("/cfg"), (("routes.yaml", textwrap.dedent(text).encode()),))


def _outcome(text: str) -> object:
    """The loaded config's routes, or the exact problem lines."""
    try:
        return load_snapshot(_snapshot(text), {}).routes
    except ConfigError as exc:
        return [str(p) for p in exc.problems]


def _full_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlfile, "_parse_fast", lambda text: None)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_fast_path_loads_and_locates_like_the_full_path(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = DOCUMENTS[name]
    fast = _outcome(text)
    _full_path_only(monkeypatch)
    assert fast == _outcome(text)


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_fragment_is_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = textwrap.dedent(DOCUMENTS[name]).encode()

    def shape(frag: Fragment) -> object:
        routes = [(r.data, r.path, r.line, dict(r.lines)) for r in frag.routes]
        return (frag.defaults, frag.resolvers, dict(frag.lines), routes, frag.problems)

    fast = shape(yamlfile.read_yaml("routes.yaml", data))
    _full_path_only(monkeypatch)
    assert fast == shape(yamlfile.read_yaml("routes.yaml", data))


@pytest.mark.parametrize(
    ("name", "fast"),
    [
        ("valid", True),
        ("yaml 1.1 scalars", True),
        ("field errors", True),
        ("duplicate keys", False),
        ("keys equal once constructed", False),
        ("anchors and merge keys", False),
        ("merge without an anchor", False),
        ("explicit tags", False),
        ("skipped path segments", False),
    ],
)
def test_which_documents_take_the_fast_path(name: str, fast: bool) -> None:
    """Not a behaviour, but the point of it: ordinary documents must not pay for the rest."""
    text = textwrap.dedent(DOCUMENTS[name])
    assert (yamlfile._parse_fast(text) is not None) == fast


def test_lines_are_read_only_when_a_problem_needs_one() -> None:
    frag = yamlfile.read_yaml("routes.yaml", textwrap.dedent(DOCUMENTS["valid"]).encode())
    lines = frag.lines
    assert isinstance(lines, yamlfile._LazyLines)
    assert lines._lines is None
    assert [r.line for r in frag.routes] == [4, 5]
    assert lines.get("routes[1].mode") == 7
    assert lines._lines is not None


@pytest.mark.parametrize("name", DOCUMENTS)
def test_the_lines_outside_routes_are_known_without_parsing_again(name: str) -> None:
    """What a kept key holds once its routes are validated: the same lines as the full index
    without the routes', found without indexing the text (the full index parsed it again)."""
    frag = yamlfile.read_yaml("routes.yaml", textwrap.dedent(DOCUMENTS[name]).encode())
    outside = yamlfile.lines_outside_routes(frag.lines)
    if isinstance(frag.lines, yamlfile._LazyLines) and not frag.problems:
        assert frag.lines._lines is None  # not indexed (a problem's line indexes it)
    assert outside == {k: v for k, v in frag.lines.items() if not k.startswith("routes")}


def test_too_many_values_is_refused_at_the_same_line_without_anchors() -> None:
    text = "routes:\n" + "".join(f"  - {i}\n" for i in range(yamlfile.MAX_NODES + 1))
    assert yamlfile._parse_fast(text) is None  # counted, then handed over to say where
    (problem,) = yamlfile.read_yaml("routes.yaml", text.encode()).problems
    assert "more than 200000 values" in problem.message


# Plain scalars of every shape YAML 1.1 resolves specially, as keys and as values.
_SCALAR = st.one_of(
    st.sampled_from(
        [
            *("yes", "No", "ON", "off", "y", "~", "null", "Null", "", "0755", "0o17", "0x1F"),
            *("1:30", "190:20:30.15", "1_000", "+12", "-.inf", ".NaN", "1e3", "2001-12-14"),
            *("<<", "="),
        ]
    ),
    st.text(alphabet="0123456789abcdefxoXO+-._:eE", max_size=8),
)


@given(key=_SCALAR, value=_SCALAR)
def test_scalars_construct_as_safe_load_does(key: str, value: str) -> None:
    text = f"k: {value}\n{key}: v\n" if key else f"k: {value}\n"
    try:
        expected = yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError:
        return  # not a document of its own; the parser is the same one either way
    got = yamlfile._parse_fast(text)
    if got is not None:
        assert repr(got[1]) == repr(expected)  # repr: a NaN equals nothing, itself included


@pytest.mark.parametrize("depth", [50, 101, 400, 990, 1200])
@pytest.mark.parametrize("shape", ["seq", "map"])
def test_deep_nesting_reads_as_the_full_path_reads_it(
    depth: int, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = "[" * depth + "]" * depth if shape == "seq" else "{a: " * depth + "1" + "}" * depth
    text = f"routes:\n  - {{name: a, listen: 1, destinations: ['1.2.3.4:5'], x: {inner}}}\n"
    if depth < 500:  # deeper still, libyaml itself refuses the document in either path
        assert (yamlfile._parse_fast(text) is not None) == (depth == 50)
    fast = _outcome(text)
    _full_path_only(monkeypatch)
    assert fast == _outcome(text)
