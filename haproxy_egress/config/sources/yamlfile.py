"""The YAML dialect: one ConfigMap key holding `version`, `defaults`, `resolvers`, `routes`."""

from __future__ import annotations

from typing import Any

import yaml

from haproxy_egress.config.model import format_loc
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.errors import Problem

TOP_LEVEL = ("version", "defaults", "resolvers", "routes")


def _line_index(node: yaml.Node, path: tuple[int | str, ...], out: dict[str, int]) -> None:
    """Record the 1-based line of every mapping value and sequence item, by YAML path."""
    out[format_loc(path)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                _line_index(value, (*path, str(key.value)), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), out)


def _duplicate_keys(node: yaml.Node, path: tuple[int | str, ...], name: str) -> list[Problem]:
    """PyYAML keeps the last of duplicate keys silently; a ConfigMap edit deserves an error."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    where = format_loc((*path, str(key.value)))
                    problems.append(
                        Problem(name, where, "key appears twice", key.start_mark.line + 1)
                    )
                seen.add(key.value)
                problems += _duplicate_keys(value, (*path, str(key.value)), name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(item, (*path, i), name)
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


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
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


def read_yaml(name: str, text: bytes) -> Fragment:
    """Parse one YAML key into a fragment; syntax and shape errors become located problems."""
    frag = Fragment(source=name)
    try:
        node, data = _parse(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        frag.problems.append(Problem(name, "", f"not UTF-8 text (byte {exc.start})"))
        return frag
    except ValueProblem as exc:
        frag.problems.append(Problem(name, "", str(exc), exc.line))
        return frag
    except yaml.reader.ReaderError as exc:
        # A control character: its str() spans two lines and has no `problem`; say it in one.
        at = text.decode("utf-8", "replace")[: exc.position].count("\n") + 1
        char = f"0x{exc.character:02x}" if isinstance(exc.character, int) else "?"
        reason = f"YAML syntax error: {exc.reason} (character {char})"
        frag.problems.append(Problem(name, "", reason, at))
        return frag
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        frag.problems.append(Problem(name, "", f"YAML syntax error: {reason}", line))
        return frag
    if data is None:
        return frag  # an empty key is allowed: it simply contributes nothing
    if not isinstance(data, dict):
        frag.problems.append(Problem(name, "", "top level must be a mapping (version, routes...)"))
        return frag
    lines: dict[str, int] = {}
    assert node is not None
    _line_index(node, (), lines)
    frag.lines = lines
    frag.problems += _duplicate_keys(node, (), name)
    for key in data:
        if key not in TOP_LEVEL:
            where = format_loc((str(key),))
            frag.problems.append(
                Problem(
                    name,
                    where,
                    f"unknown top-level key (expected one of {', '.join(TOP_LEVEL)})",
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
    for key in ("defaults", "resolvers"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            frag.problems.append(Problem(name, key, "must be a mapping", lines.get(key)))
    if isinstance(data.get("defaults"), dict):
        frag.defaults = data["defaults"]
        frag.defaults_lines = lines
    if isinstance(data.get("resolvers"), dict):
        frag.resolvers = data["resolvers"]
    routes = data.get("routes")
    if routes is None:
        return frag
    if not isinstance(routes, list):
        frag.problems.append(Problem(name, "routes", "must be a list", lines.get("routes")))
        return frag
    for i, route in enumerate(routes):
        path = f"routes[{i}]"
        if not isinstance(route, dict):
            frag.problems.append(Problem(name, path, "must be a mapping", lines.get(path)))
            continue
        frag.routes.append(RawRoute(route, name, path, lines.get(path), lines))
    return frag
