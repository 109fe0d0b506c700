"""`haproxy-egress migrate`: legacy EGRESS_* settings → the equivalent YAML ConfigMap text.

Pure: takes the environment and the ConfigMap keys as data and returns text, so the CLI only
prints it. Lines that cannot be carried over (udp/sctp, the all-ports fallback, malformed lines)
become comments next to the routes, so nothing is dropped silently; the result is checked by the
same loader the router uses, and any problem left is written into the text as well.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from haproxy_egress.config.sources import build_config
from haproxy_egress.config.sources.configdir import KEY_NAME
from haproxy_egress.config.sources.http_proxy import KEY, parse_policy, read_input
from haproxy_egress.config.sources.http_proxy import LISTEN_PORT as HTTP_PROXY_PORT
from haproxy_egress.config.sources.http_proxy import ROUTE_NAME as HTTP_PROXY_ROUTE
from haproxy_egress.config.sources.legacy import (
    DNS_PROXY,
    GATEWAY,
    GATEWAY_IGNORED,
    PARSERS,
    REDIRECT,
    SOURCE,
    Line,
    collect,
    parse_source,
)
from haproxy_egress.config.sources.yamlfile import read_yaml
from haproxy_egress.errors import ConfigError, Problem

HTTP_PROXY = KEY  # EGRESS_HTTP_PROXY_DESTINATION
NOTHING = (
    "nothing to migrate: none of EGRESS_DESTINATION, EGRESS_DNS_PROXY_DESTINATION, "
    "EGRESS_HTTP_PROXY_DESTINATION or EGRESS_SOURCE is set, in the environment or as a key "
    "of the config directory (--config-dir)"
)
DEFAULT_KEY = "routes.yaml"
DEFAULT_NAME = "haproxy-egress"
_K8S_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


@dataclass(frozen=True)
class Migration:
    """The migrated text, how many routes it carries, and what it could not carry over."""

    text: str
    routes: int
    dropped: tuple[Problem, ...]  # also written as comments into `text`
    invalid: tuple[Problem, ...]  # problems the loader still finds in the result (should be ())

    @property
    def complete(self) -> bool:
        """True when every legacy line and setting was carried over."""
        return not self.dropped and not self.invalid


def _printable(text: str) -> str:
    """Text safe inside a one-line YAML comment: control and line-break characters escaped."""
    return "".join(
        c if c.isprintable() and c not in "\u2028\u2029\x85" else repr(c)[1:-1] for c in text
    )


def _quote(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text)


def _hostport(destination: Mapping[str, Any]) -> str:
    host = str(destination["host"])
    return f"[{host}]:{destination['port']}" if ":" in host else f"{host}:{destination['port']}"


def _route_lines(source: str, line: Line, data: Mapping[str, Any]) -> list[str]:
    destinations = ", ".join(_quote(_hostport(d)) for d in data["destinations"])
    return [
        f"  # {source} line {line.number}: {_printable(line.raw.strip())}",
        f"  - name: {data['name']}",
        f"    listen: {data['listen']}",
        f"    destinations: [{destinations}]",
    ]


def _http_proxy(
    files: Mapping[str, bytes], env: Mapping[str, str], port: int
) -> tuple[str, list[str], list[str], list[Problem]]:
    """The squid mode (EGRESS_HTTP_PROXY_DESTINATION) as one proxy route with the same rules,
    in the same order, each with its line: (source, route lines, notes, problems)."""
    found = read_input(files, env)
    if found is None:
        return "", [], [], []
    if isinstance(found, Problem):
        return found.source, [], [f"# NOT CARRIED OVER: {_printable(str(found))}"], [found]
    source, text = found
    parsed = parse_policy(text, source)
    notes = [f"# NOT CARRIED OVER: {_printable(str(p))}" for p in parsed.problems]
    if not parsed.rules:
        message = f"No {HTTP_PROXY} specified (no rule lines)"
        return (
            source,
            [],
            [*notes, f"# NOT CARRIED OVER: {message}"],
            [
                *parsed.problems,
                Problem(source, "", message),
            ],
        )
    lines = [
        f"  # {source} (squid mode): the same rules, first match wins (docs/policy.md).",
        f"  # Clients keep HTTP_PROXY/HTTPS_PROXY=http://<service>:{port}; `listen` is yours",
        "  # to change now (migrate --proxy-port), with the Service and the clients.",
        f"  - name: {HTTP_PROXY_ROUTE}",
        f"    listen: {port}",
        "    mode: proxy",
        "    policy:",
    ]
    lines += [f"      - {_quote(rule.text)}  # line {line.number}" for line, rule in parsed.rules]
    return source, lines, notes, list(parsed.problems)


def migrate_document(
    env: Mapping[str, str],
    files: Mapping[str, bytes] | None = None,
    proxy_port: int = HTTP_PROXY_PORT,
) -> tuple[str, int, list[Problem]]:
    """The YAML document (one ConfigMap key) for the legacy settings, its route count, and
    the problems of everything not carried over."""
    inputs, dropped = collect(files or {}, env)
    header: list[str] = []
    defaults: list[str] = []
    routes: list[str] = []
    # Whole-value problems (a key also set as env var, a key that is not UTF-8) first.
    notes = [f"# NOT CARRIED OVER: {p.source}: {_printable(p.message)}" for p in dropped]
    count = 0
    for item in inputs:
        if item.name in PARSERS:
            parsed = PARSERS[item.name](item.text, item.source)
            for line, data in parsed.routes:
                routes += _route_lines(item.source, line, data)
                count += 1
            for rejected in parsed.rejected:
                notes.append(
                    f"# NOT CARRIED OVER: {item.source} line {rejected.line.number}: "
                    f"{_printable(rejected.line.raw.strip())}"
                )
                notes.append(f"#   {_printable(rejected.message)}")
            dropped += parsed.all_problems()
        elif item.name == SOURCE:
            address, problems = parse_source(item.text, item.source)
            dropped += problems
            if address is not None:
                defaults += [
                    "defaults:",
                    f"  # from {item.source}: every connection leaves from this address; the",
                    "  # pod must own it (Multus/macvlan attachment or egress IP), see",
                    "  # docs/migration.md",
                    f"  source: {_quote(address)}",
                ]
            else:
                notes.append(f"# NOT CARRIED OVER: {item.source}={_printable(item.text.strip())}")
                notes += [f"#   {_printable(p.message)}" for p in problems]
        elif item.name == GATEWAY and item.text.strip():
            header.append(f"# {GATEWAY}={_printable(item.text.strip())} dropped:")
            header.append(f"#   {GATEWAY_IGNORED}")
    proxy_source, proxy_routes, proxy_notes, proxy_dropped = _http_proxy(
        files or {}, env, proxy_port
    )
    routes += proxy_routes
    count += 1 if proxy_routes else 0
    notes += proxy_notes
    dropped += proxy_dropped
    used = sorted({i.source for i in inputs if i.name in (REDIRECT, DNS_PROXY, SOURCE)})
    used += [proxy_source] if proxy_source else []
    if not used and not dropped and not header:
        raise ValueError(NOTHING)
    lines = [
        f"# Migrated by `haproxy-egress migrate` from {', '.join(used) or 'nothing'}.",
        *header,
    ]
    lines += ["version: 1", *defaults]
    lines += ["routes:", *routes] if routes else ["routes: []"]
    lines += notes
    return "\n".join(lines) + "\n", count, dropped


def _check(document: str, key: str) -> list[Problem]:
    """Problems the router's own loader finds in the migrated document (e.g. a DNS-proxy and
    a redirect line on the same port: both dialects were separate pods before)."""
    try:
        build_config([read_yaml(key, document.encode())], {})
    except ConfigError as exc:
        return list(exc.problems)
    return []


def migrate(
    env: Mapping[str, str],
    files: Mapping[str, bytes] | None = None,
    *,
    configmap: str | None = DEFAULT_NAME,
    key: str = DEFAULT_KEY,
    proxy_port: int = HTTP_PROXY_PORT,
) -> Migration:
    """Legacy env vars and ConfigMap keys → a ConfigMap manifest named `configmap` holding the
    YAML document under `key` (or the bare document when `configmap` is None)."""
    if configmap is not None and not _K8S_NAME.match(configmap):
        raise ValueError(
            f"not a valid ConfigMap name: {configmap!r} (lower case, digits, '-', '.')"
        )
    if not KEY_NAME.match(key) or not key.endswith((".yaml", ".yml")):
        raise ValueError(f"not a valid YAML key name: {key!r} (e.g. routes.yaml)")
    document, count, dropped = migrate_document(env, files, proxy_port)
    invalid = _check(document, key)
    if invalid:
        document += "# WARNING: haproxy-egress refuses this document until these are fixed:\n"
        document += "".join(f"#   {_printable(str(p))}\n" for p in invalid)
        if any(p.path.endswith(".listen") for p in invalid) and HTTP_PROXY in document:
            document += "#   (the squid-mode route can listen elsewhere: --proxy-port PORT)\n"
    if configmap is None:
        return Migration(document, count, tuple(dropped), tuple(invalid))
    body = "".join(f"    {line}\n" if line else "\n" for line in document.splitlines())
    text = (
        "apiVersion: v1\n"
        "kind: ConfigMap\n"
        "metadata:\n"
        f"  name: {configmap}\n"
        "data:\n"
        f"  {key}: |\n"
        f"{body}"
    )
    return Migration(text, count, tuple(dropped), tuple(invalid))
