"""The retired Red Hat HTTP proxy dialect: `EGRESS_HTTP_PROXY_DESTINATION` → one proxy route.

The old pod ran squid on port 8080 with one allow/deny rule per line (docs/policy.md). The
value comes from the environment variable or from a ConfigMap key of the same name (so a
mounted ConfigMap hot-reloads); both at once is refused, as for the other legacy dialects. It
becomes the route `http-proxy`, listening on 8080, in mode `proxy`. Lines are read by the
shared legacy line reader (comments, CRLF, tabs, line numbers); each bad line is reported
with its number, in the original's words ("Bad destination '...'").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from haproxy_egress.config import policy
from haproxy_egress.config.sources.legacy import Line, decode, file_source, read_lines
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.errors import Problem

KEY = "EGRESS_HTTP_PROXY_DESTINATION"
ROUTE_NAME = "http-proxy"
LISTEN_PORT = 8080  # the squid mode's port: clients keep HTTPS_PROXY=http://egress:8080
ROUTE_PATH = "route"


@dataclass(frozen=True)
class ParsedPolicy:
    """The rule lines that parsed (with their numbers) and one problem per refused line."""

    rules: tuple[tuple[Line, policy.Rule], ...]
    problems: tuple[Problem, ...]


def parse_policy(text: str, source: str = KEY) -> ParsedPolicy:
    """Rule lines into rules; a `*` before the last rule is refused as the original did."""
    rules: list[tuple[Line, policy.Rule]] = []
    problems: list[Problem] = []
    wildcard: Line | None = None
    for line in read_lines(text):
        try:
            rule = policy.parse_rule(line.text)
        except ValueError as exc:
            problems.append(Problem(source, line.where, str(exc)))
            continue
        if wildcard is not None:
            problems.append(
                Problem(source, line.where, f"{policy.WILDCARD_LAST} (line {wildcard.number})")
            )
            continue
        if rule.kind == "any":
            wildcard = line
        rules.append((line, rule))
    return ParsedPolicy(tuple(rules), tuple(problems))


def read_input(
    files: Mapping[str, bytes], env: Mapping[str, str]
) -> tuple[str, str] | Problem | None:
    """(source, text) from the ConfigMap key or the env var, a problem, or None when unset."""
    in_env = env.get(KEY, "").strip() != ""
    data = files.get(KEY)
    if data is not None and in_env:
        return Problem(
            file_source(KEY), "", f"{KEY} is also set as an environment variable: keep one"
        )
    if data is not None:
        text, problems = decode(data, file_source(KEY))
        return problems[0] if text is None else (file_source(KEY), text)
    if in_env:
        return KEY, env[KEY]
    return None


def read_http_proxy(files: Mapping[str, bytes], env: Mapping[str, str]) -> list[Fragment]:
    """The proxy route from EGRESS_HTTP_PROXY_DESTINATION, when it is set anywhere."""
    found = read_input(files, env)
    if found is None:
        return []
    if isinstance(found, Problem):
        return [Fragment(source=found.source, problems=[found])]
    source, text = found
    parsed = parse_policy(text, source)
    frag = Fragment(source=source, problems=list(parsed.problems))
    if not parsed.rules and not parsed.problems:
        frag.problems.append(Problem(source, "", f"No {KEY} specified (no rule lines)"))
    if parsed.rules and not parsed.problems:
        data = {
            "name": ROUTE_NAME,
            "listen": LISTEN_PORT,
            "mode": "proxy",
            "policy": [rule.text for _, rule in parsed.rules],
        }
        lines = {
            f"{ROUTE_PATH}.policy[{i}]": line.number for i, (line, _) in enumerate(parsed.rules)
        }
        first = parsed.rules[0][0].number
        frag.routes.append(RawRoute(data, source, ROUTE_PATH, first, lines))
    return [frag]


PORT_HINT = (
    f"; the squid-mode route {ROUTE_NAME!r} is fixed at :{LISTEN_PORT}: convert to YAML to choose"
    " the port (`haproxy-egress migrate --proxy-port PORT`, docs/migration.md)"
)


def with_port_hint(problem: Problem) -> Problem:
    """A listen clash that involves this dialect's fixed port, with the way out appended."""
    about_us = problem.source in (KEY, file_source(KEY)) or f"route {ROUTE_NAME!r}" in (
        problem.message
    )
    if about_us and problem.path.endswith(".listen") and "already used" in problem.message:
        return dataclasses.replace(problem, message=problem.message + PORT_HINT)
    return problem
