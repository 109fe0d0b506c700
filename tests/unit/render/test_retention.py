"""What the process keeps after a compile: the caches that make the next edit cheap hold the
latest compile's state, never the one it replaced (the supervisor's memory at 10,000 routes
is bounded by one compiled config, not two)."""

from __future__ import annotations

import gc
import types
import weakref
from pathlib import Path

import yaml

from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import compile_snapshot
from haproxy_egress.settings import Settings


def _snapshot(directory: Path, destination: str) -> Snapshot:
    routes = [
        {"name": f"r{i}", "listen": 20000 + i, "destinations": [f"192.0.2.{i + 1}:443"]}
        for i in range(20)
    ]
    edited = {"name": "web", "listen": 21000, "destinations": [destination]}
    files = (
        ("a.yaml", yaml.safe_dump({"version": 1, "routes": routes}).encode()),
        ("web.yaml", yaml.safe_dump({"version": 1, "routes": [edited]}).encode()),
    )
    return Snapshot(directory, files)


def test_after_an_edit_nothing_keeps_the_compile_it_replaced(tmp_path: Path) -> None:
    settings = Settings(config_dir=tmp_path, run_dir=tmp_path / "run")
    options = RenderOptions(run_dir=settings.run_dir)
    first = compile_snapshot(settings, options, _snapshot(tmp_path, "198.51.100.1:443"))
    gone = weakref.ref(first)
    old_text = first.text
    second = compile_snapshot(settings, options, _snapshot(tmp_path, "198.51.100.2:443"))
    assert second.text != first.text
    del first
    gc.collect()
    assert gone() is None
    # Nor its 7 MB (at 10,000 routes) haproxy.cfg text: the route blocks kept for the next
    # edit are slices of the new text, found by offset.
    holders = [r for r in gc.get_referrers(old_text) if not isinstance(r, types.FrameType)]
    assert holders == []
    third = compile_snapshot(settings, options, _snapshot(tmp_path, "198.51.100.3:443"))
    assert third.text.count("198.51.100.3:443") == 1
    assert third.config.routes[0] is second.config.routes[0]  # the incremental compile held
