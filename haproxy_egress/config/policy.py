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

One deliberate difference from squid: a destination whose address is loopback, link-local or
a cloud metadata address (`GUARDED`) is denied unless an address rule allows it explicitly,
so a name that rebinds to 127.0.0.1 cannot reach the router's own ports.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from haproxy_egress.config import addresses as netaddr

Action = Literal["allow", "deny"]
Kind = Literal["host", "domain", "network", "any"]
Verdict = Literal["allow", "deny"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses no name may lead to unless an address rule names them: the router's own loopback,
# link-local (cloud metadata at 169.254.169.254 lives there) and AWS's IPv6 metadata address.
GUARDED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::/128",
        "::1/128",
        "fe80::/10",
        "fd00:ec2::254/128",
    )
)

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_PORTS = re.compile(r"^[0-9]{1,5}(,[0-9]{1,5})*$")
_ADDRESSISH = re.compile(r"^[0-9a-fA-F.:]*[.:][0-9a-fA-F.:]+(/[0-9]+)?$")
WILDCARD_LAST = "Wildcard must be last rule, if present"


@dataclass(frozen=True)
class Rule:
    """One parsed rule: allow or deny, what it matches, and the text as written."""

    action: Action
    kind: Kind
    value: str  # host name, domain (no '*.'), network in CIDR form, or '*'
    ports: tuple[int, ...] = ()
    text: str = ""

    @property
    def network(self) -> Network:
        """The network of a `network` rule."""
        return ipaddress.ip_network(self.value)

    @property
    def is_address_rule(self) -> bool:
        """True for rules that name addresses: only these may open a GUARDED address."""
        return self.kind == "network"

    def matches(self, host: str, address: netaddr.IPAddress | None, port: int | None) -> bool:
        """Whether this rule applies to `host` (lower case, no brackets) at `address`:`port`."""
        if self.ports and port not in self.ports:
            return False
        if self.kind == "any":
            return True
        if self.kind == "host":
            return host == self.value
        if self.kind == "domain":
            return host == self.value or host.endswith("." + self.value)
        return address is not None and address in self.network

    def squid(self) -> str:
        """The squid ACL value this rule stands for (`dstdomain`/`dst` argument)."""
        if self.kind == "domain":
            return "." + self.value
        return self.value


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
    return tuple(sorted({netaddr.parse_port(p) for p in text.split(",")}))


def _shown(text: str) -> str:
    """The rule as messages quote it: as written, or repr() when it holds control characters
    (so one problem stays one line whatever the input)."""
    return f"'{text}'" if text.isprintable() else repr(text)


def parse_rule(line: str) -> Rule:
    """One rule line (already stripped of comments) → Rule; ValueError says what is wrong."""
    text = line.strip()
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"Bad destination {_shown(text)}: one rule per line, no blanks")
    action: Action = "allow"
    body = text
    if body.startswith("!"):
        action, body = "deny", body[1:]
    if body == "*":
        if action == "deny":
            raise ValueError(
                "Bad destination '!*': leave out '*' instead (everything not allowed is denied)"
            )
        return Rule("allow", "any", "*", (), text)
    try:
        pattern, ports = _split_ports(body)
    except ValueError as exc:
        raise ValueError(f"Bad destination {_shown(text)}: {exc}") from None
    if "%" in pattern:
        raise ValueError(
            f"Bad destination {_shown(text)}: IPv6 zone ids ('%...') are not supported"
        )
    if _ADDRESSISH.match(pattern):
        try:
            # Host bits are masked, as squid does with `dst 192.0.2.7/24`.
            network = ipaddress.ip_network(pattern, strict=False)
        except ValueError as exc:
            raise ValueError(f"Bad destination {_shown(text)}: {exc}") from None
        return Rule(action, "network", str(network), ports, text)
    name = pattern.lower().rstrip(".")
    kind: Kind = "host"
    if name.startswith("*."):
        kind, name = "domain", name[2:]
    if not _NAME.match(name):
        raise ValueError(
            f"Bad destination {_shown(text)}: expected a host name, *.domain, an IP address or "
            "CIDR, optionally with :PORTS, '!' to deny, or '*' as the last rule"
        )
    return Rule(action, kind, name, ports, text)


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


def guarded(address: netaddr.IPAddress) -> bool:
    """True when `address` is one a name must not lead to without an explicit address rule.

    IPv4-mapped IPv6 addresses count as their IPv4 address, as haproxy's `-m ip` sees them.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in GUARDED if net.version == address.version)


@dataclass(frozen=True)
class Decision:
    """The outcome for one destination: the verdict, the rule that decided (1-based index, or
    None for the implicit final deny) and a short reason for logs, 403 bodies and `explain`."""

    verdict: Verdict
    index: int | None
    rule: Rule | None
    reason: str
    guarded: bool = False

    @property
    def rule_id(self) -> str:
        """The rule's label in metrics and logs: its index, 'default' or 'guard'."""
        if self.guarded:
            return "guard"
        return str(self.index) if self.index is not None else "default"


def decide(
    rules: Sequence[Rule], host: str, address: netaddr.IPAddress | None, port: int | None
) -> Decision:
    """First match wins; then the GUARDED check; no match denies (as `http_access deny all`).

    `address` is the address the connection would go to (None when the name does not
    resolve: address rules then do not match, as squid's `dst` does not).
    """
    for index, rule in enumerate(rules, start=1):
        if not rule.matches(host, address, port):
            continue
        if rule.action == "deny":
            return Decision("deny", index, rule, f"denied by rule {index} ({rule.text})")
        if address is not None and guarded(address) and not rule.is_address_rule:
            return Decision(
                "deny",
                index,
                rule,
                f"{address} is loopback, link-local or metadata: only an address rule can "
                f"allow it (rule {index} ({rule.text}) matched the name)",
                guarded=True,
            )
        return Decision("allow", index, rule, f"allowed by rule {index} ({rule.text})")
    return Decision("deny", None, None, "no rule allows it (everything not allowed is denied)")


def rule_indices(rules: Sequence[Rule], action: Action, kind: Kind | None = None) -> list[int]:
    """1-based indices of the rules with `action` (and `kind`): the verdict ACLs' patterns."""
    return [
        i
        for i, rule in enumerate(rules, start=1)
        if rule.action == action and (kind is None or rule.kind == kind)
    ]
