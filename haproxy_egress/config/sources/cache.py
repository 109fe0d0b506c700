"""What the last load parsed and validated, reused by the next load where its input is the same.

At 10,000 routes in ten keys, an edit of one route used to parse all ten keys and validate
every route again. A key whose bytes did not change yields the very `Fragment` it yielded
last time (by name and content digest), and a route whose raw data, location and merged
defaults did not change yields the very validated route (a hit on a reused fragment is an
identity check; a route of a re-parsed key is looked up by its content). Only successes are
kept: a route that failed is validated again, so its problems are always reported afresh.

The checks that look across routes (unique names and listeners, proxy users) are not cached:
they run on every load over all routes, cached or not, so a changed route that collides with
an unchanged one is refused with its location as before.

Each load keeps only the entries it used; what the previous load alone needed is dropped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from haproxy_egress.config.model import Located
from haproxy_egress.config.sources.raw import Fragment, RawRoute

__all__ = ["LoadCache", "Stats"]

_RouteKey = tuple[str, str, int | None, str, str]


@dataclass
class Stats:
    """How the last load used the cache (what the tests and the benchmark read)."""

    fragments_parsed: int = 0
    fragments_reused: int = 0
    routes_validated: int = 0
    routes_reused: int = 0


class LoadCache:
    """Fragments by (key, content digest); validated routes by their inputs."""

    def __init__(self) -> None:
        self._fragments: dict[tuple[str, bytes], Fragment] = {}
        self._routes: dict[_RouteKey, Located] = {}
        # id(raw) → (raw, its key): a route of a reused fragment is found without its repr.
        self._keys: dict[int, tuple[RawRoute, _RouteKey]] = {}
        self._next: tuple[
            dict[tuple[str, bytes], Fragment],
            dict[_RouteKey, Located],
            dict[int, tuple[RawRoute, _RouteKey]],
        ] = ({}, {}, {})
        self.stats = Stats()

    def begin(self) -> None:
        """A load starts: count afresh."""
        self.stats = Stats()
        self._next = ({}, {}, {})

    def end(self) -> None:
        """The load is over: keep only what it used."""
        self._fragments, self._routes, self._keys = self._next
        self._next = ({}, {}, {})

    def fragments(self) -> dict[str, Fragment]:
        """Key name → the fragment the last load used."""
        return {name: frag for (name, _), frag in self._fragments.items()}

    def routes(self) -> int:
        """How many validated routes are kept."""
        return len(self._routes)

    def fragment(self, name: str, data: bytes, parse: Callable[[str, bytes], Fragment]) -> Fragment:
        """`parse(name, data)`, or what it returned for the same name and bytes last time."""
        key = (name, hashlib.sha256(data).digest())
        frag = self._fragments.get(key)
        if frag is None:
            frag = parse(name, data)
            self.stats.fragments_parsed += 1
        else:
            self.stats.fragments_reused += 1
        self._next[0][key] = frag
        return frag

    def route(self, raw: RawRoute, defaults: str, validate: Callable[[], Located]) -> Located:
        """`validate()`, or the route it returned for the same raw route and `defaults` (the
        merged defaults, as text) last time."""
        known = self._keys.get(id(raw))
        if known is not None and known[0] is raw and known[1][4] == defaults:
            key = known[1]
        else:
            try:
                key = (raw.source, raw.path, raw.line, repr(raw.data), defaults)
            except RecursionError:  # data nested deeper than repr goes: no route has that
                self.stats.routes_validated += 1
                return validate()
        located = self._routes.get(key)
        if located is None:
            located = validate()  # raises ProblemList: nothing is kept
            self.stats.routes_validated += 1
        else:
            self.stats.routes_reused += 1
        self._next[1][key] = located
        self._next[2][id(raw)] = (raw, key)
        return located
