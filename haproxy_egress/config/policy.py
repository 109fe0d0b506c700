"""Egress policy rules: parsing and first-match semantics, shared by the compiler and `explain`.

The syntax is Red Hat's `EGRESS_HTTP_PROXY_DESTINATION` (one rule per line, first match wins),
which its egress router compiled into squid ACLs:

- `host.example.com`    the name itself (squid `dstdomain host.example.com`)
- `*.example.com`       the domain and every subdomain (squid `dstdomain .example.com`)
- `192.0.2.7`, `198.51.100.0/24`, `2001:db8::/32`
                        an address or network, matched against the destination's address
                        (squid `dst`); a literal destination is its own address
- `!` in front of any of these denies instead of allowing
- `*`                   allow everything else; only as the last rule
- no `*`                everything not allowed is denied (squid `http_access deny all`)

Extension: a port list after a rule (`*.github.com:443`, `10.0.0.0/8:22,443`,
`[2001:db8::/32]:443`) limits it to those destination ports (squid `port` ACL).

Deliberate differences from squid: a destination whose address is in a refused address class
(classes.py: loopback, link-local, metadata, CGNAT, ...) is denied unless an address rule
allows it explicitly, so a name that rebinds to 127.0.0.1 cannot reach the router's own
ports; the router's own listeners are refused always.

Each rule kind is a type that knows both how `explain` decides it (`matches`) and where its
pattern goes in haproxy's lookup tables (`table`, `patterns`); render/maps.py builds the
tables from exactly these, and tests/integration/test_policy_differential.py runs a generated
corpus through the live proxy and `decide` to prove they agree.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from haproxy_egress.config import classes
from haproxy_egress.config import vocabulary as vocab
from haproxy_egress.config.addresses import DOTS, IPAddress, a_labels, parse_network, parse_port
from haproxy_egress.config.categories import CATEGORIES
from haproxy_egress.config.vocabulary import DEFAULT_GROUP, Reason, RuleId, Verdict, guard_rule

Action = Literal[vocab.Action.ALLOW, vocab.Action.DENY]
Kind = Literal["host", "domain", "network", "any", "category"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_PORTS = re.compile(r"^[0-9]{1,5}(,[0-9]{1,5})*$")
_ADDRESSISH = re.compile(r"^[0-9a-fA-F.:]*[.:][0-9a-fA-F.:]+(/[0-9]+)?$")
WILDCARD_LAST = "Wildcard must be last rule, if present"

# The lookup tables of haproxy's side of the policy (render/maps.py writes one file of each per
# route). Each rule kind names the table its pattern goes in, and the pattern itself, right
# beside the `matches` that `explain` decides with: the two are one definition.
HOSTS, DOMAINS, NETWORKS = "hosts", "domains", "networks"


@dataclass(frozen=True)
class Rule:
    """One parsed rule: allow or deny, what it matches, and the text as written."""

    kind: ClassVar[Kind]
    table: ClassVar[str | None]  # the haproxy lookup table of its pattern (None: no pattern)
    action: Action
    value: str  # host name, domain (no '*.'), network in CIDR form, or '*'
    ports: tuple[int, ...] = ()
    text: str = ""

    @property
    def ascii_text(self) -> str:
        """The rule as written, or, if written in Unicode, with its name's A-labels: what
        haproxy's files and answers carry (they hold ASCII only)."""
        if self.text.isascii():
            return self.text
        ports = ":" + ",".join(map(str, self.ports)) if self.ports else ""
        star = "*." if self.kind == "domain" else ""
        return f"{'!' if self.action == vocab.Action.DENY else ''}{star}{self.value}{ports}"

    @property
    def is_address_rule(self) -> bool:
        """True for rules that name addresses: only these may open a guarded address."""
        return False

    def applies_to_port(self, port: int | None) -> bool:
        """A rule with a port list applies to those ports only."""
        return not self.ports or port in self.ports

    def matches(self, host: str, address: IPAddress | None, port: int | None) -> bool:
        """Whether this rule applies to `host` (lower case, no brackets) at `address`:`port`."""
        return self.applies_to_port(port) and self.matches_target(host, address)

    def matches_target(self, host: str, address: IPAddress | None) -> bool:
        """Whether the name or address part matches (ports aside)."""
        raise NotImplementedError

    def patterns(self) -> tuple[str, ...]:
        """The keys this rule's target occupies in its haproxy table (`table`)."""
        return ()

    def squid(self) -> str:
        """The squid ACL value this rule stands for (`dstdomain`/`dst` argument)."""
        return self.value


@dataclass(frozen=True)
class HostRule(Rule):
    """`host.example.com`: that name only. haproxy: `var(txn.dsthost),map_str(hosts)`."""

    kind: ClassVar[Kind] = "host"
    table: ClassVar[str | None] = HOSTS

    def matches_target(self, host: str, address: IPAddress | None) -> bool:
        return host == self.value

    def patterns(self) -> tuple[str, ...]:
        return (self.value,)


@dataclass(frozen=True)
class DomainRule(Rule):
    """`*.example.com`: the domain and every name below it.

    haproxy: `.` + the destination name, `map_end(domains)` against `.example.com`: a suffix
    match on a label boundary, which is exactly "equal, or ends with .example.com".
    """

    kind: ClassVar[Kind] = "domain"
    table: ClassVar[str | None] = DOMAINS

    def matches_target(self, host: str, address: IPAddress | None) -> bool:
        return ("." + host).endswith("." + self.value)

    def patterns(self) -> tuple[str, ...]:
        return ("." + self.value,)

    def squid(self) -> str:
        return "." + self.value


@dataclass(frozen=True)
class NetworkRule(Rule):
    """`198.51.100.0/24`: a destination whose address is in it (judged as classes.canonical).

    haproxy: `var(txn.dstip),map_ip(networks)` on the network's IPv6 key networks.
    """

    kind: ClassVar[Kind] = "network"
    table: ClassVar[str | None] = NETWORKS

    @property
    def network(self) -> Network:
        """The network of the rule."""
        return ipaddress.ip_network(self.value)

    @property
    def is_address_rule(self) -> bool:
        return True

    def matches_target(self, host: str, address: IPAddress | None) -> bool:
        return address is not None and classes.in_network(address, self.network)

    def patterns(self) -> tuple[str, ...]:
        return tuple(str(n) for n in classes.key_networks(self.network))


@dataclass(frozen=True)
class AnyRule(Rule):
    """`*`: everything (the last rule). haproxy: no lookup, its index stands alone."""

    kind: ClassVar[Kind] = "any"
    table: ClassVar[str | None] = None

    def matches_target(self, host: str, address: IPAddress | None) -> bool:
        return True


@dataclass(frozen=True)
class CategoryRule(Rule):
    """`@doh`: every name of a shipped list (categories.py), each as a host rule would match
    it. haproxy: the names are keys of the route's name index, like host rules'."""

    kind: ClassVar[Kind] = "category"
    table: ClassVar[str | None] = HOSTS

    @property
    def names(self) -> tuple[str, ...]:
        """The names this word stands for."""
        return CATEGORIES[self.value]

    def matches_target(self, host: str, address: IPAddress | None) -> bool:
        return host in self.names

    def patterns(self) -> tuple[str, ...]:
        return self.names

    def squid(self) -> str:
        return " ".join(self.names)


RULE_TYPES: dict[Kind, type[Rule]] = {
    "host": HostRule,
    "domain": DomainRule,
    "network": NetworkRule,
    "any": AnyRule,
    "category": CategoryRule,
}
# The category a policy route denies before its rules, unless it sets `deny_doh: false`; its
# rule id in logs and metrics is the category's name.
DOH = RuleId.DOH


def make_rule(
    action: Action, kind: Kind, value: str, ports: tuple[int, ...] = (), text: str = ""
) -> Rule:
    """A rule of the type for `kind`."""
    return RULE_TYPES[kind](action, value, ports, text)


def _split_ports(text: str) -> tuple[str, tuple[int, ...]]:
    """'pattern:80,443' → ('pattern', (80, 443)); IPv6 patterns need brackets for a port."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']'")
        inner, rest = text[1:end], text[end + 1 :]
        if not rest:
            return inner, ()
        if not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
        return inner, _ports(rest[1:])
    if text.count(":") == 1:
        pattern, ports = text.split(":")
        return pattern, _ports(ports)
    return text, ()


def _ports(text: str) -> tuple[int, ...]:
    if not _PORTS.match(text):
        raise ValueError(f"port list must be like 443 or 80,443 (got {text!r})")
    return tuple(sorted({parse_port(p) for p in text.split(",")}))


def _shown(text: str) -> str:
    """The rule as messages quote it: as written, or repr() when it holds control characters
    (so one problem stays one line whatever the input)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def parse_rule(line: str) -> Rule:
    """One rule line (already stripped of comments) → Rule; ValueError says what is wrong."""
    text = line.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"Bad destination {_shown(text)}: one rule per line, no blanks")
    action: Action = vocab.Action.ALLOW
    body = text
    if body.startswith("!"):
        action, body = vocab.Action.DENY, body[1:]
    if body == "*":
        if action == vocab.Action.DENY:
            raise ValueError(
                "Bad destination '!*': leave out '*' instead (everything not allowed is denied)"
            )
        return AnyRule(vocab.Action.ALLOW, "*", (), text)
    try:
        pattern, ports = _split_ports(body)
    except ValueError as exc:
        raise ValueError(f"Bad destination {_shown(text)}: {exc}") from None
    if pattern.startswith("@"):
        if pattern[1:] not in CATEGORIES:
            known = ", ".join(f"@{c}" for c in CATEGORIES)
            raise ValueError(f"Bad destination {_shown(text)}: unknown category (known: {known})")
        return CategoryRule(action, pattern[1:], ports, text)
    if "%" in pattern:
        raise ValueError(
            f"Bad destination {_shown(text)}: IPv6 zone ids ('%...') are not supported"
        )
    if _ADDRESSISH.match(pattern):
        try:
            # Host bits are refused with the network suggested (squid masks them silently:
            # `10.0.0.1/8` was then a typo nobody saw), as allow_from refuses them.
            network = parse_network(pattern)
        except ValueError as exc:
            raise ValueError(f"Bad destination {_shown(text)}: {exc}") from None
        return NetworkRule(action, str(_judged_network(network)), ports, text)
    name = pattern.lower().translate(DOTS).rstrip(".")
    kind: Kind = "host"
    if name.startswith("*."):
        kind, name = "domain", name[2:]
    try:
        name = a_labels(name)  # one rule for `bücher.example` and its xn-- form
    except ValueError as exc:
        raise ValueError(f"Bad destination {_shown(text)}: {exc}") from None
    if not _NAME.match(name):
        raise ValueError(
            f"Bad destination {_shown(text)}: expected a host name, *.domain, an IP address or "
            "CIDR, optionally with :PORTS, '!' to deny, or '*' as the last rule"
        )
    return make_rule(action, kind, name, ports, text)


def _judged_network(network: Network) -> Network:
    """`::ffff:10.0.0.0/104` is written as the IPv4 network it means (10.0.0.0/8): addresses of
    an embedding form are judged as IPv4 (classes.canonical), by rules too."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = classes.EMBEDDINGS[0]
        if network.subnet_of(mapped.prefix):
            inner = mapped.inner(network.network_address)
            return ipaddress.IPv4Network((int(inner), network.prefixlen - 96))
    return network


def check_order(rules: Sequence[Rule]) -> None:
    """The only ordering constraint: `*` (allow all others) can only be the last rule."""
    for rule in rules[:-1]:
        if rule.kind == "any":
            raise ValueError(WILDCARD_LAST)


def parse_rules(lines: Iterable[str]) -> tuple[Rule, ...]:
    """Rule lines → rules, checked for order; the first bad line raises ValueError."""
    rules = tuple(parse_rule(line) for line in lines)
    check_order(rules)
    return rules


@dataclass(frozen=True)
class Guard:
    """The address classes a route refuses, and the router's own listeners.

    A class refuses an address that a name rule (or `*`) allowed; an address rule that
    matches still allows it. `self` (an own listen port on an own address) refuses always:
    no rule may turn the router into a loop back into itself.
    """

    classes: tuple[str, ...] = classes.DEFAULT
    own_ports: tuple[int, ...] = ()
    own_networks: tuple[Network, ...] = ()  # explicit listen addresses, loopback, unspecified

    def is_self(self, address: IPAddress, port: int | None) -> bool:
        """A connection to one of the router's own listeners."""
        return port in self.own_ports and any(
            classes.in_network(address, n) for n in self.own_networks
        )

    def classify(self, address: IPAddress) -> str | None:
        """The most specific refused class of `address`, or None."""
        return classes.classify(address, self.classes)


# Where a name may always loop back to the router, whatever it listens on.
OWN_NETWORKS: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n) for n in ("127.0.0.0/8", "0.0.0.0/8", "::1/128", "::/128")
)
DEFAULT_GUARD = Guard()
REPORT: Literal[Verdict.WOULD_DENY] = Verdict.WOULD_DENY

# The words of every refusal, each saying which rule decided and what would change it. Defined
# once: `decide` (for `explain`) fills them with values, the proxy's haproxy.cfg with sample
# expressions (render/decision/ `refusal`), so a 403 body and `explain` say the same thing.
REFUSALS = {
    Reason.DEFAULT: (
        "no rule of route {route} allows {host} port {port} (client group {group}): everything"
        " not allowed is denied; to allow it, add a rule such as {host}:{port} to that policy"
    ),
    Reason.DENY: (
        "denied by route {route} rule {rule} ({text}) (client group {group}): to allow it,"
        " remove or narrow that rule, or allow it in a rule placed before rule {rule}"
    ),
    Reason.GUARD: (
        "{address} is in address class {cls}: route {route} rule {rule} ({text}) matched, but"
        " only an address rule may let this class through; to allow it, take the class out of"
        " the route's guard (guard: [default, -{cls}]) or place an address rule such as"
        " {address} before rule {rule}"
    ),
    Reason.GUARD_DEFAULT: (
        "{address} is in address class {cls}: no rule of route {route} matched and report-only"
        " lets no refused class through; to allow it, take the class out of the route's guard"
        " (guard: [default, -{cls}]) or add an address rule such as {address}"
    ),
    Reason.DOH: (
        "{host} is a DNS-over-HTTPS resolver (@doh): route {route} denies the well-known"
        " resolvers before any rule; to allow it, set deny_doh: false on the route"
    ),
    Reason.SELF: (
        "{address} port {port} is the router itself (class self): no rule or guard setting of"
        " route {route} can allow it; connect to that listener directly"
    ),
    Reason.AUTH_MISSING: (
        "route {route}: proxy authentication required: send Proxy-Authorization (Basic) with"
        " the name and password of a proxy user (EGRESS_PROXY_USERS_FILE)"
    ),
    Reason.AUTH_WRONG: (
        "route {route}: wrong proxy credentials: no proxy user with that name and password"
        " (EGRESS_PROXY_USERS_FILE)"
    ),
    Reason.LIMIT_TUNNELS: (
        "route {route}: at most {tunnels} CONNECT tunnels at a time; try again later"
    ),
    Reason.LIMIT_CONNECTION_RATE: (
        "route {route}: at most {rate} connections per {period} from {client}"
    ),
    Reason.LIMIT_REQUEST_RATE: "route {route}: at most {rate} requests per {period} from {client}",
    Reason.UNRESOLVED: "cannot resolve {host}",
    Reason.NO_PARENT: "route {route}: no parent proxy reachable",
    Reason.PARENT_AUTH: "route {route}: the parent proxy refused the router's credentials (407)",
}


@dataclass(frozen=True)
class Decision:
    """The outcome for one destination: the verdict, the rule that decided (1-based index, or
    None for the implicit final deny) and a short reason for logs, 403 bodies and `explain`.

    `verdict` is `would-deny` when a report-only list (`enforce: false`) would have denied:
    the request is allowed, logged and counted as such.
    """

    verdict: Literal[Verdict.ALLOW, Verdict.DENY, Verdict.WOULD_DENY]
    index: int | None
    rule: Rule | None
    reason: str
    guard_class: str | None = None
    category: str | None = None  # denied before the rules as one of a category's names

    @property
    def guarded(self) -> bool:
        """True when an address class (or `self`) refused what a rule allowed."""
        return self.guard_class is not None

    @property
    def allowed(self) -> bool:
        """Whether the request goes through (report mode lets would-deny through)."""
        return self.verdict != Verdict.DENY

    @property
    def rule_id(self) -> str:
        """The rule's label in metrics and logs: its index, 'default' or 'guard-CLASS'."""
        if self.guard_class is not None:
            return guard_rule(self.guard_class)
        if self.category is not None:
            return self.category
        return str(self.index) if self.index is not None else RuleId.DEFAULT


def decide(
    rules: Sequence[Rule],
    host: str,
    address: IPAddress | None,
    port: int | None,
    *,
    guard: Guard = DEFAULT_GUARD,
    enforce: bool = True,
    route: str = "?",
    group: str = DEFAULT_GROUP,
    deny_doh: bool = False,
) -> Decision:
    """`self` first; then first match wins, and an address class refuses what a name rule
    allowed; no match denies (as squid's `http_access deny all`).

    `address` is the address the connection would go to (None when the name does not
    resolve: address rules then do not match, as squid's `dst` does not). With `enforce`
    false a rule's or the default's deny becomes `would-deny`; the guard still refuses.
    `route` and `group` only name them in the reason (REFUSALS, the words of a 403 body).
    """
    words = {"route": route, "group": group, "host": host, "port": port, "address": address}
    if address is not None and guard.is_self(address, port):
        reason = REFUSALS[Reason.SELF].format(**words)
        return Decision(Verdict.DENY, None, None, reason, guard_class=classes.SELF)
    denied: Literal[Verdict.DENY, Verdict.WOULD_DENY] = Verdict.DENY if enforce else REPORT
    found = guard.classify(address) if address is not None else None
    if deny_doh and host in CATEGORIES[DOH]:
        if denied == REPORT and found is not None:
            reason = REFUSALS[Reason.GUARD_DEFAULT].format(**words, cls=found)
            return Decision(Verdict.DENY, None, None, reason, guard_class=found)
        return Decision(denied, None, None, REFUSALS[Reason.DOH].format(**words), category=DOH)
    for index, rule in enumerate(rules, start=1):
        if not rule.matches(host, address, port):
            continue
        at = {**words, "rule": index, "text": rule.text, "cls": found}
        if rule.action == vocab.Action.DENY:
            if denied == REPORT and found is not None:
                # Report mode lets a denied request through, but never into a refused class.
                return Decision(
                    Verdict.DENY, index, rule, REFUSALS[Reason.GUARD].format(**at), found
                )
            return Decision(denied, index, rule, REFUSALS[Reason.DENY].format(**at))
        if found is not None and not rule.is_address_rule:
            return Decision(Verdict.DENY, index, rule, REFUSALS[Reason.GUARD].format(**at), found)
        return Decision(Verdict.ALLOW, index, rule, f"allowed by rule {index} ({rule.text})")
    if denied == REPORT and found is not None:
        reason = REFUSALS[Reason.GUARD_DEFAULT].format(**words, cls=found)
        return Decision(Verdict.DENY, None, None, reason, guard_class=found)
    return Decision(denied, None, None, REFUSALS[Reason.DEFAULT].format(**words))


@dataclass(frozen=True)
class Group:
    """One client group of a policy route: who it is for, and its own ordered rule list.

    A group applies to a client whose source address is in `sources` (any, when empty) and,
    when it names `users`, who authenticated as one of them. `enforce` false: report only.
    """

    name: str
    rules: tuple[Rule, ...]
    sources: tuple[Network, ...] = ()
    enforce: bool = True
    users: frozenset[str] = frozenset()

    def holds(self, client: IPAddress | None) -> bool:
        """Whether `client` is in this group's sources (None: unknown, only `any`)."""
        if not self.sources:
            return True
        return client is not None and any(classes.in_network(client, n) for n in self.sources)

    def takes(self, user: str | None) -> bool:
        """Whether `user` (None: nobody authenticated) may be in this group."""
        return not self.users or user in self.users

    def admits(self, client: IPAddress | None, user: str | None = None) -> bool:
        """Whether this group is the one for `client`, authenticated as `user` (or not)."""
        return self.holds(client) and self.takes(user)


def select_group(
    groups: Sequence[Group], client: IPAddress | None, user: str | None = None
) -> Group | None:
    """The first group that admits the client (the route's default group is last)."""
    return next((g for g in groups if g.admits(client, user)), None)
