"""What a change leaves behind is freed when it is done (runtime/memory.py `after_change`)."""

from __future__ import annotations

import weakref

from haproxy_egress.config.sources import LoadCache, gc_paused
from haproxy_egress.render.blocks import BlockCache
from haproxy_egress.render.compiler import render
from haproxy_egress.runtime import memory
from tests.unit.render.test_blocks import OPTIONS, _load


def test_the_config_a_render_was_given_is_freed_when_the_change_is_done() -> None:
    loads, blocks = LoadCache(), BlockCache()
    with gc_paused():  # no automatic pass meanwhile, as during a change
        config = _load(loads)
        render(config, OPTIONS, blocks=blocks)
        given = weakref.ref(config)
        del config
        # jinja2's render context and its macros are a cycle, and the context holds the
        # config: only the cyclic collector frees it.
        memory.release()
        assert given() is not None
        memory.after_change()
        assert given() is None
