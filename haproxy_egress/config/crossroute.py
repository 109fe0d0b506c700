"""Checks across routes from every source: unique names, listeners that do not overlap."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from haproxy_egress.config.derived import Derived
from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import Listen
from haproxy_egress.errors import Problem


class _Origin(Derived):
    """Where `Located.origin` is kept (config/derived.py)."""

    __slots__ = ("_origin",)


@dataclass(frozen=True, slots=True)
class Located(_Origin):
    """A validated route and where it was defined."""

    route: Route
    source: str
    path: str
    line: int | None = None

    @property
    def origin(self) -> tuple[str, str]:
        """(route name, "routes.yaml: routes[2]"): where the route was defined, for messages
        (made once: an unchanged route is the same object from load to load)."""
        return self._derived("_origin", lambda: (self.route.name, f"{self.source}: {self.path}"))


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


@dataclass
class CrossIndex:
    """The names and listeners of a set of routes that passed `cross_route_problems`, kept so
    that the next load checks only the routes it did not take over unchanged.

    A load whose routes are this set minus some plus some others has a problem only if an
    added route collides with a kept one or with another added one (the kept ones passed
    together): those few are checked against counts by name and listener. Any collision
    sends the load through the full check, which words and locates it as always."""

    reserved: dict[str, Listen]
    members: dict[int, Located]  # by identity: the load cache hands unchanged ones back
    names: dict[str, int] = field(default_factory=dict)
    on_port: dict[int, int] = field(default_factory=dict)  # any listener on the port
    wildcards: dict[int, int] = field(default_factory=dict)  # wildcard listeners on the port
    # Specific listeners, by the route's own (equal by address and port): no key of its own
    # per route (a tuple for each of 10,000 routes, kept for as long as the router runs).
    addresses: dict[Listen, int] = field(default_factory=dict)

    @classmethod
    def of(cls, routes: Sequence[Located], reserved: Mapping[str, Listen]) -> CrossIndex:
        """The index of routes known to pass the full check."""
        index = cls(dict(reserved), {})
        for item in routes:
            index._add(item)
        return index

    @staticmethod
    def _keys(item: Located) -> tuple[str, int, bool, Listen]:
        listen = item.route.listen
        return item.route.name, listen.port, listen.is_wildcard, listen

    def _add(self, item: Located) -> bool:
        """Count `item` in; True if it collides with a route counted before."""
        name, port, wildcard, address = self._keys(item)
        if wildcard:
            clash = self.on_port.get(port, 0) > 0
        else:
            clash = self.wildcards.get(port, 0) > 0 or self.addresses.get(address, 0) > 0
        clash = clash or self.names.get(name, 0) > 0
        self.members[id(item)] = item
        self.names[name] = self.names.get(name, 0) + 1
        self.on_port[port] = self.on_port.get(port, 0) + 1
        if wildcard:
            self.wildcards[port] = self.wildcards.get(port, 0) + 1
        else:
            self.addresses[address] = self.addresses.get(address, 0) + 1
        return clash

    def _remove(self, item: Located) -> None:
        name, port, wildcard, address = self._keys(item)
        del self.members[id(item)]
        self.names[name] -= 1
        self.on_port[port] -= 1
        if wildcard:
            self.wildcards[port] -= 1
        else:
            self.addresses[address] -= 1

    def _copy(self) -> CrossIndex:
        return CrossIndex(
            self.reserved,
            dict(self.members),
            dict(self.names),
            dict(self.on_port),
            dict(self.wildcards),
            dict(self.addresses),
        )

    def changed_to(self, routes: Sequence[Located]) -> CrossIndex | None:
        """The index of `routes` if they pass the full check, checking only the routes that
        are not members; None if one of those collides (or cannot be told apart)."""
        now = dict(zip(map(id, routes), routes, strict=True))
        if len(now) != len(routes):
            return None  # one object twice: let the full check say so
        index = self._copy()
        for gone in self.members.keys() - now.keys():
            index._remove(self.members[gone])
        for new in now.keys() - self.members.keys():
            item = now[new]
            if index._add(item) or any(
                item.route.listen.overlaps(r) for r in self.reserved.values()
            ):
                return None
        return index


def checked_routes(
    routes: Sequence[Located], reserved: Mapping[str, Listen], last: CrossIndex | None
) -> tuple[list[Problem], CrossIndex | None]:
    """`cross_route_problems`, and the index of `routes` when there are none; given the index
    of the last routes that passed, only the routes not among them are checked."""
    if last is not None and last.reserved == dict(reserved):
        index = last.changed_to(routes)
        if index is not None:
            return [], index
    problems = cross_route_problems(routes, reserved)
    return problems, None if problems else CrossIndex.of(routes, reserved)
