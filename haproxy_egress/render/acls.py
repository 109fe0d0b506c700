"""The pattern files of `allow_from` lists: route → file name → content (pure).

Each tcp/http route with an `allow_from` list reads it from an ACL file under the run dir's
maps directory (`acl client_allowed src -f <file>`), so an edit of the list changes that file
only, and the runtime API can swap it in one step (`prepare acl` / `add acl @V` /
`commit acl @V`) without a new haproxy worker. Policy routes keep their lists inline.

Routes with the same list share one file, named after the first of them by name: haproxy
finds a pattern file by walking the list of every file it has loaded, so one file per route
made `haproxy -c` of 10,000 routes under one `defaults` list quadratic (about 8 s instead of
0.5). Editing the shared list (the `defaults`, say) still changes one file's content: a
runtime swap; a route leaving or joining a group of routes changes file names: a reload.
"""

from __future__ import annotations

from haproxy_egress.config.model import Config, Route

__all__ = ["allow_from_files", "render_acls", "uses_allow_from_file"]


def uses_allow_from_file(route: Route) -> bool:
    """A route whose frontend reads allow_from from its file (haproxy.cfg.j2)."""
    return bool(route.allow_from) and not route.is_policy


# The text of each allow_from list seen by the last call, by the identity of the route's
# tuple: routes the load cache handed back unchanged keep their tuple, and formatting 10,000
# lists of networks on every edit was most of what an edit's render cost.
_texts: dict[int, tuple[tuple[object, ...], tuple[str, ...]]] = {}


def _keys(routes: list[Route]) -> dict[str, tuple[str, ...]]:
    """Route name → its allow_from networks as text."""
    seen: dict[int, tuple[tuple[object, ...], tuple[str, ...]]] = {}
    out = {}
    for r in routes:
        nets = r.allow_from
        known = _texts.get(id(nets)) or seen.get(id(nets))
        if known is None or known[0] is not nets:
            known = (nets, tuple(str(net) for net in nets))
        seen[id(nets)] = known  # holds the tuple, so its id names nothing else meanwhile
        out[r.name] = known[1]
    _texts.clear()
    _texts.update(seen)
    return out


# The last answer, for the very same routes: one compile asks twice (the template, the files).
_last: list[tuple[tuple[Route, ...], dict[str, str]]] = []


def allow_from_files(config: Config) -> dict[str, str]:
    """Route name → the file (under RunDir.maps) holding its allow_from networks."""
    if _last and _last[0][0] is config.routes:
        return _last[0][1]
    routes = sorted((r for r in config.routes if uses_allow_from_file(r)), key=lambda r: r.name)
    keys = _keys(routes)
    first: dict[tuple[str, ...], str] = {}
    for r in routes:
        first.setdefault(keys[r.name], r.name)
    files = {r.name: f"allow-from.{first[keys[r.name]]}.acl" for r in routes}
    _last[:] = [(config.routes, files)]
    return files


def render_acls(config: Config) -> dict[str, str]:
    """Every allow_from ACL file of `config`: name → content, one network per line."""
    files = allow_from_files(config)
    by_name = {r.name: r for r in config.routes}
    out: dict[str, str] = {}
    for name, file in files.items():
        if file not in out:  # a shared file: every route of it has the same list
            out[file] = "".join(f"{net}\n" for net in by_name[name].allow_from)
    return out
