"""Route blocks kept between renders: an edit of one route renders that route's block only,
and the text is byte for byte what a render without kept blocks prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from haproxy_egress.config.model import Config
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
