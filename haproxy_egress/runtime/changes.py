"""What an edit changes and how it can be applied: not at all, at runtime, or by a reload.

Pure: two compiled configurations in (their model, haproxy.cfg text and pattern files), a
`Plan` out. The text decides *how* (whatever differs beyond `server` lines of existing
backends and the contents of existing map/ACL files needs a new worker); the model says
*what* in words for the log line, and which established connections the new configuration
no longer admits (`Deny`), so that they, and only they, are ended after the drain time.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from haproxy_egress.config.document import Config
from haproxy_egress.config.route import Route
from haproxy_egress.haproxy.show import Session
from haproxy_egress.render.tls import parse_staged

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

__all__ = [
    "Deny",
    "Kind",
    "Plan",
    "Server",
    "Version",
    "plan",
    "servers",
]


class Kind(enum.Enum):
    """How an edit reaches haproxy (the `kind` label of config_changes_total)."""

    NOOP = "noop"  # nothing haproxy would notice (comments, route origins, same text)
    RUNTIME = "runtime"  # runtime API: servers added/removed, pattern or TLS files swapped
    RELOAD = "reload"  # a new worker: listeners, modes, globals, hooks, options...


@dataclass(frozen=True)
class Server:
    """One `server` line of a backend: name, address and the options after it."""

    backend: str
    name: str
    address: str  # host:port as in the cfg ([v6]:port)
    options: str  # e.g. " check inter 2s rise 2 fall 3"

    @property
    def ref(self) -> str:
        """backend/server, as the runtime API names it."""
        return f"{self.backend}/{self.name}"

    @property
    def host_port(self) -> tuple[str, int]:
        """The address split into host (no brackets) and port."""
        return host_port(self.address)


def host_port(address: str) -> tuple[str, int]:
    """A server line's host:port ([v6]:port) split into host (no brackets) and port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Deny:
    """The established connections of one route that the new configuration refuses."""

    route: str
    reason: str  # in words, for the log line of each ended connection
    everything: bool = False  # route removed, listener/mode/policy/hooks changed
    servers: frozenset[str] = frozenset()  # destinations removed (server names or prefixes)
    allowed: tuple[IPNetwork, ...] | None = None  # clients outside these are refused now

    def covers(self, session: Session) -> bool:
        """True if the new configuration would not admit this session."""
        if session.frontend != self.route:
            return False
        if self.everything:
            return True
        if any(session.server == s or session.server.startswith(f"{s}-") for s in self.servers):
            return True
        if self.allowed is not None:
            try:
                ip = ipaddress.ip_address(session.client)
            except ValueError:
                return False
            return not any(ip.version == n.version and ip in n for n in self.allowed)
        return False


@dataclass(frozen=True)
class Plan:
    """What to do for one edit, and the words for it."""

    kind: Kind
    notes: tuple[str, ...] = ()  # "route db: destinations 2 → 3"
    why: str = ""  # for RELOAD: the first thing the runtime API cannot do
    add: tuple[Server, ...] = ()
    remove: tuple[Server, ...] = ()  # set to maintenance now, deleted after the drain
    files: tuple[tuple[str, str], ...] = ()  # pattern files whose content changes
    # TLS files (under RunDir.tls) whose content changes: a rotated certificate, CA or CRL.
    ssl: tuple[tuple[str, str], ...] = ()
    denies: tuple[Deny, ...] = ()

    def summary(self) -> str:
        """One line: what changed and how it was applied."""
        what = "; ".join(self.notes) or "no route changed"
        if self.kind is Kind.RUNTIME:
            return f"{what}, applied at runtime; no reload"
        if self.kind is Kind.NOOP:
            return f"{what}; nothing for haproxy to do"
        return f"{what}; reload ({self.why})"


# --- the text: sections, with the server lines of backends taken apart --------------------

_SERVER = re.compile(r"^\s+server (\S+) (\S+)(.*)$")


@dataclass(frozen=True)
class _Section:
    body: tuple[str, ...]  # directives without comments and without `server` lines
    servers: Mapping[str, Server]


def _sections(text: str) -> dict[str, _Section]:
    sections: dict[str, tuple[list[str], dict[str, Server]]] = {}
    header = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not line[0].isspace():
            header = stripped
            sections.setdefault(header, ([], {}))
            continue
        body, servers = sections.setdefault(header, ([], {}))
        m = _SERVER.match(line) if header.startswith("backend ") else None
        if m:
            backend = header.split()[1]
            servers[m.group(1)] = Server(backend, m.group(1), m.group(2), m.group(3))
        else:
            body.append(stripped)
    return {h: _Section(tuple(b), s) for h, (b, s) in sections.items()}


# A section header (a line that starts with neither blank nor `#`, as `_sections` reads it),
# or a server line. Scanned by the regex engine, not line by line in Python: at 10,000
# routes the text has 100,000 lines and every edit asks for its servers.
_HEADER_OR_SERVER = re.compile(r"^(?:([^\s#]\S*)[ \t]*(\S*).*|[ \t]+server (\S+) (\S+)(.*))$", re.M)
_NEXT_SECTION = re.compile(r"\n(?=[^\s#])")


def _server_lines(text: str) -> Iterator[tuple[str, re.Match[str]]]:
    """Each `server` line of a haproxy.cfg text's backends, with its backend's name."""
    backend = ""
    for m in _HEADER_OR_SERVER.finditer(text):
        if m.group(1) is not None:
            backend = m.group(2) if m.group(1) == "backend" else ""
        elif backend:
            yield backend, m


def servers(text: str) -> dict[str, Server]:
    """Every server a haproxy.cfg text defines with a `server` line, by backend/server ref."""
    out: dict[str, Server] = {}
    for backend, m in _server_lines(text):
        server = Server(backend, m.group(3), m.group(4), m.group(5).rstrip())
        out[server.ref] = server
    return out


def server_addresses(text: str) -> dict[str, str]:
    """`servers` as backend/server ref → host:port only: at 10,000 routes, 20,000 strings
    instead of 20,000 objects of five, for a reload that needs only the addresses."""
    return {f"{backend}/{m.group(3)}": m.group(4) for backend, m in _server_lines(text)}


_BLOCK = 1 << 16  # compared a slice at a time: C-speed memcmp, a few slices copied


def _common_prefix(a: str, b: str) -> int:
    """The length of the longest common prefix of `a` and `b`."""
    n = min(len(a), len(b))
    lo = 0
    while lo < n and a[lo : lo + _BLOCK] == b[lo : lo + _BLOCK]:
        lo += _BLOCK
    hi = min(lo + _BLOCK, n)
    while lo < hi:  # the first difference is in [lo, hi]: bisect it
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return min(lo, n)


def _common_suffix(a: str, b: str, limit: int) -> int:
    """The length of the longest common suffix of `a` and `b`, at most `limit`."""
    la, lb = len(a), len(b)
    n = 0
    while (
        n < limit
        and a[la - min(n + _BLOCK, limit) : la - n] == b[lb - min(n + _BLOCK, limit) : lb - n]
    ):
        n = min(n + _BLOCK, limit)
    hi = min(n + _BLOCK, limit)
    while n < hi:
        mid = (n + hi + 1) // 2
        if a[la - mid : la - n] == b[lb - mid : lb - n]:
            n = mid
        else:
            hi = mid - 1
    return n


def _section_start(text: str, before: int) -> int:
    """The start of the last section whose header line starts before `before` (0 if none)."""
    i = before - 1
    while i > 0:
        i = text.rfind("\n", 0, i)
        if i < 0:
            return 0
        if text[i + 1 : i + 2] not in ("", " ", "\t", "\n", "#"):
            return i + 1
    return 0


def _changed_sections(
    old_text: str, new_text: str
) -> tuple[dict[str, _Section], dict[str, _Section]]:
    """`_sections` of both texts, of only the sections the texts differ in. An edit changes
    one place of a text that is otherwise byte-identical: the common prefix and suffix are
    found by comparing slices, and only the whole sections around the difference are parsed,
    so an edit of one route at 10,000 does not parse all of them twice."""
    prefix = _common_prefix(old_text, new_text)
    suffix = _common_suffix(old_text, new_text, min(len(old_text), len(new_text)) - prefix)
    # A section boundary inside the common prefix (its header's first character included)
    # is one in both texts, and so is one whose line break lies inside the common suffix.
    start = _section_start(old_text, prefix)
    m = _NEXT_SECTION.search(old_text, len(old_text) - suffix)
    tail = len(old_text) - (m.start() + 1) if m else 0
    return (
        _sections(old_text[start : len(old_text) - tail]),
        _sections(new_text[start : len(new_text) - tail]),
    )


def _structural(
    old: dict[str, _Section], new: dict[str, _Section]
) -> tuple[str, list[Server], list[Server]]:
    """Why the text needs a reload ("" if it does not), and the servers to add and remove."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    if added or removed:
        return f"{(added or removed)[0]} {'added' if added else 'removed'}", [], []
    add: list[Server] = []
    remove: list[Server] = []
    for header, section in new.items():
        before = old[header]
        if section.body != before.body:
            return f"{header} changed beyond its servers", [], []
        for name, server in section.servers.items():
            was = before.servers.get(name)
            if was is None:
                add.append(server)
            elif was != server:
                return f"server {server.ref} changed its options", [], []
        remove += [s for n, s in before.servers.items() if n not in section.servers]
    return "", add, remove


# --- the model: words and denies ----------------------------------------------------------


def _count_change(label: str, old: tuple[object, ...], new: tuple[object, ...]) -> str:
    if len(old) != len(new):
        return f"{label} {len(old)} → {len(new)}"
    return f"{label} changed"


def _route_change(old: Route, new: Route) -> tuple[list[str], Deny | None]:
    """The words for one changed route and what the change denies."""
    words: list[str] = []
    everything: list[str] = []
    servers: set[str] = set()
    allowed: tuple[IPNetwork, ...] | None = None
    for name in sorted(f.name for f in dataclasses.fields(new)):
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name == "destinations":
            words.append(_count_change("destinations", before, after))
            servers = {d.server_name for d in before if d not in after}
        elif name == "allow_from":
            words.append(_count_change("allow_from", before, after))
            # An empty list admits everyone; otherwise a client that only an old entry
            # admitted is refused now (checked per connection against the new list).
            if after and (not before or not set(before) <= set(after)):
                allowed = tuple(after)
        elif name == "policy":
            words.append(_count_change("policy", before, after))
            everything.append("policy changed")
        elif name in ("listen", "mode", "hooks", "destination_port"):
            words.append(f"{name} changed")
            everything.append(f"{name} changed")
        else:
            words.append(f"{name} changed")
    deny = None
    if everything or servers or allowed is not None:
        reasons = everything + (["destination removed"] if servers else [])
        reasons += ["client no longer in allow_from"] if allowed is not None else []
        deny = Deny(
            new.name,
            ", ".join(reasons),
            everything=bool(everything),
            servers=frozenset(servers),
            allowed=allowed,
        )
    return words, deny


def _differing(old: Config, new: Config) -> tuple[dict[str, Route], dict[str, Route]]:
    """The routes of `old` that are not in `new` and those of `new` not in `old`, by name.

    An unchanged route is the very object (the load cache hands it back): at 10,000 routes
    the sets are told apart by identity in the C library, and only the few routes that
    differ are compared field by field."""
    before = dict(zip(map(id, old.routes), old.routes, strict=True))
    after = dict(zip(map(id, new.routes), new.routes, strict=True))
    gone = {before[i].name: before[i] for i in before.keys() - after.keys()}
    came = {after[i].name: after[i] for i in after.keys() - before.keys()}
    return gone, came


def _model_changes(
    old: Config, new: Config, before: dict[str, Route], after: dict[str, Route]
) -> tuple[list[str], list[Deny]]:
    """Notes and denies of the routes that differ (`_differing`) and of the rest."""
    notes: list[str] = []
    denies: list[Deny] = []
    for name in sorted(before.keys() | after.keys()):
        if name not in after:
            notes.append(f"route {name} removed")
            denies.append(Deny(name, "route removed", everything=True))
        elif name not in before:
            notes.append(f"route {name} added")
        elif before[name] != after[name]:
            words, deny = _route_change(before[name], after[name])
            notes.append(f"route {name}: {', '.join(words)}")
            if deny is not None:
                denies.append(deny)
    if old.proxy_users != new.proxy_users:
        notes.append(f"proxy users {len(old.proxy_users)} → {len(new.proxy_users)}")
        # Sessions do not say who authenticated them: once a credential is revoked or
        # re-keyed, every tunnel of a route that checks credentials may be the revoked one's.
        if not set(old.proxy_users) <= set(new.proxy_users):
            had = {r.name for r in old.routes}
            denies += [
                Deny(r.name, "a proxy user removed or re-keyed", everything=True)
                for r in new.routes
                if r.asks_credentials and r.name in had
            ]
    if old.resolvers != new.resolvers:
        notes.append("resolvers changed")
    if old.stats != new.stats:
        notes.append("stats page changed")
    if old.logging != new.logging:
        notes.append("syslog targets changed")
    return notes, denies


def _parents_moved(before: dict[str, Route], after: dict[str, Route]) -> str:
    """Why a changed list of parent proxies needs a reload ("" if none changed): each parent
    is a server in two backends, one tracking the other's checks, which `add server` cannot
    set up; the direct list and the credentials are map files and stay runtime edits.
    `before` and `after` are the routes that differ (`_differing`)."""
    for route in sorted(after.values(), key=lambda r: r.name):
        was_route = before.get(route.name)
        if was_route is None:
            continue  # a new route
        was, now = was_route.parents, route.parents
        if (
            was is not None
            and now is not None
            and (was.proxies, was.balance)
            != (
                now.proxies,
                now.balance,
            )
        ):
            return f"route {route.name}: parent proxies changed"
    return ""


class Version(Protocol):
    """A compiled configuration as the diff sees it (render.pipeline.Compiled is one)."""

    @property
    def config(self) -> Config: ...

    @property
    def text(self) -> str: ...

    @property
    def maps(self) -> Mapping[str, str]: ...

    @property
    def tls_files(self) -> Mapping[str, str]: ...


def plan(old: Version, new: Version, *, runtime: bool = True) -> Plan:
    """Diff two compiled configurations; `runtime=False` turns every change into a reload."""
    before, after = _differing(old.config, new.config)
    notes, denies = _model_changes(old.config, new.config, before, after)
    files = tuple(sorted((n, c) for n, c in new.maps.items() if old.maps.get(n) != c))
    old_tls, new_tls = old.tls_files, new.tls_files
    ssl = tuple(sorted((n, c) for n, c in new_tls.items() if old_tls.get(n) != c))
    if old.config == new.config:
        # Only the Secrets changed: say which material of which route was rotated.
        notes += [_rotated(name) for name, _ in ssl]
    why, add, remove = _structural(*_changed_sections(old.text, new.text))
    if not why:
        why = _parents_moved(before, after)
    if not why and set(old.maps) != set(new.maps):
        why = "pattern files added or removed"
    if not why and set(old_tls) != set(new_tls):
        why = "TLS files added or removed"
    if not why and not runtime:
        why = "runtime changes are turned off (EGRESS_RUNTIME_CHANGES)"
    if why:
        return Plan(Kind.RELOAD, tuple(notes), why, denies=tuple(denies))
    if not add and not remove and not files and not ssl:
        return Plan(Kind.NOOP, tuple(notes))
    return Plan(
        Kind.RUNTIME,
        tuple(notes),
        add=tuple(add),
        remove=tuple(remove),
        files=files,
        ssl=ssl,
        denies=tuple(denies),
    )


def _rotated(name: str) -> str:
    """'partner.crt.pem' → 'route partner: client_cert rotated'."""
    route, kind = parse_staged(name)
    return f"route {route}: {kind.value} rotated"
