"""Route blocks kept from the last render: an edit of one route at 10,000 renders one block.

The template prints every route through its `route_block` macro, by way of `Blocks.blocks`:
a route that is the very object the last render printed (the load cache hands back the same
`Route` for unchanged input), with the same origin, hooks and allow_from file, gets the text
printed then. Anything else the template context holds (run dir, template directory, the
config outside its routes) is the render's scope: when it differs, nothing is reused.

Only the blocks the last render printed are kept.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

from haproxy_egress.config.route import Route
from haproxy_egress.render.hooks import HookSet

__all__ = ["BlockCache", "Blocks"]

Macro = Callable[[Route], str]
_TEXT = operator.attrgetter("text")


@dataclass
class _Entry:
    route: Route
    inputs: tuple[object, ...]
    text: str


class BlockCache:
    """The route blocks of the last render, by route identity."""

    def __init__(self) -> None:
        self._scope: Hashable = None
        self._entries: dict[int, _Entry] = {}
        self._inputs: tuple[object, ...] = ()  # the last render's per-route inputs
        self.rendered = 0  # blocks the last render printed afresh
        self.reused = 0

    def begin(
        self,
        scope: Hashable,
        origins: Mapping[str, str],
        hooks: HookSet,
        allow_from_files: Mapping[str, str],
    ) -> Blocks:
        """A render starts; its blocks come from the returned `Blocks`."""
        if scope != self._scope:
            self._entries = {}
        self.rendered = self.reused = 0
        return Blocks(self, scope, origins, hooks, allow_from_files)

    def _keep(
        self, scope: Hashable, entries: dict[int, _Entry], inputs: tuple[object, ...]
    ) -> None:
        self._scope, self._entries, self._inputs = scope, entries, inputs


class Blocks:
    """One render's view of the cache: `blocks` for the template, `finish` when it is done."""

    def __init__(
        self,
        cache: BlockCache,
        scope: Hashable,
        origins: Mapping[str, str],
        hooks: HookSet,
        allow_from_files: Mapping[str, str],
    ) -> None:
        self._cache = cache
        self._scope = scope
        self._origins = origins
        self._route_hooks = dict(hooks.routes)
        self._allow_from_files = allow_from_files
        self._printed: dict[int, _Entry] = {}

    def blocks(self, routes: Sequence[Route], macro: Macro) -> str:
        """Every route's block, in order: the last render's text where nothing it prints
        changed, else `macro(route)`. One Python loop: at 10,000 routes a template loop
        calling back once per route cost more than the blocks it reused."""
        kept = self._cache._entries
        origins, route_hooks, files = self._origins, self._route_hooks, self._allow_from_files
        if self._cache._inputs == (origins, route_hooks, files):
            return self._unchanged_inputs(routes, macro)
        printed = self._printed
        out = []
        rendered = 0
        for route in routes:
            name = route.name
            inputs = (origins.get(name), route_hooks.get(name), files.get(name))
            entry = kept.get(id(route))
            if entry is None or entry.route is not route or entry.inputs != inputs:
                entry = _Entry(route, inputs, str(macro(route)))
                rendered += 1
            # The entry holds the route, so its id cannot name another object while kept.
            printed[id(route)] = entry
            out.append(entry.text)
        self._cache.rendered += rendered
        self._cache.reused += len(out) - rendered
        return "".join(out)

    def _unchanged_inputs(self, routes: Sequence[Route], macro: Macro) -> str:
        """`blocks` when every route's inputs are what the last render had: only a route that
        is not a kept one is printed, and the loops over all routes are the C library's (at
        10,000 routes, a Python loop over them was most of an edit's render)."""
        kept = self._cache._entries
        ids = list(map(id, routes))
        current = set(ids)
        missing = current.difference(kept)
        # The kept entries stay in the same dict (with the ints naming them): a new dict of
        # 10,000 per edit left the heap fragmented.
        entries = kept
        gone = kept.keys() - current
        if gone or missing:
            entries = dict(kept)
            for i in gone:
                del entries[i]
        if missing:
            origins, route_hooks, files = self._origins, self._route_hooks, self._allow_from_files
            for route in routes:
                # A kept entry holds its route, so a kept id is that very route.
                if id(route) in missing and id(route) not in entries:
                    name = route.name
                    inputs = (origins.get(name), route_hooks.get(name), files.get(name))
                    entries[id(route)] = _Entry(route, inputs, str(macro(route)))
        self._printed = entries
        self._cache.rendered += len(missing)
        self._cache.reused += len(ids) - len(missing)
        return "".join(map(_TEXT, map(entries.__getitem__, ids)))

    def finish(self) -> None:
        """The render succeeded: keep what it printed, drop the rest."""
        inputs = (self._origins, self._route_hooks, self._allow_from_files)
        self._cache._keep(self._scope, self._printed, inputs)
