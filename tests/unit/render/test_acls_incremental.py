"""allow_from files derived from the last answer (an edit at 10,000 routes looks at the routes
it changed only) are the files a fresh computation gives, edit after edit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from haproxy_egress.config.document import Config
from haproxy_egress.config.route import Route
from haproxy_egress.render.acls import allow_from_files, render_acls, uses_allow_from_file
from tests.routes import route_from

LISTS: tuple[list[str], ...] = (
    [],
    ["10.0.0.0/8"],
    ["10.0.0.0/8", "192.0.2.0/24"],
    ["198.51.100.7/32"],
)


def _route(name: str, allow: list[str]) -> Route:
    return route_from(
        {
            "name": name,
            "listen": 20000 + ord(name[0]),
            "mode": "tcp",
            "destinations": ["192.0.2.1:443"],
            "allow_from": allow,
        }
    )


# Each name in several versions (other lists): a load holds at most one version of a name,
# and unchanged routes are the same objects from load to load, as the load cache makes them.
UNIVERSE = {name: [_route(name, allow) for allow in LISTS] for name in "abcdefgh"}
loads = st.lists(
    st.dictionaries(st.sampled_from(sorted(UNIVERSE)), st.integers(0, len(LISTS) - 1)),
    min_size=1,
    max_size=10,
)


def _expected(routes: tuple[Route, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """One file per distinct list, named after the first route (by name) with it."""
    users = sorted((r for r in routes if uses_allow_from_file(r)), key=lambda r: r.name)
    first: dict[tuple[str, ...], str] = {}
    for r in users:
        first.setdefault(tuple(str(n) for n in r.allow_from), r.name)
    files = {r.name: f"allow-from.{first[tuple(str(n) for n in r.allow_from)]}.acl" for r in users}
    contents = {
        f"allow-from.{name}.acl": "".join(f"{n}\n" for n in key) for key, name in first.items()
    }
    return files, contents


@settings(max_examples=300, deadline=None)
@given(loads)
def test_files_derived_edit_after_edit_are_the_fresh_ones(sequence: list[dict[str, int]]) -> None:
    for chosen in sequence:
        routes = tuple(UNIVERSE[name][version] for name, version in chosen.items())
        config = Config(routes=routes)
        files, contents = _expected(routes)
        assert allow_from_files(config) == files
        assert render_acls(config) == contents
