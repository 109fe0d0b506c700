"""Incremental loading: an unchanged key is not parsed again, an unchanged route not validated
again, and the checks across routes still see every route, cached or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from haproxy_egress.config.sources import LoadCache, load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.errors import ConfigError


def _key(first: int, count: int, **override: Any) -> bytes:
    """A YAML key with `count` tcp routes r<first>.. on ports 20000 + i; `override` replaces
    fields of the route whose index is override["at"]."""
    at = override.pop("at", None)
    routes = []
    for i in range(first, first + count):
        route: dict[str, Any] = {
            "name": f"r{i}",
            "listen": 20000 + i,
            "destinations": [f"192.0.2.{i % 250 + 1}:443"],
        }
        if i == at:
            route.update(override)
        routes.append(route)
    return yaml.safe_dump({"version": 1, "routes": routes}, sort_keys=False).encode()


def _snap(**keys: bytes) -> Snapshot:
    return Snapshot(Path("/cfg"), tuple(sorted((f"{k}.yaml", v) for k, v in keys.items())))


def _three_keys(**override: Any) -> Snapshot:
    return _snap(a=_key(0, 5), b=_key(5, 5, **override), c=_key(10, 5))


def test_an_edit_of_one_key_keeps_the_cached_fragments_of_the_others() -> None:
    cache = LoadCache()
    first = load_snapshot(_three_keys(), {}, cache=cache)
    assert (cache.stats.fragments_parsed, cache.stats.routes_validated) == (3, 15)
    before = cache.fragments()

    edited = load_snapshot(_three_keys(at=7, destinations=["198.51.100.9:443"]), {}, cache=cache)
    stats = cache.stats
    assert (stats.fragments_parsed, stats.fragments_reused) == (1, 2)
    # Only the edited route is validated again; its neighbours in the re-parsed key are not.
    assert (stats.routes_validated, stats.routes_reused) == (1, 14)
    after = cache.fragments()
    assert after["a.yaml"] is before["a.yaml"]
    assert after["c.yaml"] is before["c.yaml"]
    assert after["b.yaml"] is not before["b.yaml"]
    # The unchanged routes are the very objects of the first load; the result is what a load
    # without a cache gives.
    assert edited.routes[0] is first.routes[0]
    assert edited.routes[7] is not first.routes[7]
    assert [(d.host, d.port) for d in edited.routes[7].destinations] == [("198.51.100.9", 443)]
    assert edited == load_snapshot(
        _three_keys(at=7, destinations=["198.51.100.9:443"]), {}, cache=LoadCache()
    )


def test_only_what_the_last_load_used_is_kept() -> None:
    cache = LoadCache()
    load_snapshot(_three_keys(), {}, cache=cache)
    load_snapshot(_snap(a=_key(0, 5)), {}, cache=cache)
    assert list(cache.fragments()) == ["a.yaml"]
    assert cache.routes() == 5
    # Kept hollow: where each route was, not its data (a validation needs that, not a reuse).
    (kept,) = cache.fragments().values()
    assert [(r.path, r.data, dict(r.lines)) for r in kept.routes][:2] == [
        ("routes[0]", {}, {}),
        ("routes[1]", {}, {}),
    ]
    # ... and the digest of its data, by which the next load finds the validated route.
    assert {len(r.digest or b"") for r in kept.routes} == {16}
    assert len({r.digest for r in kept.routes}) == 5


def test_a_changed_route_that_conflicts_with_an_unchanged_one_is_refused_with_its_location() -> (
    None
):
    cache = LoadCache()
    load_snapshot(_three_keys(), {}, cache=cache)
    # r7 (b.yaml) takes r1's port (a.yaml, unchanged and cached) and r12's name (c.yaml).
    with pytest.raises(ConfigError) as info:
        load_snapshot(_three_keys(at=7, listen=20001, name="r12"), {}, cache=cache)
    assert cache.stats.fragments_reused == 2
    problems = [str(p) for p in info.value.problems]
    assert any(
        p.startswith("b.yaml:") and "routes[2].listen: listen" in p and "'r1' (a.yaml" in p
        for p in problems
    ), problems
    assert any(
        p.startswith("c.yaml:") and "route name 'r12' is already used by b.yaml" in p
        for p in problems
    ), problems
    # The refused load did not replace what the last good one cached.
    assert cache.routes() == 15


def test_a_route_that_failed_is_reported_again_and_defaults_revalidate_everything() -> None:
    cache = LoadCache()
    for _ in range(2):
        with pytest.raises(ConfigError) as info:
            load_snapshot(_three_keys(at=6, destinations=["not an address"]), {}, cache=cache)
        assert any("b.yaml" in str(p) and "routes[1]" in str(p) for p in info.value.problems)
    load_snapshot(_three_keys(), {}, cache=cache)
    with_defaults = _snap(
        a=b"version: 1\ndefaults: {connect_timeout: 3s}\n" + _key(0, 5).split(b"\n", 1)[1],
        b=_key(5, 5),
        c=_key(10, 5),
    )
    config = load_snapshot(with_defaults, {}, cache=cache)
    assert cache.stats.routes_validated == 15  # every route gets the new default
    assert {r.connect_timeout for r in config.routes} == {3000}  # milliseconds


def test_unchanged_keys_are_taken_whole_edit_after_edit() -> None:
    cache = LoadCache()
    load_snapshot(_three_keys(), {}, cache=cache)
    edits = [
        _snap(a=_key(0, 5), b=_key(5, 5, at=6, destinations=["198.51.100.1:443"]), c=_key(10, 5)),
        _snap(a=_key(0, 5, at=2, listen=21002), b=_key(5, 5), c=_key(10, 5)),
        _snap(a=_key(0, 5, at=2, listen=21002), b=_key(5, 5), c=_key(10, 4)),
        _three_keys(),
    ]
    for snap in edits:
        config = load_snapshot(snap, {}, cache=cache)
        # Only the routes that differ from the last load's (at most one edited and one put
        # back) are validated; whatever the cache held, the result is a load without one.
        stats = cache.stats
        assert stats.routes_validated <= 2
        assert stats.routes_validated + stats.routes_reused == len(config.routes)
        assert config == load_snapshot(snap, {}, cache=LoadCache())
