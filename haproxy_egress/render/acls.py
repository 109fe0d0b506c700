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

from dataclasses import dataclass

from haproxy_egress.config.document import Config
from haproxy_egress.config.route import Route

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


@dataclass
class _Files:
    """One answer of `allow_from_files` and what it was made of, to derive the next one from:
    the routes (by identity), each file-reading route's list as text, the names per list and
    each list's file."""

    routes: tuple[Route, ...]
    members: dict[int, Route]
    files: dict[str, str]
    lists: dict[str, tuple[str, ...]]  # route name → its networks as text
    groups: dict[tuple[str, ...], set[str]]  # a list → the names of the routes with it
    named: dict[tuple[str, ...], str]  # a list → its file


# The last answer: one compile asks twice (the template, the files), and an edit asks for
# routes that differ from the last ones by a few.
_last: list[_Files] = []


def _answer(config: Config) -> _Files:
    last = _last[0] if _last else None
    if last is not None and last.routes is config.routes:
        return last
    found = _since(last, config.routes) if last is not None else None
    if found is None:
        found = _all(config.routes)
    _last[:] = [found]
    return found


def allow_from_files(config: Config) -> dict[str, str]:
    """Route name → the file (under RunDir.maps) holding its allow_from networks."""
    return _answer(config).files


def _file(first: str) -> str:
    return f"allow-from.{first}.acl"


def _all(all_routes: tuple[Route, ...]) -> _Files:
    routes = sorted((r for r in all_routes if uses_allow_from_file(r)), key=lambda r: r.name)
    lists = _keys(routes)
    groups: dict[tuple[str, ...], set[str]] = {}
    named: dict[tuple[str, ...], str] = {}
    for r in routes:
        named.setdefault(lists[r.name], _file(r.name))
        groups.setdefault(lists[r.name], set()).add(r.name)
    files = {r.name: named[lists[r.name]] for r in routes}
    return _Files(all_routes, {id(r): r for r in all_routes}, files, lists, groups, named)


def _since(last: _Files, all_routes: tuple[Route, ...]) -> _Files | None:
    """The answer for `all_routes` from the last one, looking only at the routes that are
    not the last ones' (the load cache hands unchanged routes back): routes leaving or
    joining a list rename its file only when the first name of the list changes."""
    now = dict(zip(map(id, all_routes), all_routes, strict=True))
    if len(now) != len(all_routes):
        return None  # one route object twice: start afresh
    gone_ids = last.members.keys() - now.keys()
    gone = [last.members[i] for i in gone_ids]
    new = [now[i] for i in now.keys() - last.members.keys()]
    # The kept routes keep their entries (and the ints naming them): 10,000 new ones per
    # edit left the heap fragmented.
    members = dict(last.members)
    for i in gone_ids:
        del members[i]
    members.update((id(r), r) for r in new)
    files, lists, named = dict(last.files), dict(last.lists), dict(last.named)
    groups = dict(last.groups)
    touched: set[tuple[str, ...]] = set()

    def group(key: tuple[str, ...]) -> set[str]:
        if key not in touched:  # copied before it changes: the last answer stays as it was
            touched.add(key)
            groups[key] = set(groups.get(key, ()))
        return groups[key]

    for r in gone:
        if r.name in lists:
            group(lists.pop(r.name)).discard(r.name)
            del files[r.name]
    joined = []
    for r in new:
        if uses_allow_from_file(r):
            key = lists[r.name] = tuple(str(net) for net in r.allow_from)
            group(key).add(r.name)
            joined.append(r.name)
    for key in touched:
        names = groups[key]
        if not names:
            del groups[key]
            named.pop(key, None)
            continue
        name = _file(min(names))
        if named.get(key) != name:  # the list's first route changed: every member moves
            named[key] = name
            files.update(dict.fromkeys(names, name))
    files.update((n, named[lists[n]]) for n in joined)
    return _Files(all_routes, members, files, lists, groups, named)


def render_acls(config: Config) -> dict[str, str]:
    """Every allow_from ACL file of `config`: name → content, one network per line."""
    answer = _answer(config)
    by_file = sorted((file, key) for key, file in answer.named.items())
    return {file: "".join(f"{net}\n" for net in key) for file, key in by_file}
