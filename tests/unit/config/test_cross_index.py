"""The cross-route checks of a load that takes most routes over from the last one: checking
only the routes that are new against the last load's index finds a collision exactly when the
full check over every route does, and the full check then words and locates it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from haproxy_egress.config.crossroute import Located, checked_routes, cross_route_problems
from haproxy_egress.config.scalars import Listen
from tests.routes import route_from

NAMES = ("a", "b", "c", "d")
LISTENS: tuple[str | int, ...] = (80, 81, "127.0.0.1:80", "127.0.0.2:80", "0.0.0.0:81", "[::]:80")
RESERVED = {"metrics endpoint": Listen(port=9101)}


def _located(name: str, listen: str | int, i: int) -> Located:
    route = route_from(
        {"name": name, "listen": listen, "mode": "tcp", "destinations": ["192.0.2.1:443"]}
    )
    return Located(route, "a.yaml", f"routes[{i}]", i + 1)


# Every route a load may hold; a load holds some of them (the same objects, as the load cache
# hands an unchanged route back), in any order.
UNIVERSE = [
    _located(name, listen, i)
    for i, (name, listen) in enumerate((n, ls) for n in NAMES for ls in (*LISTENS, 9101))
]
loads = st.lists(
    st.lists(st.sampled_from(UNIVERSE), unique_by=id, max_size=6), min_size=1, max_size=8
)


@settings(max_examples=300, deadline=None)
@given(loads)
def test_checking_only_new_routes_agrees_with_the_full_check(sequence: list[list[Located]]) -> None:
    last = None
    for routes in sequence:
        problems, index = checked_routes(routes, RESERVED, last)
        assert problems == cross_route_problems(routes, RESERVED)
        assert (index is None) == bool(problems)
        if index is not None:  # only a load that passed is kept
            assert set(index.members) == {id(r) for r in routes}
            last = index


def test_a_new_route_colliding_with_a_kept_one_is_located_by_the_full_check() -> None:
    kept = [_located("a", 80, 0), _located("b", "127.0.0.1:81", 1)]
    _, index = checked_routes(kept, RESERVED, None)
    assert index is not None
    problems, after = checked_routes([*kept, _located("c", "[::]:81", 2)], RESERVED, index)
    assert after is None
    assert [str(p) for p in problems] == [
        "a.yaml:3: routes[2].listen: listen [::]:81 is already used by route 'b' "
        "(a.yaml: routes[1])"
    ]
    # A route removed frees its name and listener for a new one.
    problems, after = checked_routes([kept[0], _located("b", "127.0.0.1:81", 5)], RESERVED, index)
    assert problems == []
    assert after is not None
