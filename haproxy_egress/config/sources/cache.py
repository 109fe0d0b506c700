"""What the last load parsed and validated, reused by the next load where its input is the same.

At 10,000 routes in ten keys, an edit of one route used to parse all ten keys and validate
every route again. A key whose bytes did not change yields the fragment it yielded last time
(by name and content digest), and a route whose raw data, location and merged defaults did
not change yields the very validated route: on a reused fragment that is an identity check;
a route of a re-parsed key is looked up by a digest of its content. Only a load that
succeeded is kept, so a route that failed is validated again and its problems reported
afresh.

The checks that look across routes (unique names and listeners) keep the index of the last
load's routes (config/crossroute.py `CrossIndex`): the routes a load takes over unchanged
passed together, so only the others are checked against it, and any collision runs the full
check, so a changed route that collides with an unchanged one is refused with its location as
before.

What is kept is small: a kept fragment is hollow (its routes keep their location and the
digest of their data, not the data or per-field lines, which only a validation needs), and
routes are found by that digest. A hollow route that misses (the merged defaults changed)
cannot be validated: the load then starts over with every key parsed (`Stale`). Each load
keeps only what it used.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from haproxy_egress.config.crossroute import CrossIndex, Located
from haproxy_egress.config.sources.raw import Fragment, RawRoute
from haproxy_egress.config.sources.yamlfile import lines_outside_routes

__all__ = ["LoadCache", "Stale", "Stats"]

# (source, path, line, digest of the raw data, the merged defaults as text)
_RouteKey = tuple[str, str, int | None, bytes, str]
_FragmentKey = tuple[str, bytes]


class Stale(Exception):
    """A kept (hollow) route is needed with other defaults: parse every key again."""


@dataclass
class Stats:
    """How the last load used the cache (what the tests and the benchmark read)."""

    fragments_parsed: int = 0
    fragments_reused: int = 0
    routes_validated: int = 0
    routes_reused: int = 0


@dataclass
class _Segment:
    """One key's routes as a load validated them, all of them: the next load takes the list
    whole when the key's bytes and the merged defaults are the same (no loop per route)."""

    defaults: str
    located: list[Located]
    routes: dict[_RouteKey, Located]


@dataclass
class _Load:
    """What one load used: fragments by key, routes by key, whole keys' routes, and which
    key each fragment came from. (Each raw route carries the digest of its own key.)"""

    fragments: dict[_FragmentKey, Fragment] = dataclasses.field(default_factory=dict)
    routes: dict[_RouteKey, Located] = dataclasses.field(default_factory=dict)
    segments: dict[_FragmentKey, _Segment] = dataclasses.field(default_factory=dict)
    sources: dict[int, _FragmentKey] = dataclasses.field(default_factory=dict)


def _key(raw: RawRoute, digest: bytes, defaults: str) -> _RouteKey:
    return raw.source, raw.path, raw.line, digest, defaults


# What a hollow route holds for data and lines (shared: nothing writes to them).
_NO_DATA: dict[str, object] = {}
_NO_LINES: dict[str, int] = {}


def _route_lines_dropped(frag: Fragment) -> tuple[dict[str, int], Mapping[str, int]]:
    """The fragment's lines and its `defaults` lines without its routes': the lines below
    `routes` belong to the routes; the rest (defaults, resolvers, stats) is what a problem
    outside the routes may still need. (A YAML key's lines index its text when asked: kept,
    they would keep the text.)"""
    outside = lines_outside_routes(frag.lines)
    defaults = outside if frag.defaults_lines is frag.lines else frag.defaults_lines
    return outside, defaults


def _hollow(frag: Fragment) -> Fragment:
    """The fragment without its routes' data and lines (each keeps its digest)."""
    routes = [RawRoute({}, r.source, r.path, r.line, digest=r.digest) for r in frag.routes]
    lines, defaults_lines = _route_lines_dropped(frag)
    return dataclasses.replace(frag, lines=lines, defaults_lines=defaults_lines, routes=routes)


class LoadCache:
    """Fragments by (key, content digest); validated routes by their inputs."""

    def __init__(self) -> None:
        self._kept = _Load()
        self._used = _Load()
        self._reparse = False
        self.stats = Stats()
        self._index: CrossIndex | None = None  # of the last load's routes
        self._new_index: CrossIndex | None = None

    @property
    def index(self) -> CrossIndex | None:
        """The cross-route index of the last load that succeeded."""
        return self._index

    def checked(self, index: CrossIndex | None) -> None:
        """This load's routes passed the cross-route checks: their index, kept if it ends."""
        self._new_index = index

    def begin(self, reparse: bool = False) -> None:
        """A load starts: count afresh; `reparse` (after Stale) parses every key."""
        self.stats = Stats()
        self._used = _Load()
        self._reparse = reparse
        self._new_index = None

    def end(self) -> None:
        """The load succeeded: keep what it used, hollowed."""
        used = self._used
        kept = _Load(routes=used.routes)
        for key, frag in used.fragments.items():
            full = bool(frag.routes) and bool(frag.routes[0].data)  # a parse, not a kept one
            kept.fragments[key] = _hollow(frag) if full else frag
            segment = used.segments.get(key)
            if segment is not None:
                kept.segments[key] = segment
        self._kept, self._used = kept, _Load()
        self._index, self._new_index = self._new_index, None

    def fragments(self) -> dict[str, Fragment]:
        """Key name → the fragment the last load used (hollow)."""
        return {name: frag for (name, _), frag in self._kept.fragments.items()}

    def routes(self) -> int:
        """How many validated routes are kept."""
        return len(self._kept.routes)

    def fragment(self, name: str, data: bytes, parse: Callable[[str, bytes], Fragment]) -> Fragment:
        """`parse(name, data)`, or what it returned for the same name and bytes last time."""
        key = (name, hashlib.sha256(data).digest())
        frag = None if self._reparse else self._kept.fragments.get(key)
        if frag is None:
            frag = parse(name, data)
            self.stats.fragments_parsed += 1
        else:
            self.stats.fragments_reused += 1
        self._used.fragments[key] = frag
        self._used.sources[id(frag)] = key
        return frag

    def validated(self, frag: Fragment) -> None:
        """Every route of `frag` (a fragment `fragment` parsed for this load) is validated:
        hollow it in place now, not at `end`. Only a validation reads a route's data and
        lines, and dropping them key by key lets the next key's routes take their memory:
        at 10,000 routes the parsed data of every key at once, freed only after all were
        validated, left the heap 20 MB larger for good (its pages half used)."""
        if id(frag) not in self._used.sources or not frag.routes or not frag.routes[0].data:
            return
        for raw in frag.routes:
            raw.data, raw.lines = _NO_DATA, _NO_LINES
        frag.lines, frag.defaults_lines = _route_lines_dropped(frag)

    def segment(self, frag: Fragment, defaults: str) -> list[Located] | None:
        """Every validated route of `frag` (a fragment `fragment` returned) as the last load
        had them with the same merged `defaults` (as text), or None: validate route by route."""
        key = self._used.sources.get(id(frag))
        if key is None or self._reparse:
            return None
        segment = self._kept.segments.get(key)
        if segment is None or segment.defaults != defaults:
            return None
        used = self._used
        used.segments[key] = segment
        used.routes.update(segment.routes)
        self.stats.routes_reused += len(segment.located)
        return segment.located

    def whole(self, frag: Fragment, defaults: str, located: list[Located]) -> None:
        """`located` are all of `frag`'s routes, validated (by `route`) with `defaults` and
        final (nothing resolved into them since): the next load may take them whole."""
        key = self._used.sources.get(id(frag))
        if key is None or len(frag.routes) != len(located):
            return
        digests = [raw.digest for raw in frag.routes]
        if None in digests:
            return  # a route validated without a digest (nested too deep to digest)
        routes = {
            _key(raw, digest, defaults): item
            for raw, digest, item in zip(frag.routes, digests, located, strict=True)
            if digest is not None
        }
        self._used.segments[key] = _Segment(defaults, located, routes)

    def route(self, raw: RawRoute, defaults: str, validate: Callable[[], Located]) -> Located:
        """`validate()`, or the route it returned for the same raw route and `defaults` (the
        merged defaults, as text) last time. Raises Stale for a hollow route that misses."""
        if raw.digest is not None and not raw.data:  # kept hollow: only its digest is left
            key = _key(raw, raw.digest, defaults)
            located = self._kept.routes.get(key)
            if located is None:
                raise Stale(raw.source)
        else:
            try:
                digest = hashlib.blake2b(repr(raw.data).encode(), digest_size=16).digest()
            except RecursionError:  # data nested deeper than repr goes: no route has that
                self.stats.routes_validated += 1
                return validate()
            key = _key(raw, digest, defaults)
            located = self._kept.routes.get(key)
            if located is None:
                located = validate()  # raises ProblemList: nothing is kept
                self.stats.routes_validated += 1
            else:
                self.stats.routes_reused += 1
            raw.digest = digest  # valid: the next load finds it by this once its data is gone
            self._used.routes[key] = located
            return located
        self.stats.routes_reused += 1
        self._used.routes[key] = located
        return located
