"""Route blocks kept between renders: an edit of one route renders that route's block only,
and the text is byte for byte what a render without kept blocks prints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from haproxy_egress.config.document import Config
from haproxy_egress.config.route import replaced
from haproxy_egress.config.sources import LoadCache, load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.render.blocks import BlockCache
from haproxy_egress.render.compiler import RenderOptions, render

OPTIONS = RenderOptions(run_dir=Path("/run/haproxy-egress"))


def _load(cache: LoadCache, **override: Any) -> Config:
    routes = [
        {
            "name": f"r{i}",
            "listen": 20000 + i,
            "mode": "http" if i % 2 else "tcp",
            "destinations": [f"192.0.2.{i + 1}:443"],
            "allow_from": ["10.0.0.0/8"],
        }
        for i in range(6)
    ]
    routes[3].update(override)
    data = yaml.safe_dump({"version": 1, "routes": routes}).encode()
    return load_snapshot(Snapshot(Path("/cfg"), (("routes.yaml", data),)), {}, cache=cache)


def test_an_edit_renders_only_the_changed_route_and_prints_what_a_full_render_prints() -> None:
    loads, blocks = LoadCache(), BlockCache()
    render(_load(loads), OPTIONS, blocks=blocks)
    assert (blocks.rendered, blocks.reused) == (6, 0)
    for edit in (
        {"destinations": ["198.51.100.1:443"]},
        {"allow_from": ["10.1.0.0/16"]},  # its own ACL file name now: a per-route input
        {"mode": "tcp"},
    ):
        config = _load(loads, **edit)
        text = render(config, OPTIONS, blocks=blocks)
        assert (blocks.rendered, blocks.reused) == (1, 5), edit
        assert text == render(config, OPTIONS, blocks=BlockCache())
    # The same routes: nothing rendered again.
    render(config, OPTIONS, blocks=blocks)
    assert (blocks.rendered, blocks.reused) == (0, 6)


def test_a_change_outside_the_routes_renders_every_block_again() -> None:
    loads, blocks = LoadCache(), BlockCache()
    config = _load(loads)
    render(config, OPTIONS, blocks=blocks)
    other = RenderOptions(run_dir=Path("/elsewhere"))
    text = render(config, other, blocks=blocks)
    assert (blocks.rendered, blocks.reused) == (6, 0)
    assert "/elsewhere/maps/allow-from.r0.acl" in text
    assert text == render(config, other, blocks=BlockCache())


def _routes_in(order: list[int], loads: LoadCache) -> Config:
    """Route r<i> alone in key k<position>.yaml: the keys' names give the routes' order."""
    keys = []
    for at, i in enumerate(order):
        route = {"name": f"r{i}", "listen": 20000 + i, "destinations": [f"192.0.2.{i + 1}:443"]}
        data = yaml.safe_dump({"version": 1, "routes": [route]}).encode()
        keys.append((f"k{at}-{i}.yaml", data))
    return load_snapshot(Snapshot(Path("/cfg"), tuple(sorted(keys))), {}, cache=loads)


def test_routes_moved_added_and_removed_reuse_their_blocks_and_print_the_full_render() -> None:
    loads, blocks = LoadCache(), BlockCache()
    render(_routes_in([0, 1, 2, 3, 4, 5], loads), OPTIONS, blocks=blocks)
    for order, printed in (
        ([0, 1, 2, 3, 4, 5], 0),
        ([0, 1, 9, 2, 3, 4, 5], 5),  # one added in the middle: the keys after it are new
        ([0, 1, 9, 2, 3, 4, 5, 6], 1),  # one added at the end
        ([0, 1, 9, 2, 3, 4], 0),  # two keys gone: the others kept where they were
    ):
        config = _routes_in(order, loads)
        text = render(config, OPTIONS, blocks=blocks)
        assert (blocks.rendered, blocks.reused) == (printed, len(order) - printed), order
        assert text == render(config, OPTIONS, blocks=BlockCache()), order


def test_a_route_printed_again_between_kept_ones_keeps_the_others_in_place() -> None:
    loads, blocks = LoadCache(), BlockCache()
    config = _load(loads)
    render(config, OPTIONS, blocks=blocks)
    for at in (0, 3, 5):
        routes = list(config.routes)
        # Another object for one route (as a key parsed again gives), the rest kept.
        routes[at] = replaced(routes[at])
        config = dataclasses.replace(config, routes=tuple(routes))
        text = render(config, OPTIONS, blocks=blocks)
        assert (blocks.rendered, blocks.reused) == (1, 5), at
        assert text == render(config, OPTIONS, blocks=BlockCache()), at
    # Two routes swap places: both kept blocks, in another order.
    routes = list(config.routes)
    routes[1], routes[4] = routes[4], routes[1]
    swapped = dataclasses.replace(config, routes=tuple(routes))
    text = render(swapped, OPTIONS, blocks=blocks)
    assert (blocks.rendered, blocks.reused) == (0, 6)
    assert text == render(swapped, OPTIONS, blocks=BlockCache())


def test_the_kept_blocks_are_the_rendered_text_itself_not_a_copy() -> None:
    loads, blocks = LoadCache(), BlockCache()
    render(_load(loads), OPTIONS, blocks=blocks)
    text = render(_load(loads, destinations=["198.51.100.1:443"]), OPTIONS, blocks=blocks)
    # What the cache keeps of the blocks is where they are in the text the compile holds.
    assert blocks._text.text is text
    assert blocks.holder(text) is blocks._text  # the compile and the cache share one holder
    assert all(entry.text is None for entry in blocks._entries.values())
    assert len(blocks._starts) == len(blocks._ids) + 1 == 6 + 1


def test_blocks_kept_deflated_splice_the_same_text() -> None:
    loads, blocks = LoadCache(), BlockCache()
    render(_load(loads), OPTIONS, blocks=blocks)
    blocks.pack()  # a change is done: the kept text is deflated until the next render
    assert blocks._text.packed
    edited = render(_load(loads, destinations=["198.51.100.1:443"]), OPTIONS, blocks=blocks)
    assert blocks.reused == 5  # the unchanged routes' blocks came from the inflated text
    fresh = render(
        _load(LoadCache(), destinations=["198.51.100.1:443"]), OPTIONS, blocks=BlockCache()
    )
    assert edited == fresh
