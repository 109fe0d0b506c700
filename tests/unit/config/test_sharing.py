"""Validated routes share their equal parts (config/sharing.py), and nothing a reader of the
model can see changes: equality, a copy with an update, values equal by `==` across types."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from haproxy_egress.config.route import Route, replaced
from haproxy_egress.config.sharing import Sharing
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot


def _routes(count: int) -> bytes:
    routes = [
        {
            "name": f"r{i}",
            "listen": 20000 + i,
            "destinations": [f"192.0.2.{i % 2 + 1}:443"],
            "check": {"enabled": False},
            "allow_from": ["10.0.0.0/8"],
            "idle_timeout": "1h",
        }
        for i in range(count)
    ]
    return yaml.safe_dump({"version": 1, "routes": routes}).encode()


def _load(count: int) -> tuple[Route, ...]:
    snap = Snapshot(Path("/cfg"), (("a.yaml", _routes(count)),))
    return load_snapshot(snap, {}).routes


def test_a_load_shares_what_its_routes_repeat() -> None:
    routes = _load(4)
    first, second, third = routes[0], routes[1], routes[2]
    assert first.check is second.check  # a whole sub-model, equal field by field
    assert first.allow_from is second.allow_from
    assert first.idle_timeout is second.idle_timeout  # an int above the small-int cache
    assert first.check.model_fields_set is second.check.model_fields_set
    assert first.destinations[0] is third.destinations[0]  # the same endpoint
    assert first.destinations[0] is not second.destinations[0]
    assert first.listen is not second.listen
    # Each route is still its own object, equal to what an unshared validation gives.
    assert len({id(r) for r in routes}) == 4
    alone = _load(1)[0]
    assert alone == first
    assert first != second


def test_a_copy_with_an_update_does_not_touch_the_routes_it_shares_with() -> None:
    first, second = _load(2)
    copy = replaced(first, maxconn=10)
    assert (copy.maxconn, first.maxconn, second.maxconn) == (10, None, None)
    assert copy.check is first.check  # the parts it did not update are the very same
    assert copy == replaced(first, maxconn=10)
    assert copy != first
    with pytest.raises(TypeError, match="not a field: maxconns"):
        replaced(first, maxconns=10)


def test_a_route_holds_its_fields_in_slots() -> None:
    route = _load(1)[0]
    assert not hasattr(route, "__dict__")  # no dict per route: 10,000 of them are kept
    assert route.guard_classes is route.guard_classes  # derived once, then kept


def test_values_equal_across_types_are_never_merged() -> None:
    sharing = Sharing()
    one, true, one_float = sharing.value((1,)), sharing.value((True,)), sharing.value((1.0,))
    assert type(one[0]) is int
    assert type(true[0]) is bool
    assert type(one_float[0]) is float
    assert sharing.value((1,)) is one
    assert sharing.value("tcp" + str(len("ab"))) is sharing.value("tcp2")
