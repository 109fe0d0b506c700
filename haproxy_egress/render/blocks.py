"""Route blocks kept from the last render: an edit of one route at 10,000 renders one block.

The template prints every route through its `route_block` macro, by way of `Blocks.blocks`:
a route that is the very object the last render printed (the load cache hands back the same
`Route` for unchanged input), with the same origin, hooks and allow_from file, gets the text
printed then. Anything else the template context holds (run dir, template directory, the
config outside its routes) is the render's scope: when it differs, nothing is reused.

The kept text is not a copy: a kept block is a slice of the last render's whole text (the
very string `Compiled.text` holds, by way of the same `PackedText`), found by its offset, so
the supervisor holds the 5 MB of route blocks at 10,000 routes once, not twice, and only
deflated between changes (render/packed.py). Blocks that follow each other in both texts
are taken as one slice, so an edit of one route joins a handful of pieces, not 10,000. The
template prints a marker where the blocks go, and `Blocks.splice` joins the whole text
around it at once (the blocks are never a string of their own).

Only the blocks the last render printed are kept.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, compress
from typing import TypeAlias

from haproxy_egress.config.route import Route
from haproxy_egress.render.hooks import HookSet
from haproxy_egress.render.packed import PackedText

__all__ = ["BlockCache", "Blocks"]

Macro = Callable[[Route], str]
Offsets: TypeAlias = "array[int]"  # route ids, block offsets: signed 64-bit machine integers
_LENGTH = operator.attrgetter("length")
# What the template prints where the route blocks go; `Blocks.splice` puts them there, in the
# one join that makes the whole text (no valid config holds a NUL).
MARKER = "\x00route blocks\x00"
_FEW = 64  # fresh blocks looked up one by one; more: one pass over the routes
_APART = -(2**40)  # a block printed now "starts" at a multiple of this (see `_pieces`)


def _offsets(*values: int) -> Offsets:
    return array("q", values)


@dataclass(slots=True)
class _Entry:
    # What else its block prints (origin, hooks, allow_from file) is not kept per entry: a
    # kept entry's are always the last render's, which `BlockCache._inputs` holds.
    route: Route
    length: int
    text: str | None  # printed by this render; None once it is in the kept text


class BlockCache:
    """The route blocks of the last render, by route identity, as offsets in its text."""

    def __init__(self) -> None:
        self._scope: Hashable = None
        self._entries: dict[int, _Entry] = {}
        # The last render's per-route inputs (origins, hooks, allow_from files by route
        # name): every kept entry was printed with these, or checked against them.
        self._inputs: tuple[Mapping[str, object], ...] = ()
        self._text = PackedText("")  # the last render's whole text
        self._base = 0  # where its route blocks start in it
        # The ids of its routes, in order, and where each of their blocks starts, from
        # `_base` (one more: where the last one ends); machine integers, not int objects:
        # at 10,000 routes each list would hold 10,000 ints made anew by every edit.
        self._ids = _offsets()
        self._starts = _offsets(0)
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
            self._forget()
        self.rendered = self.reused = 0
        return Blocks(self, scope, origins, hooks, allow_from_files)

    def _keep(
        self,
        scope: Hashable,
        entries: dict[int, _Entry],
        inputs: tuple[Mapping[str, object], ...],
        *,
        text: PackedText,
        base: int,
        ids: Offsets,
        starts: Offsets,
    ) -> None:
        self._scope, self._entries, self._inputs = scope, entries, inputs
        self._text, self._base, self._ids, self._starts = text, base, ids, starts

    def _forget(self) -> None:
        """Keep no block: the next render prints every route."""
        self._keep(None, {}, (), text=PackedText(""), base=0, ids=_offsets(), starts=_offsets(0))

    def holder(self, text: str) -> PackedText:
        """The holder of `text`: the one this cache keeps when `text` is the last render's
        (so that the two are packed and inflated as one), else a new one."""
        kept = self._text
        return kept if not kept.packed and kept.text is text else PackedText(text)

    def pack(self) -> None:
        """Deflate the kept text until the next render reads it (render/packed.py)."""
        self._text.pack()

    def unpack_soon(self) -> None:
        """A render is coming: start inflating the kept text (render/packed.py)."""
        self._text.unpack_soon()


class Blocks:
    """One render's view of the cache: `blocks` for the template, `splice` when it is done."""

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
        self._ids = _offsets()
        self._starts = _offsets(0)
        self._fresh: list[_Entry] = []  # printed by this render
        self._blocks: list[str] = []  # this render's, in order

    def blocks(self, routes: Sequence[Route], macro: Macro) -> str:
        """Every route's block, in order: the last render's text where nothing it prints
        changed, else `macro(route)`. One Python loop: at 10,000 routes a template loop
        calling back once per route cost more than the blocks it reused."""
        kept = self._cache._entries
        origins, route_hooks, files = self._origins, self._route_hooks, self._allow_from_files
        if self._cache._inputs == (origins, route_hooks, files):
            entries = self._unchanged_inputs(routes, macro)
        else:
            entries = {}
            last_origins, last_hooks, last_files = self._cache._inputs or ({}, {}, {})
            for route in routes:
                name = route.name
                entry = kept.get(id(route))
                if (
                    entry is None
                    or entry.route is not route
                    or last_origins.get(name) != origins.get(name)
                    or last_hooks.get(name) != route_hooks.get(name)
                    or last_files.get(name) != files.get(name)
                ):
                    entry = self._print(route, macro)
                # The entry holds the route, so its id cannot name another object while kept.
                entries[id(route)] = entry
        self._printed = entries
        self._ids = ids = array("q", map(id, routes))
        pieces = self._in_order(ids, entries) if len(ids) == len(self._cache._ids) else None
        if pieces is None:
            pieces = self._pieces(ids, entries)
        self._cache.reused += len(ids) - self._cache.rendered
        self._blocks = pieces
        return MARKER

    def _print(self, route: Route, macro: Macro) -> _Entry:
        text = str(macro(route))
        self._cache.rendered += 1
        entry = _Entry(route, len(text), text)
        self._fresh.append(entry)
        return entry

    def _unchanged_inputs(self, routes: Sequence[Route], macro: Macro) -> dict[int, _Entry]:
        """The entries when every route's inputs are what the last render had: only a route
        that is not a kept one is printed, and the loops over all routes are the C library's
        (at 10,000 routes, a Python loop over them was most of an edit's render)."""
        kept = self._cache._entries
        current = set(map(id, routes))
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
            for route in routes:
                # A kept entry holds its route, so a kept id is that very route.
                if id(route) in missing and id(route) not in entries:
                    entries[id(route)] = self._print(route, macro)
        return entries

    def _fresh_places(self, ids: Offsets) -> list[int]:
        """Where the blocks printed now are among `ids`, in order."""
        fresh = {id(e.route) for e in self._fresh}
        if len(fresh) <= _FEW:  # an edit: each found by the C library
            return sorted(map(ids.index, fresh))
        return [at for at, i in enumerate(ids) if i in fresh]

    def _in_order(self, ids: Offsets, entries: dict[int, _Entry]) -> list[str] | None:
        """The pieces when the routes are where the last render had them, but for routes
        printed now (an edit): the runs between those are slices of the last text. None
        when a kept route moved."""
        cache = self._cache
        old, base, old_starts = cache._text.text, cache._base, cache._starts
        moved = compress(range(len(ids)), map(operator.ne, ids, cache._ids))
        fresh = self._fresh_places(ids)
        places = sorted({*moved, *fresh})
        if len(places) != len(fresh):
            return None  # a kept block is somewhere else now
        pieces: list[str] = []
        starts = _offsets()
        at = first = 0
        for place in (*places, len(ids)):
            if first < place:  # the kept blocks first..place-1, one slice
                begin, end = old_starts[first], old_starts[place]
                pieces.append(old[base + begin : base + end])
                starts.extend(map((at - begin).__add__, old_starts[first:place]))
                at += end - begin
            if place < len(ids):
                text = entries[ids[place]].text or ""
                pieces.append(text)
                starts.append(at)
                at += len(text)
            first = place + 1
        starts.append(at)
        self._starts = starts
        return pieces

    def _pieces(self, ids: Offsets, entries: dict[int, _Entry]) -> list[str]:
        """The pieces in any order: each run of kept blocks that follow each other in the
        last text as one slice of it, each block printed now as itself."""
        if not ids:
            self._starts = _offsets(0)
            return []
        cache = self._cache
        old, base = cache._text.text, cache._base
        kept = dict(zip(cache._ids, cache._starts, strict=False))
        # Where each block starts in the last text; a block printed now gets a start of its
        # own far below zero, so that no run goes through it.
        starts = list(map(kept.get, ids, range(_APART, _APART * (len(ids) + 1), _APART)))
        for at in self._fresh_places(ids):
            starts[at] = _APART * (at + 1)
        lengths = list(map(_LENGTH, map(entries.__getitem__, ids)))
        ends = list(map(operator.add, starts, lengths))
        breaks = compress(range(1, len(ids)), map(operator.ne, starts[1:], ends))
        pieces: list[str] = []
        first = 0
        for last in (*breaks, len(ids)):
            if starts[first] < 0:  # printed now: a run of one
                pieces.append(entries[ids[first]].text or "")
            else:
                pieces.append(old[base + starts[first] : base + ends[last - 1]])
            first = last
        self._starts = array("q", accumulate(lengths, initial=0))
        return pieces

    def splice(self, rendered: str) -> str:
        """The whole text: `rendered` (the template's output) with the route blocks where it
        printed the marker, joined once, and kept as the blocks of the next render. Joining
        the blocks into a string of their own first cost another 7 MB block of memory to
        fill at each edit (10,000 routes)."""
        head, marker, tail = rendered.partition(MARKER)
        if not marker:  # the template did not print them: keep nothing
            self._cache._forget()
            return rendered
        text = "".join((head, *self._blocks, tail))
        for entry in self._fresh:
            entry.text = None  # it is in `text` now
        inputs = (self._origins, self._route_hooks, self._allow_from_files)
        self._cache._keep(
            self._scope,
            self._printed,
            inputs,
            text=PackedText(text),
            base=len(head),
            ids=self._ids,
            starts=self._starts,
        )
        # The render's context may be a cycle the collector frees later: let go of the
        # pieces (7 MB at 10,000 routes) now.
        self._blocks, self._fresh, self._printed = [], [], {}
        self._ids, self._starts = _offsets(), _offsets(0)
        return text
