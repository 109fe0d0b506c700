"""Route blocks kept from the last render: an edit of one route at 10,000 renders one block.

The template prints each route through its `route_block` macro, by way of `Blocks.block`:
a route that is the very object the last render printed (the load cache hands back the same
`Route` for unchanged input), with the same origin, hooks and allow_from file, gets the text
printed then. Anything else the template context holds (run dir, template directory, the
config outside its routes) is the render's scope: when it differs, nothing is reused.

Only the blocks the last render printed are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass

from haproxy_egress.config.model import Route
from haproxy_egress.render.hooks import HookSet

__all__ = ["BlockCache", "Blocks"]

Macro = Callable[[Route], str]


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

    def _keep(self, scope: Hashable, entries: dict[int, _Entry]) -> None:
        self._scope, self._entries = scope, entries


class Blocks:
    """One render's view of the cache: `block` for the template, `finish` when it is done."""

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

    def block(self, route: Route, macro: Macro) -> str:
        """The route's block: the last render's text if nothing it prints changed."""
        inputs = (
            self._origins.get(route.name),
            self._route_hooks.get(route.name),
            self._allow_from_files.get(route.name),
        )
        entry = self._cache._entries.get(id(route))
        if entry is None or entry.route is not route or entry.inputs != inputs:
            entry = _Entry(route, inputs, str(macro(route)))
            self._cache.rendered += 1
        else:
            self._cache.reused += 1
        # The entry holds the route, so its id cannot name another object while kept.
        self._printed[id(route)] = entry
        return entry.text

    def finish(self) -> None:
        """The render succeeded: keep what it printed, drop the rest."""
        self._cache._keep(self._scope, self._printed)
