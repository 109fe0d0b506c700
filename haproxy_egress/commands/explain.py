"""`haproxy-egress explain DEST`: which route and which rule would allow or deny a destination.

Pure: it reads the validated Config (and, for rule locations, the same sources the loader
read) and sends no traffic to the destination. A name is looked up, when some policy route
could decide it, through the `resolve` callable the caller passes (the CLI gives one that asks
the configured nameservers, haproxy_egress/lookup.py); without it, or with `addresses` given,
nothing is looked up.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from haproxy_egress.config import policy
from haproxy_egress.config.addresses import (
    IPAddress,
    ip_or_none,
    normalize_host,
    parse_ip,
    parse_port,
    split_host_port,
)
from haproxy_egress.config.document import Config
from haproxy_egress.config.parent import Parent
from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import format_duration
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.sources.http_proxy import read_http_proxy
from haproxy_egress.config.sources.raw import Fragment
from haproxy_egress.config.sources.yamlfile import read_yaml
from haproxy_egress.config.tlsmaterial import RouteTls, describe
from haproxy_egress.config.vocabulary import DEFAULT_GROUP, Reason, RuleId, Via
from haproxy_egress.config.vocabulary import Verdict as Word

Resolve = Callable[[str], Sequence[IPAddress]]
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Destination:
    """What `explain` was asked about: host (lower case, no brackets), port, how it travels."""

    host: str
    port: int | None
    scheme: str | None  # http, https, or None for HOST[:PORT]

    @property
    def address(self) -> IPAddress | None:
        """The host when it is an IP literal."""
        return ip_or_none(self.host)


@dataclass(frozen=True)
class RouteVerdict:
    """One route's answer: allowed or not, the rule (with its location), and why.

    `verdict` and `rule_id` are what the live proxy logs and counts for the same request
    (`verdict=`, `rule=`): a `vocabulary.Verdict`; a rule index or a `vocabulary.RuleId`,
    `guard-CLASS`. tests/integration/test_policy_differential.py holds
    the proxy to them.
    """

    route: str
    mode: str
    allowed: bool
    reason: str
    rule: str | None = None  # the rule as written
    location: str | None = None  # "routes.yaml:12" / "EGRESS_HTTP_PROXY_DESTINATION:3"
    verdict: str = ""
    rule_id: str = ""
    group: str = ""
    via: str = ""  # routes with parent proxies: a `vocabulary.Via` (the log's `via=`)


@dataclass(frozen=True)
class Verdict:
    """The overall answer: allowed when some route allows; every route's answer, in order."""

    destination: Destination
    addresses: tuple[IPAddress, ...]
    routes: tuple[RouteVerdict, ...] = field(default_factory=tuple)

    @property
    def allowed(self) -> bool:
        """True when at least one route would carry the destination."""
        return any(r.allowed for r in self.routes)

    def lines(self) -> list[str]:
        """Human-readable report, one line per route (the CLI prints these)."""
        d = self.destination
        where = f"{d.host}:{d.port}" if d.port else d.host
        addrs = ", ".join(map(str, self.addresses)) or "not resolved"
        out = [f"{where} ({addrs}): {'ALLOWED' if self.allowed else 'DENIED'}"]
        for r in self.routes:
            loc = f" [{r.location}]" if r.location else ""
            out.append(
                f"  route {r.route} ({r.mode}): {'allow' if r.allowed else 'deny'}: {r.reason}{loc}"
            )
        if not self.routes:
            out.append("  no route could carry it")
        return out


def parse_destination(text: str) -> Destination:
    """`https://api.github.com`, `http://[2001:db8::1]:8080/x`, `203.0.113.5:22`, `host`.

    ValueError (a usage error) when it is none of these.
    """
    raw = text.strip()
    if "://" in raw:
        parts = urlsplit(raw)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, HOST or HOST:PORT: {text!r}")
        host = normalize_host(parts.hostname)
        port = parts.port or DEFAULT_PORTS[scheme]
        return Destination(host, port, scheme)
    host_text, port_text = split_host_port(raw)
    host = normalize_host(host_text)
    return Destination(host, parse_port(port_text) if port_text is not None else None, None)


def rule_locations(snapshot: Snapshot, env: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Route name → where each policy rule was written ("routes.yaml:12", "EGRESS_...:3")."""
    frags: list[Fragment] = [
        read_yaml(name, data) for name, data in snapshot.files if name.endswith((".yaml", ".yml"))
    ]
    frags += read_http_proxy(dict(snapshot.files), env)
    out: dict[str, tuple[str, ...]] = {}
    for frag in frags:
        for raw in frag.routes:
            rules = raw.data.get("policy")
            name = raw.data.get("name")
            if not isinstance(rules, list) or not isinstance(name, str):
                continue
            locs = []
            for i in range(len(rules)):
                line = raw.lines.get(f"{raw.path}.policy[{i}]")
                locs.append(f"{raw.source}:{line}" if line else f"{raw.source}: {raw.path}")
            out[name] = tuple(locs)
    return out


def _route_verdict(
    config: Config,
    route: Route,
    dest: Destination,
    addresses: Sequence[IPAddress],
    *,
    locations: Sequence[str],
    looked_up: bool,
    client: IPAddress | None = None,
    user: str | None = None,
    tls: Mapping[str, RouteTls] | None = None,
) -> RouteVerdict | None:
    """One route's decision, or None when the route cannot carry this kind of destination."""
    if route.mode == "tls":
        if dest.scheme == "http" or (dest.port is not None and dest.port != route.upstream_port):
            return None
    elif not route.is_policy:
        for d in route.destinations:
            if d.host == dest.host and (dest.port is None or d.port == dest.port):
                outside = _client_refused(route, client)
                if outside is not None:
                    return outside
                reason = f"fixed destination {d.hostport}{_clients_note(route, client)}"
                if route.tls is not None:
                    reason += f"; {describe(route.tls, d.host, (tls or {}).get(route.name))}"
                return RouteVerdict(route.name, route.mode, True, reason)
        return None
    # The listener refuses a client outside `allow_from` before it reads a byte, as haproxy's
    # `tcp-request connection reject unless client_allowed` does: no rule is looked at.
    outside = _client_refused(route, client)
    if outside is not None:
        return outside
    # The proxy connects to the first address of the family the route prefers (do-resolve's
    # family), else to the first of the other; a name without one is decided on the name.
    version = 6 if route.resolve_prefer == "ipv6" else 4
    preferred = [a for a in addresses if a.version == version] or list(addresses)
    address = preferred[0] if preferred else None
    refused = _credentials_refused(config, route, user)
    if refused is not None:
        return RouteVerdict(
            route.name, route.mode, False, refused, verdict=Word.DENY, rule_id=RuleId.PROXY_AUTH
        )
    group = policy.select_group(route.groups, client, user if route.asks_credentials else None)
    if group is None:  # cannot happen: the route's own list admits everyone
        return RouteVerdict(route.name, route.mode, False, "no client group admits it", None)
    # A tls route connects to its upstream port: port rules see that one, as in haproxy.
    port = dest.port if dest.port is not None or route.mode != "tls" else route.upstream_port
    decision = policy.decide(
        group.rules,
        dest.host,
        address,
        port,
        guard=config.guard(route),
        enforce=group.enforce,
        route=route.name,
        group=group.name,
        deny_doh=route.deny_doh,
    )
    location = None
    index = decision.index
    if group.name == DEFAULT_GROUP and index is not None and index - 1 < len(locations):
        location = locations[index - 1]
    allowed = decision.allowed
    reason = decision.reason
    verdict: str = decision.verdict
    if group.name != DEFAULT_GROUP and allowed:
        reason = f"client group {group.name}: {reason}"
    if verdict == policy.REPORT:
        reason = f"{reason} (report only: allowed, logged as {Word.WOULD_DENY})"
    via = ""
    if allowed and route.parents is not None:
        via, how = _via(route.parents, dest.host, address)
        reason = f"{reason}; {how}"
    if allowed and address is None and looked_up and via != Via.PARENT:
        allowed, reason = False, f"{reason}, but the name does not resolve (503)"
        verdict = Word.UNRESOLVED
    if allowed:
        reason += _clients_note(route, client) + _limits_note(route)
    return RouteVerdict(
        route.name,
        route.mode,
        allowed,
        reason,
        decision.rule.text if decision.rule else None,
        location,
        verdict,
        decision.rule_id,
        group.name,
        via,
    )


def _via(parent: Parent, host: str, address: IPAddress | None) -> tuple[str, str]:
    """(a `Via`, words): where the proxy sends an allowed destination."""
    if parent.goes_direct(host, address):
        return Via.DIRECT, "direct (on the parent's direct list)"
    names = [p.hostport for p in parent.proxies]
    if parent.balance == "first":
        order = f"{names[0]}" + (f", failing over to {', '.join(names[1:])}" if names[1:] else "")
    else:
        order = f"round robin over {', '.join(names)}"
    return Via.PARENT, f"via parent {order} (the parent resolves the name)"


def _client_refused(route: Route, client: IPAddress | None) -> RouteVerdict | None:
    """The route's answer when `allow_from` refuses the client (`--from`), else None."""
    if not route.allow_from or client is None:
        return None
    if any(_holds(n, client) for n in route.allow_from):
        return None
    networks = ", ".join(map(str, route.allow_from))
    return RouteVerdict(
        route.name,
        route.mode,
        False,
        f"client {client} is not in allow_from ({networks}): the connection is refused "
        f"before any rule (add the client's network to allow_from to change it)",
        verdict=Word.DENY,
        rule_id=RuleId.ALLOW_FROM,
    )


def _limits_note(route: Route) -> str:
    """The route's limits, which can still refuse an allowed request when they are reached
    (429, or 503 for tunnels): what explain cannot know without traffic, it names."""
    lim = route.limits
    every = format_duration(lim.period)
    bounds = [
        f"{lim.tunnels} CONNECT tunnels at a time (503)" if lim.tunnels else "",
        f"{lim.connection_rate} connections per {every} per client (429)"
        if lim.connection_rate
        else "",
        f"{lim.request_rate} requests per {every} per client (429)" if lim.request_rate else "",
    ]
    shown = ", ".join(b for b in bounds if b)
    return f" (while within its limits: at most {shown})" if shown else ""


def _holds(network: policy.Network, client: IPAddress) -> bool:
    """haproxy's `src` match: an IPv4 client and its `::ffff:` form are the same client."""
    if client.version == 6 and client.ipv4_mapped is not None:
        client = client.ipv4_mapped
    if client.version == network.version:
        return client in network
    return network.version == 6 and ipaddress.IPv6Address(f"::ffff:{client}") in network


def _clients_note(route: Route, client: IPAddress | None) -> str:
    """Without `--from`, a reminder that `allow_from` still decides who may connect."""
    if not route.allow_from or client is not None:
        return ""
    return f" (only for clients in allow_from: {', '.join(map(str, route.allow_from))})"


def _credentials_refused(config: Config, route: Route, user: str | None) -> str | None:
    """Why the proxy answers 407 before any rule (as the route's ACLs do), or None. `user`
    stands for a correct credential of that user: explain never sees a password."""
    if not route.asks_credentials:
        return None
    if user is not None and user not in {u.name for u in config.proxy_users}:
        return f"407: {policy.REFUSALS[Reason.AUTH_WRONG].format(route=route.name)} ({user!r})"
    if user is None and route.proxy_auth == "required":
        missing = policy.REFUSALS[Reason.AUTH_MISSING].format(route=route.name)
        return f"407: {missing} (proxy_auth: required; try --user NAME)"
    return None


def explain(
    config: Config,
    destination: str,
    *,
    locations: Mapping[str, Sequence[str]] | None = None,
    addresses: Sequence[str] | None = None,
    resolve: Resolve | None = None,
    client: str | None = None,
    user: str | None = None,
    tls: Mapping[str, RouteTls] | None = None,
) -> Verdict:
    """Which route and rule would allow or deny `destination`; raises ValueError on bad input.

    `locations` is `rule_locations(snapshot, env)`; `addresses` overrides resolution (the
    `--address` option); `resolve` looks a name up (only called for names); `client` is
    the client's address (`--from`), which chooses the client group of a policy route
    (without it, the route's own list decides); `user` an authenticated proxy user (`--user`),
    which the client groups that name users look at; `tls` the TLS-originating routes'
    loaded material by route name, for the client certificate a route presents.
    """
    dest = parse_destination(destination)
    found: tuple[IPAddress, ...]
    if dest.address is not None:
        found = (dest.address,)
    elif addresses:
        found = tuple(parse_ip(a) for a in addresses)
    elif resolve is not None and any(r.is_policy for r in config.routes):
        # Only policy rules look at addresses: no query when no policy route could decide.
        found = tuple(resolve(dest.host))
    else:
        found = ()
    source = parse_ip(client) if client is not None else None
    verdicts = []
    for route in config.routes:
        locs = (locations or {}).get(route.name, ())
        looked_up = resolve is not None and not found
        v = _route_verdict(
            config,
            route,
            dest,
            found,
            locations=locs,
            looked_up=looked_up,
            client=source,
            user=user,
            tls=tls,
        )
        if v is not None:
            verdicts.append(v)
    return Verdict(dest, found, tuple(verdicts))
