"""The seed image's dialect: the `oc process` template parameters as environment variables.

SERVICE_NAME, SERVICE_TCP_PORT, SERVICE_DEST ("a;b;c"), SERVICE_DEST_PORT make one route;
STATS_PORT / STATS_USER / STATS_PASSWORD turn on haproxy's stats page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from haproxy_egress.config.addresses import parse_endpoint, parse_listen, parse_port
from haproxy_egress.config.scalars import NAME_PATTERN
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.errors import Problem

SOURCE = "SERVICE_* env"
ROUTE_VARS = ("SERVICE_TCP_PORT", "SERVICE_DEST")


def read_seed_env(env: Mapping[str, str]) -> Fragment:
    """The env route (if SERVICE_TCP_PORT and SERVICE_DEST are set) and the stats page."""
    frag = Fragment(source=SOURCE)
    present = [v for v in ROUTE_VARS if env.get(v, "").strip()]
    if present and len(present) < len(ROUTE_VARS):
        missing = next(v for v in ROUTE_VARS if v not in present)
        frag.problems.append(Problem(missing, "", f"must be set together with {present[0]}"))
    elif present:
        route = _route(env, frag.problems)
        if route is not None:
            frag.routes.append(RawRoute(route, SOURCE, "route"))
    frag.stats = _stats(env, frag.problems)
    return frag


def _route(env: Mapping[str, str], problems: list[Problem]) -> dict[str, Any] | None:
    before = len(problems)
    default_port: int | None = None
    if env.get("SERVICE_DEST_PORT", "").strip():
        try:
            default_port = parse_port(env["SERVICE_DEST_PORT"])
        except ValueError as exc:
            problems.append(Problem("SERVICE_DEST_PORT", "", str(exc)))
    try:
        listen = parse_listen(env["SERVICE_TCP_PORT"].strip())
    except ValueError as exc:
        problems.append(Problem("SERVICE_TCP_PORT", "", str(exc)))
        listen = None
    destinations: list[dict[str, Any]] = []
    items = [item.strip() for item in env["SERVICE_DEST"].split(";")]
    for n, item in enumerate(items, start=1):
        if not item:
            if n < len(items):  # a trailing ';' is harmless, an empty middle item is a typo
                problems.append(Problem("SERVICE_DEST", f"item {n}", "empty destination"))
            continue
        try:
            host, port = parse_endpoint(item, default_port)
        except ValueError as exc:
            hint = (
                " (write host:port or set SERVICE_DEST_PORT)" if "missing port" in str(exc) else ""
            )
            problems.append(Problem("SERVICE_DEST", f"item {n}", f"{exc}{hint}"))
            continue
        destinations.append({"host": host, "port": port})
    name = env.get("SERVICE_NAME", "").strip() or "egress"
    if not re.fullmatch(NAME_PATTERN, name):
        # Checked here so the message names the variable, not the model's "route.name".
        problems.append(
            Problem("SERVICE_NAME", "", f"invalid value {name!r}: must match {NAME_PATTERN}")
        )
    if len(problems) > before or listen is None:
        return None
    address, port = listen
    return {
        "name": name,
        "listen": f"[{address}]:{port}"
        if address and ":" in address
        else (f"{address}:{port}" if address else port),
        "destinations": destinations,
    }


def _stats(env: Mapping[str, str], problems: list[Problem]) -> dict[str, Any] | None:
    if not env.get("STATS_PORT", "").strip():
        for var in ("STATS_USER", "STATS_PASSWORD"):
            if env.get(var):
                problems.append(Problem(var, "", "has no effect without STATS_PORT"))
        return None
    try:
        port = parse_port(env["STATS_PORT"])
    except ValueError as exc:
        problems.append(Problem("STATS_PORT", "", str(exc)))
        return None
    stats: dict[str, Any] = {"port": port}
    if env.get("STATS_USER"):
        stats["user"] = env["STATS_USER"]
    if env.get("STATS_PASSWORD"):
        stats["password"] = env["STATS_PASSWORD"]
    return stats
