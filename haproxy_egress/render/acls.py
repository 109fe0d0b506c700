"""The pattern files of `allow_from` lists: route → file name → content (pure).

Each tcp/http route with an `allow_from` list reads it from its own ACL file under the run
dir's maps directory (`acl client_allowed src -f <file>`), so an edit of the list changes
that file only, and the runtime API can swap it in one step (`prepare acl` / `add acl @V` /
`commit acl @V`) without a new haproxy worker. Policy routes keep their lists inline.
"""

from __future__ import annotations

from haproxy_egress.config.model import Config, Route

__all__ = ["allow_from_file", "render_acls", "uses_allow_from_file"]


def allow_from_file(route_name: str) -> str:
    """The file name (under RunDir.maps) holding a route's allow_from networks."""
    return f"allow-from.{route_name}.acl"


def uses_allow_from_file(route: Route) -> bool:
    """A route whose frontend reads allow_from from its file (haproxy.cfg.j2)."""
    return bool(route.allow_from) and not route.is_policy


def render_acls(config: Config) -> dict[str, str]:
    """Every allow_from ACL file of `config`: name → content, one network per line."""
    return {
        allow_from_file(r.name): "".join(f"{net}\n" for net in r.allow_from)
        for r in config.routes
        if uses_allow_from_file(r)
    }
