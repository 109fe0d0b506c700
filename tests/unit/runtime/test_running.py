"""What the threads beside the loop read (`Running`) keeps only the running config: after a
change, the one it replaced (its whole haproxy.cfg text) is free."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import yaml

from haproxy_egress.config.sources import LoadCache, load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.render.pipeline import Compiled
from haproxy_egress.runtime.supervisor import Running


def _compiled(name: str) -> Compiled:
    route = {"name": name, "listen": 20000, "destinations": ["192.0.2.1:443"]}
    data = yaml.safe_dump({"version": 1, "routes": [route]}).encode()
    config = load_snapshot(Snapshot(Path("/cfg"), (("a.yaml", data),)), {}, cache=LoadCache())
    return Compiled(config, f"# the text of {name}\n", name)


def test_the_route_names_asked_before_a_change_do_not_keep_the_config_it_replaced() -> None:
    running = Running(_compiled("first"))
    assert running.route_names() == frozenset({"first"})
    gone = weakref.ref(running.compiled)
    running.compiled = _compiled("second")  # a runtime edit: no reload asks for names
    gc.collect()
    assert gone() is None
    assert running.route_names() == frozenset({"second"})
