"""What every source dialect hands to the loader: unvalidated route data with its location."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from haproxy_egress.errors import Problem


@dataclass(slots=True)
class RawRoute:
    """A route as a source read it, before defaults are applied and the model validates it."""

    data: dict[str, Any]
    source: str  # "routes.yaml", "SERVICE_* env", "EGRESS_DESTINATION"
    path: str  # "routes[2]", "line 3"
    line: int | None = None
    # YAML path below this route → line, so field errors can name a line too.
    lines: Mapping[str, int] = field(default_factory=dict)
    # Set by the load cache once the route is valid: the digest of its data, by which the
    # next load finds the validated route again after the data is dropped (cache.py).
    digest: bytes | None = None


@dataclass
class Fragment:
    """Everything one source contributed: defaults, resolvers, stats page, routes, problems."""

    source: str
    defaults: dict[str, Any] | None = None
    defaults_lines: Mapping[str, int] = field(default_factory=dict)
    # YAML path → line for the whole document (resolvers, stats...), when the source has lines.
    lines: Mapping[str, int] = field(default_factory=dict)
    resolvers: dict[str, Any] | None = None
    stats: dict[str, Any] | None = None
    logging: dict[str, Any] | None = None  # remote syslog targets (config/logtargets.py)
    routes: list[RawRoute] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
