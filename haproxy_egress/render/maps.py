"""The policy of each proxy/tls route as haproxy map files: the lists live in files, not in
haproxy.cfg, so editing a list changes only file contents (the runtime API can swap them).

Pure: `render_maps(config)` → file name → content; runtime/staging.write_maps writes them into
RunDir.maps, and the decision chain (render/decision/) reads each as `<maps dir>/<name>`.

First match over rules of three kinds (names, domains, networks) and a final `*` is turned into
a handful of lookups whose number does not depend on the rules (or on the client groups):

- `<route>.domains.map` (`map_end`, longest suffix first) names the most specific domain of
  any rule that the destination is in; `<route>.networks.map` (`map_ip`) the most specific
  network key (classes.key_prefixes). An exact name is looked up directly.
- `<route>.index.map` (`map_str_int`) gives, for that name or network, the client group and
  the port (`<class>/<group>/<port>`, else `<class>/<group>/*`), the lowest index of the
  group's rules that match: every rule matching a destination covers its most specific
  match, so that one entry answers for all. `*/<group>` is the group's `*` rule.
  The template takes the lowest of the three answers: first match.
- `<route>.rules.map`: `<group>/<index>` → a `vocabulary.Action` (`report`: a deny of a
  report-only group), and `<group>/<RuleId.DEFAULT>` for no match; `<route>.reasons.map`
  the rule as written, for the 403 body.
- `<route>.groups.map` (`map_ip` on the client address) → the client group; on a route that
  asks for proxy credentials, → a label of the groups whose sources hold the address, and
  `<route>.members.map` (`<label>/<user>`, `<label>/` for no user) → the first of them that
  admits the user; `<route>.users.map` → each proxy user's `SALT:DIGEST` (config/users.py);
  `<route>.classes.map` (`map_ip`) → the refused address class, `none` where none is;
  `<route>.self.map` → the router's own addresses; `<route>.ports.acl` its listen ports;
  `<route>.doh.acl` the DNS-over-HTTPS resolvers denied before any rule (`deny_doh`), whose
  `<group>/doh` entries in the rules and reasons maps say deny (or report) and `@doh`.

The rule kinds' own `table`/`patterns` (config/policy.py) say which key each rule occupies;
tests/integration/test_policy_differential.py proves the lookups equal `policy.decide`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from haproxy_egress.config import classes
from haproxy_egress.config import policy as p
from haproxy_egress.config.categories import CATEGORIES
from haproxy_egress.config.document import Config
from haproxy_egress.config.route import Route
from haproxy_egress.config.users import ProxyUser
from haproxy_egress.config.vocabulary import Action, RuleId, Via
from haproxy_egress.render.acls import render_acls

TABLES = ("groups", "domains", "networks", "index", "rules", "reasons", "classes", "self")
CREDENTIAL_TABLES = ("members", "users")  # only routes that ask for proxy credentials
ACLS = ("ports", "doh")
# How haproxy reads each file: a map's converter, an ACL file's match method (render/decision/
# builds the lookups from this, so no template names one).
MATCH = {
    "groups": "map_ip",
    "domains": "map_end",
    "networks": "map_ip",
    "index": "map_str_int",
    "rules": "map_str",
    "reasons": "map_str",
    "classes": "map_ip",
    "self": "map_ip",
    "members": "map_str",
    "users": "map_str",
    "ports": "int",
    "doh": "str",
    "direct-hosts": "map_str",
    "direct-domains": "map_end",
    "direct-networks": "map_ip",
    "parent": "map_str",
}
NAME = re.compile(r"^[a-z0-9._-]+\.(map|acl)$")
NONE = "none"
ALL = ("0.0.0.0/0", "::/0")


def file_name(route: Route, table: str) -> str:
    """The map (or ACL) file of one table of one route (route names are file-safe)."""
    return f"{route.name}.{table}.{'acl' if table in ACLS else 'map'}"


def route_files(route: Route) -> dict[str, str]:
    """Table → file name, for the template."""
    return {table: file_name(route, table) for table in (*TABLES, *CREDENTIAL_TABLES, *ACLS)}


def _lines(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries)


def _first(rules: Sequence[p.Rule], matching: Iterable[int]) -> tuple[int | None, dict[int, int]]:
    """(lowest port-less index, port → lowest index applying to that port) of `matching`."""
    indices = sorted(matching)
    anyport = next((i for i in indices if not rules[i - 1].ports), None)
    ports: dict[int, int] = {}
    for i in indices:
        for port in rules[i - 1].ports:
            ports.setdefault(port, i)
    # A port entry is needed only where a port-specific rule comes before the port-less one.
    return anyport, {port: i for port, i in ports.items() if anyport is None or i < anyport}


def _index_entries(
    key: str, rules: Sequence[p.Rule], matching: Iterable[int]
) -> list[tuple[str, str]]:
    anyport, ports = _first(rules, matching)
    out = [(f"{key}/{port}", str(i)) for port, i in sorted(ports.items())]
    if anyport is not None:
        out.append((f"{key}/*", str(anyport)))
    return out


def route_maps(route: Route, guard: p.Guard, users: Sequence[ProxyUser] = ()) -> dict[str, str]:
    """The map files of one policy route, with its guard (Config.guard) and, when it asks for
    credentials, the proxy users."""
    groups = route.groups
    hosts = sorted(
        {n for g in groups for r in g.rules if r.kind in ("host", "category") for n in r.patterns()}
    )
    domains = sorted(
        {r.value for g in groups for r in g.rules if r.kind == "domain"},
        key=lambda d: (-len(d), d),
    )
    networks = {r.network for g in groups for r in g.rules if isinstance(r, p.NetworkRule)}
    keys = classes.key_prefixes(networks)

    index: list[tuple[str, str]] = []
    actions: list[tuple[str, str]] = []
    reasons: list[tuple[str, str]] = []
    # Who holds each pattern: pattern → group → rule indices. A destination's matching rules
    # are found by walking up from its most specific key (label suffixes of a name, supernets
    # of a network), so compiling costs keys x depth, not keys x rules.
    hosts_of: dict[str, dict[str, list[int]]] = {}
    domains_of: dict[str, dict[str, list[int]]] = {}
    nets_of: dict[tuple[int, int, int], dict[str, list[int]]] = {}
    by_name = {g.name: g for g in groups}
    for g in groups:
        for i, r in enumerate(g.rules, start=1):
            if r.kind in ("host", "category"):  # a category: each of its names, as a host
                for name in r.patterns():
                    hosts_of.setdefault(name, {}).setdefault(g.name, []).append(i)
            elif r.kind == "domain":
                domains_of.setdefault(r.value, {}).setdefault(g.name, []).append(i)
            elif isinstance(r, p.NetworkRule):
                net = r.network
                key = (net.version, int(net.network_address), net.prefixlen)
                nets_of.setdefault(key, {}).setdefault(g.name, []).append(i)

    def emit(key: str, found: dict[str, list[int]]) -> None:
        for name, matching in found.items():
            index.extend(_index_entries(f"{key}/{name}", by_name[name].rules, matching))

    for host in hosts:
        found = {name: list(idx) for name, idx in hosts_of[host].items()}
        for suffix in _suffixes(host):
            for name, idx in domains_of.get(suffix, {}).items():
                if name in found:  # else the domain lookup answers the same
                    found[name] += idx
        emit(f"={host}", found)
    for domain in domains:
        found = {}
        for suffix in _suffixes(domain):
            for name, idx in domains_of.get(suffix, {}).items():
                found.setdefault(name, []).extend(idx)
        emit(f".{domain}", found)
    for k in keys:
        found = {}
        for supernet in _supernets(k.inner if k.inner is not None else k.prefix):
            for name, idx in nets_of.get(supernet, {}).items():
                found.setdefault(name, []).extend(idx)
        emit(str(k.prefix), found)
    for g in groups:
        rules = g.rules
        wildcard = [i for i, r in enumerate(rules, start=1) if r.kind == "any"]
        if wildcard:
            index.append((f"*/{g.name}", str(wildcard[0])))
        deny = Action.DENY if g.enforce else Action.REPORT
        for i, r in enumerate(rules, start=1):
            action = deny if r.action == Action.DENY else Action.ALLOW
            if action == Action.ALLOW and r.is_address_rule:
                action = Action.ALLOW_ADDRESS
            actions.append((f"{g.name}/{i}", action))
            reasons.append((f"{g.name}/{i}", r.ascii_text))
        actions.append((f"{g.name}/{RuleId.DEFAULT}", deny))
        if route.deny_doh:
            actions.append((f"{g.name}/{p.DOH}", deny))
            reasons.append((f"{g.name}/{p.DOH}", f"@{p.DOH}"))

    if route.asks_credentials:
        sources, members = _member_entries(groups)
        credentials = {
            file_name(route, "groups"): _lines(sources),
            file_name(route, "members"): _lines(members),
            file_name(route, "users"): _lines((u.name, u.entry) for u in users),
        }
    else:
        credentials = {file_name(route, "groups"): _lines(_group_entries(groups))}
    return {
        **credentials,
        file_name(route, "domains"): _lines((f".{d}", f".{d}") for d in domains),
        file_name(route, "networks"): _lines((str(k.prefix), str(k.prefix)) for k in keys),
        file_name(route, "index"): _lines(index),
        file_name(route, "rules"): _lines(actions),
        file_name(route, "reasons"): _lines(reasons),
        file_name(route, "classes"): _lines(_class_entries(guard)),
        file_name(route, "self"): _lines(
            (str(k.prefix), classes.SELF)
            for k in classes.key_prefixes(guard.own_networks)
            if any(k.covered_by(n) for n in guard.own_networks)
        ),
        file_name(route, "ports"): "".join(f"{port}\n" for port in guard.own_ports),
        # deny_doh: the names denied before any rule (the template loads it only then).
        file_name(route, "doh"): "".join(f"{n}\n" for n in CATEGORIES[p.DOH])
        if route.deny_doh
        else "",
    }


# Parent proxies (config/parent.py): the direct list as three lookups (any match: direct), and
# the parent credential, which only this file holds (mode 0600 in the run dir, swapped at
# runtime on rotation; never in haproxy.cfg, whose header line names the map only).
PARENT_TABLES = ("direct-hosts", "direct-domains", "direct-networks", "parent")
PARENT_CREDENTIAL_KEY = "basic"
_DIRECT_TABLE = {
    p.HOSTS: "direct-hosts",
    p.DOMAINS: "direct-domains",
    p.NETWORKS: "direct-networks",
}


def parent_files(route: Route) -> dict[str, str]:
    """Parent table → file name, for the template (empty for a route without parents)."""
    return {t: file_name(route, t) for t in PARENT_TABLES} if route.parents else {}


def parent_maps(route: Route) -> dict[str, str]:
    """The direct-list and credential map files of a route with parent proxies."""
    parent = route.parents
    if parent is None:
        return {}
    tables: dict[str, list[tuple[str, str]]] = {t: [] for t in PARENT_TABLES}
    for rule in parent.direct_rules:
        if rule.table is not None:
            tables[_DIRECT_TABLE[rule.table]] += [(k, Via.DIRECT) for k in rule.patterns()]
    if parent.credential is not None:
        tables["parent"].append((PARENT_CREDENTIAL_KEY, parent.credential))
    return {file_name(route, t): _lines(entries) for t, entries in tables.items()}


def _suffixes(name: str) -> Iterable[str]:
    """`a.b.c` → `a.b.c`, `b.c`, `c`: the domains a name is in (DomainRule.matches_target)."""
    labels = name.split(".")
    return (".".join(labels[i:]) for i in range(len(labels)))


def _supernets(network: classes.Network) -> Iterable[tuple[int, int, int]]:
    """The network and every shorter prefix containing it, as (version, address, length)."""
    bits = network.max_prefixlen
    address = int(network.network_address)
    for length in range(network.prefixlen, -1, -1):
        mask = ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)
        yield network.version, address & mask, length


def _holding(groups: Sequence[p.Group]) -> Iterable[tuple[str, list[p.Group]]]:
    """Each client-address key, and the groups whose sources hold it, in order (a group
    without sources holds every address)."""

    def sources(g: p.Group) -> tuple[classes.Network, ...]:
        return g.sources or tuple(ipaddress.ip_network(n) for n in ALL)

    nets = {n for g in groups for n in sources(g)}
    for k in classes.key_prefixes(nets):
        yield str(k.prefix), [g for g in groups if any(k.covered_by(n) for n in sources(g))]


def _group_entries(groups: Sequence[p.Group]) -> list[tuple[str, str]]:
    """Client address → the first group whose sources hold it."""
    return [(key, held[0].name if held else NONE) for key, held in _holding(groups)]


def _member_entries(
    groups: Sequence[p.Group],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Client address → a label of the groups holding it; and `<label>/<user>` → the first of
    those that admits the user (policy.select_group), `<label>/` → the first for no user."""
    labels: dict[tuple[str, ...], str] = {}
    sources: list[tuple[str, str]] = []
    members: list[tuple[str, str]] = []
    for key, held in _holding(groups):
        names = tuple(g.name for g in held)
        if names not in labels:
            label = labels[names] = f"s{len(labels) + 1}"
            fallback = next((g.name for g in held if g.takes(None)), NONE)
            members.append((f"{label}/", fallback))
            for user in sorted({u for g in held for u in g.users}):
                first = next(g.name for g in held if g.takes(user))
                if first != fallback:
                    members.append((f"{label}/{user}", first))
        sources.append((key, labels[names]))
    return sources, members


def _class_entries(guard: p.Guard) -> list[tuple[str, str]]:
    """Address → the most specific refused class (the longest covering network wins)."""
    nets = [(n, c) for c in guard.classes for n in classes.BY_NAME[c].networks]
    out = []
    for k in classes.key_prefixes(n for n, _ in nets):
        covering = [(n.prefixlen, c) for n, c in nets if k.covered_by(n)]
        out.append((str(k.prefix), max(covering)[1] if covering else NONE))
    return out


def render_maps(config: Config) -> dict[str, str]:
    """Every map file the config's policy routes load: file name → content."""
    files: dict[str, str] = {}
    for route in config.policy_routes:
        files.update(route_maps(route, config.guard(route), config.proxy_users))
        files.update(parent_maps(route))
    for name in files:
        if not NAME.match(name):  # route names are validated; this keeps the contract honest
            raise ValueError(f"map file name {name!r} does not match {NAME.pattern}")
    return files


def pattern_files(config: Config) -> dict[str, str]:
    """Every pattern file the config loads with `-f` (under RunDir.maps): the allow_from ACLs
    and the policy routes' maps. A list edit changes only these, never haproxy.cfg."""
    return {**render_acls(config), **render_maps(config)}
