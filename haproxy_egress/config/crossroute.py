"""Checks across routes from every source: unique names, listeners that do not overlap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import Listen
from haproxy_egress.errors import Problem


@dataclass(frozen=True)
class Located:
    """A validated route and where it was defined."""

    route: Route
    source: str
    path: str
    line: int | None = None


def cross_route_problems(
    routes: Sequence[Located], reserved: Mapping[str, Listen]
) -> list[Problem]:
    """Names and listen addresses must be unique across every source (and not collide with the
    stats page or metrics endpoint, given in `reserved` as label → listener)."""
    problems: list[Problem] = []
    by_name: dict[str, Located] = {}
    for item in routes:
        first = by_name.get(item.route.name)
        if first is not None:
            problems.append(
                Problem(
                    item.source,
                    f"{item.path}.name",
                    f"route name {item.route.name!r} is already used by "
                    f"{first.source}: {first.path}",
                    item.line,
                )
            )
        else:
            by_name[item.route.name] = item
    # Only listeners on the same port can overlap, and only on the same address or when one is
    # a wildcard: index by (port, address) with the first wildcard per port, to stay linear.
    by_address: dict[tuple[int, str | None], Located] = {}
    wildcard: dict[int, Located] = {}
    any_on_port: dict[int, Located] = {}
    for item in routes:
        listen = item.route.listen
        key = (listen.port, None if listen.is_wildcard else listen.address)
        if listen.is_wildcard:
            clash = any_on_port.get(listen.port)
        else:
            clash = wildcard.get(listen.port) or by_address.get(key)
        if clash is not None:
            problems.append(
                Problem(
                    item.source,
                    f"{item.path}.listen",
                    f"listen {listen} is already used by route "
                    f"{clash.route.name!r} ({clash.source}: {clash.path})",
                    item.line,
                )
            )
        any_on_port.setdefault(listen.port, item)
        by_address.setdefault(key, item)
        if listen.is_wildcard:
            wildcard.setdefault(listen.port, item)
        for label, listener in reserved.items():
            if item.route.listen.overlaps(listener):
                problems.append(
                    Problem(
                        item.source,
                        f"{item.path}.listen",
                        f"listen {item.route.listen} collides with the {label}",
                        item.line,
                    )
                )
    return problems
