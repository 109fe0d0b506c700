"""The YAML dialect: one ConfigMap key holding `version`, `defaults`, `resolvers`, `logging`,
`routes`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

import yaml

from haproxy_egress.config.problems import closest, format_loc
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.errors import Problem

TOP_LEVEL = ("version", "defaults", "resolvers", "logging", "routes")


# Both walks below keep an explicit stack: libyaml parses nesting ~1,000 levels deep, which
# recursion would not survive (a RecursionError out of the loader instead of a problem). They
# visit nodes in document order, as the recursive walks they replace did.


def _line_index(node: yaml.Node, path: tuple[int | str, ...], out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping value and sequence item, by YAML path."""
    stack: list[tuple[yaml.Node, tuple[int | str, ...]]] = [(node, path)]
    while stack:
        node, path = stack.pop()
        out[format_loc(path)] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            children = [
                (value, (*path, str(key.value)))
                for key, value in node.value
                if isinstance(key, yaml.ScalarNode)
            ]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, (*path, i)) for i, item in enumerate(node.value)]
        else:
            continue
        stack += reversed(children)


def _duplicate_keys(node: yaml.Node, path: tuple[int | str, ...], name: str) -> list[Problem]:
    """PyYAML keeps the last of duplicate keys silently; a ConfigMap edit deserves an error."""
    problems: list[Problem] = []
    # A node to walk, or a problem to report once the walk reaches its place in the document.
    stack: list[tuple[yaml.Node, tuple[int | str, ...]] | Problem] = [(node, path)]
    while stack:
        item = stack.pop()
        if isinstance(item, Problem):
            problems.append(item)
            continue
        node, path = item
        todo: list[tuple[yaml.Node, tuple[int | str, ...]] | Problem] = []
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        where = format_loc((*path, str(key.value)))
                        todo.append(
                            Problem(name, where, "key appears twice", key.start_mark.line + 1)
                        )
                    seen.add(key.value)
                    todo.append((value, (*path, str(key.value))))
        elif isinstance(node, yaml.SequenceNode):
            todo = [(child, (*path, i)) for i, child in enumerate(node.value)]
        stack += reversed(todo)
    return problems


# libyaml when PyYAML has it: parsing is nearly all of the load time of a big ConfigMap.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# Aliases let a few hundred bytes expand into millions of nodes ("billion laughs"); a ConfigMap
# holds at most 1 MiB, and 200,000 expanded nodes is far above any real router's.
MAX_NODES = 200_000


class ValueProblem(Exception):
    """A YAML document that parses but cannot be used (too large, unconstructible value)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def _check_size(root: yaml.Node) -> None:
    """Count nodes as construction would expand them (aliases included), up to MAX_NODES."""
    count = 0
    stack: list[yaml.Node] = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ValueProblem(
                f"more than {MAX_NODES} values once aliases are expanded (an alias bomb?)",
                node.start_mark.line + 1,
            )
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value


def _parse_full(text: str) -> tuple[yaml.Node | None, Any]:
    """Parse once: the node tree (for line numbers) and the data constructed from it."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_size(node)
        try:
            return node, loader.construct_document(node)
        except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            # PyYAML's constructors raise these for values such as a broken !!timestamp.
            raise ValueProblem(
                f"a value cannot be read ({type(exc).__name__}); check explicit tags (!!...)",
                node.start_mark.line + 1,
            ) from None
    finally:
        loader.dispose()


_STR, _SEQ, _MAP = (f"tag:yaml.org,2002:{t}" for t in ("str", "seq", "map"))
# The scalar tags the fast path constructs itself, with SafeLoader's own functions (so `0755`,
# `yes`, `1_000` mean what they always meant); any other tag is left to the full path.
_SCALARS = {
    f"tag:yaml.org,2002:{t}": yaml.constructor.SafeConstructor.yaml_constructors[
        f"tag:yaml.org,2002:{t}"
    ]
    for t in ("null", "bool", "int", "float")
}
# Text that sends a document down the full path: an anchor (only aliases can expand into an
# alias bomb, and an alias needs an anchor), and the key names format_loc leaves out of a YAML
# path, with which two nodes could share a path and the line index would keep the later one.
_FULL_PATH_MARKERS = ("&", "function-", "tagged-union")
# Deeper nesting (no router config comes near it) goes the full path too: this walk recurses,
# and the line index built later for a problem must not hit the recursion limit either.
_MAX_FAST_DEPTH = 100


class _Unusual(Exception):
    """Something the fast path leaves to the full one (which also words any error)."""


class _Builder:
    """Nodes → Python data, as SafeLoader constructs them, for the documents ConfigMaps hold:
    strings, numbers, booleans, nulls, lists and mappings with unique scalar keys.

    PyYAML's generic constructor (generators, a memo per node, then three more walks for
    lines, duplicate keys and the alias count) was half of reading 10,000 routes; this is one
    walk. Whatever it does not handle raises _Unusual, and the full path takes the document.
    """

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._count = 0

    def build(self, node: yaml.Node, depth: int = 0) -> Any:
        """The data for `node`; raises _Unusual (or the constructor's error) otherwise."""
        self._count += 1
        if self._count > MAX_NODES or depth > _MAX_FAST_DEPTH:
            raise _Unusual  # the full path reports it, at the line it reports it at
        tag = node.tag
        kind = type(node)
        if kind is yaml.ScalarNode:
            if tag == _STR:
                return node.value
            construct = _SCALARS.get(tag)
            if construct is None:
                raise _Unusual
            return construct(self._loader, node)
        if kind is yaml.SequenceNode and tag == _SEQ:
            return [self.build(item, depth + 1) for item in node.value]
        if kind is yaml.MappingNode and tag == _MAP:
            out: dict[Any, Any] = {}
            raw: set[str] = set()
            for key, value in node.value:
                if type(key) is not yaml.ScalarNode:
                    raise _Unusual  # a list or mapping as a key: PyYAML's own error
                raw.add(key.value)
                out[self.build(key, depth + 1)] = self.build(value, depth + 1)
            if len(raw) != len(node.value) or len(out) != len(node.value):
                raise _Unusual  # duplicate keys: the full path names each one
            return out
        raise _Unusual


def _parse_fast(text: str) -> tuple[yaml.Node | None, Any] | None:
    """Parse with the one-walk builder; None when the document needs the full path."""
    if any(marker in text for marker in _FULL_PATH_MARKERS):
        return None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()  # syntax errors: the same parser as the full path
        if node is None:
            return None, None
        try:
            return node, _Builder(loader).build(node)
        except Exception:  # _Unusual, or a bad value: the full path words its error
            return None
    finally:
        loader.dispose()


class _LazyLines(Mapping[str, int]):
    """YAML path → line, indexed from the text only when a problem asks for a line: a valid
    document (the common case by far) never needs one. The lines outside `routes` (a few)
    are indexed at once, from the nodes the parse made: what a kept key still needs once
    its routes are validated, without parsing it again (36 ms for 1,000 routes)."""

    def __init__(self, text: str, outside_routes: dict[str, int]) -> None:
        self._text = text
        self._lines: dict[str, int] | None = None
        self.outside_routes = outside_routes

    def _index(self) -> dict[str, int]:
        if self._lines is None:
            loader = _Loader(self._text)
            try:
                node = loader.get_single_node()  # it parsed a moment ago: it parses again
            finally:
                loader.dispose()
            lines: dict[str, int] = {}
            if node is not None:
                _line_index(node, (), lines)
            self._lines = lines
        return self._lines

    def __getitem__(self, path: str) -> int:
        return self._index()[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index())

    def __len__(self) -> int:
        return len(self._index())


def _lines_outside_routes(root: yaml.Node) -> dict[str, int]:
    """`_line_index` of the document without what lies under a top-level key `routes...`."""
    out = {format_loc(()): root.start_mark.line + 1}
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if isinstance(key, yaml.ScalarNode) and not str(key.value).startswith("routes"):
                _line_index(value, (str(key.value),), out)
    return out


def lines_outside_routes(lines: Mapping[str, int]) -> dict[str, int]:
    """The lines of a fragment that do not belong to its routes (a key whose routes are
    validated keeps only these)."""
    if isinstance(lines, _LazyLines):
        return dict(lines.outside_routes)
    return {k: v for k, v in lines.items() if not k.startswith("routes")}


@cache
def _route_path(index: int) -> str:
    """`routes[index]`, one string for every key: the load cache keeps each route's path for
    as long as the route lives (10,000 routes in ten keys repeat 1,000 paths ten times).
    Bounded by the most routes one key holds."""
    return f"routes[{index}]"


def _route_lines(root: yaml.Node) -> list[int]:
    """The line of each item of the top-level `routes` list (what `routes[i]` indexes to)."""
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "routes" and isinstance(value, yaml.SequenceNode):
                return [item.start_mark.line + 1 for item in value.value]
    return []


def _parse(name: str, text: bytes, fast: bool) -> tuple[str, bool, yaml.Node | None, Any] | Problem:
    """The decoded text, whether the one-walk builder built it, the node tree and the data;
    or the one problem that stops the parse."""
    try:
        decoded = text.decode("utf-8")
        quick = _parse_fast(decoded) if fast else None
        node, data = quick if quick is not None else _parse_full(decoded)
    except UnicodeDecodeError as exc:
        return Problem(name, "", f"not UTF-8 text (byte {exc.start})")
    except ValueProblem as exc:
        return Problem(name, "", str(exc), exc.line)
    except yaml.reader.ReaderError as exc:
        # A control character: its str() spans two lines and has no `problem`; say it in one.
        at = text.decode("utf-8", "replace")[: exc.position].count("\n") + 1
        char = f"0x{exc.character:02x}" if isinstance(exc.character, int) else "?"
        return Problem(name, "", f"YAML syntax error: {exc.reason} (character {char})", at)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return Problem(name, "", f"YAML syntax error: {reason}", line)
    return decoded, quick is not None, node, data


def load_located(name: str, text: bytes) -> tuple[Any, dict[str, int], list[Problem]]:
    """Any YAML file read by the ConfigMap's rules: its data, the line of every YAML path, and
    every problem that stops it (not UTF-8, syntax, alias bomb, a key twice), located."""
    parsed = _parse(name, text, fast=False)
    if isinstance(parsed, Problem):
        return None, {}, [parsed]
    _, _, node, data = parsed
    lines: dict[str, int] = {}
    if node is None:
        return None, lines, []
    _line_index(node, (), lines)
    return data, lines, _duplicate_keys(node, (), name)


def read_yaml(name: str, text: bytes) -> Fragment:
    """Parse one YAML key into a fragment; syntax and shape errors become located problems."""
    frag = Fragment(source=name)
    parsed = _parse(name, text, fast=True)
    if isinstance(parsed, Problem):
        frag.problems.append(parsed)
        return frag
    decoded, fast, node, data = parsed
    if data is None:
        return frag  # an empty key is allowed: it simply contributes nothing
    if not isinstance(data, dict):
        frag.problems.append(Problem(name, "", "top level must be a mapping (version, routes...)"))
        return frag
    assert node is not None
    lines: Mapping[str, int]
    if fast:
        # Built in one walk: no duplicate keys (those go the full path); lines on demand.
        lines = _LazyLines(decoded, _lines_outside_routes(node))
        route_lines = _route_lines(node)
    else:
        full: dict[str, int] = {}
        _line_index(node, (), full)
        lines = full
        frag.problems += _duplicate_keys(node, (), name)
    frag.lines = lines
    for key in data:
        if key not in TOP_LEVEL:
            where = format_loc((str(key),))
            frag.problems.append(
                Problem(
                    name,
                    where,
                    f"unknown top-level key ({closest(str(key), TOP_LEVEL)}expected one of"
                    f" {', '.join(TOP_LEVEL)})",
                    lines.get(where),
                )
            )
    if data.get("version", 1) != 1:
        frag.problems.append(
            Problem(
                name,
                "version",
                f"unsupported version {data['version']!r} (only 1)",
                lines.get("version"),
            )
        )
    for key in ("defaults", "resolvers", "logging"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            frag.problems.append(Problem(name, key, "must be a mapping", lines.get(key)))
    if isinstance(data.get("defaults"), dict):
        frag.defaults = data["defaults"]
        frag.defaults_lines = lines
    if isinstance(data.get("resolvers"), dict):
        frag.resolvers = data["resolvers"]
    if isinstance(data.get("logging"), dict):
        frag.logging = data["logging"]
    routes = data.get("routes")
    if routes is None:
        return frag
    if not isinstance(routes, list):
        frag.problems.append(Problem(name, "routes", "must be a list", lines.get("routes")))
        return frag
    for i, route in enumerate(routes):
        path = _route_path(i)
        if not isinstance(route, dict):
            frag.problems.append(Problem(name, path, "must be a mapping", lines.get(path)))
            continue
        line = route_lines[i] if fast else lines.get(path)
        frag.routes.append(RawRoute(route, name, path, line, lines))
    return frag
