"""Address classes of the policy guard, and IPv6 addresses that carry an IPv4 address.

A class is a named set of networks no name may lead to unless an address rule names the
address (docs/policy.md). Classes are checked on the address the proxy will connect to, after
DNS. IPv6 forms that embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`,
6to4) are judged by the IPv4 address inside them, by classes and by address rules alike, so
`::ffff:127.0.0.1`, `::127.0.0.1`, `64:ff9b::7f00:1` and `2002:7f00:1::` are all loopback.

Two forms cannot be judged by their inside with an ip map, because the IPv4 bits are not one
contiguous prefix: the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 6052 splits the address
around the `u` octet for a /48) and Teredo `2001::/32` (the client address is XOR-obfuscated).
Each is a class of its own, on by default: stricter than judging the inside.

The same facts drive `explain` (`classify`, `canonical`) and the haproxy ip maps
(render/maps.py: `key_networks`), so the two cannot drift.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from haproxy_egress.config.addresses import IPAddress
from haproxy_egress.config.vocabulary import SELF_CLASS

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


@dataclass(frozen=True)
class Embedding:
    """One IPv6 form with an IPv4 address at bit `offset` (32 bits) inside `prefix`."""

    name: str
    prefix: V6
    offset: int  # bit position of the IPv4 address, from the left

    def contains(self, address: ipaddress.IPv6Address) -> bool:
        """True when `address` is of this form (and not one of the carved-out addresses)."""
        return address in self.prefix and address not in CARVED_OUT

    def inner(self, address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
        """The IPv4 address inside `address`."""
        shift = 128 - self.offset - 32
        return ipaddress.IPv4Address((int(address) >> shift) & 0xFFFF_FFFF)

    def image(self, network: V4) -> V6:
        """The IPv6 network of this form whose inside is `network`."""
        shift = 128 - self.offset - 32
        base = int(self.prefix.network_address) | (int(network.network_address) << shift)
        return V6((base, self.offset + network.prefixlen))


EMBEDDINGS: tuple[Embedding, ...] = (
    Embedding("ipv4-mapped", V6("::ffff:0:0/96"), 96),
    Embedding("ipv4-compatible", V6("::/96"), 96),
    Embedding("nat64", V6("64:ff9b::/96"), 96),
    Embedding("6to4", V6("2002::/16"), 16),
)
# `::` and `::1` lie in the IPv4-compatible range but are IPv6's own unspecified and loopback
# addresses: they are judged as themselves.
CARVED_OUT = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))


def canonical(address: IPAddress) -> IPAddress:
    """The address as the policy judges it: the IPv4 address inside an embedding form."""
    if isinstance(address, ipaddress.IPv6Address):
        for form in EMBEDDINGS:
            if form.contains(address):
                return form.inner(address)
    return address


def in_network(address: IPAddress, network: Network) -> bool:
    """Whether the address, as the policy judges it (`canonical`), lies in `network`."""
    judged = canonical(address)
    return judged.version == network.version and judged in network


def key_networks(network: Network) -> list[V6]:
    """Where `network` lies in haproxy's lookup space, where every address is IPv6.

    haproxy looks an IPv4 sample up as `::ffff:a.b.c.d` when an ip map holds only IPv6
    entries, so a map written this way answers for IPv4 and IPv6 destinations alike. An IPv4
    network stands for its image in every embedding form; an IPv6 network inside an embedding
    form never matches (its addresses are judged as IPv4) and has no entry.
    """
    if isinstance(network, V4):
        return [form.image(network) for form in EMBEDDINGS]
    if any(network.subnet_of(form.prefix) for form in EMBEDDINGS):
        return [V6((int(a), 128)) for a in CARVED_OUT if a in network]
    return [network]


# --- the classes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressClass:
    """A named set of networks the guard refuses unless an address rule names the address."""

    name: str
    networks: tuple[Network, ...]
    default: bool  # on unless the route's `guard` says otherwise
    what: str  # for messages and docs

    def contains(self, address: IPAddress) -> bool:
        """Whether `address` (judged as `canonical`) is in this class."""
        return any(in_network(address, n) for n in self.networks)


def _nets(*texts: str) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t) for t in texts)


CLASSES: tuple[AddressClass, ...] = (
    AddressClass("loopback", _nets("127.0.0.0/8", "::1/128"), True, "loopback"),
    AddressClass("link-local", _nets("169.254.0.0/16", "fe80::/10"), True, "link-local"),
    # AWS/GCP/Azure/OpenStack at 169.254.169.254, AWS's IPv6 one, Alibaba Cloud's.
    AddressClass(
        "metadata",
        _nets("169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32"),
        True,
        "a cloud metadata address",
    ),
    AddressClass("this-network", _nets("0.0.0.0/8"), True, "'this network' (0.0.0.0/8)"),
    AddressClass("unspecified", _nets("::/128"), True, "the unspecified address"),
    AddressClass("cgnat", _nets("100.64.0.0/10"), True, "carrier-grade NAT (100.64.0.0/10)"),
    AddressClass("reserved", _nets("240.0.0.0/4"), True, "reserved (240.0.0.0/4)"),
    AddressClass("broadcast", _nets("255.255.255.255/32"), True, "the broadcast address"),
    AddressClass("multicast", _nets("224.0.0.0/4", "ff00::/8"), True, "multicast"),
    AddressClass("nat64-local", _nets("64:ff9b:1::/48"), True, "local-use NAT64 (64:ff9b:1::/48)"),
    AddressClass("teredo", _nets("2001::/32"), True, "Teredo (2001::/32)"),
    AddressClass(
        "private",
        _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
        False,
        "private (RFC 1918, fc00::/7)",
    ),
)
BY_NAME = {c.name: c for c in CLASSES}
DEFAULT = tuple(c.name for c in CLASSES if c.default)
SELF = SELF_CLASS  # the router's own listen addresses and ports: always on, see policy.Guard
NAMES = (*BY_NAME, SELF)


def expand(names: Iterable[str]) -> tuple[str, ...]:
    """A `guard` list → class names, in table order; `default` stands for every default class
    and `-name` removes one. ValueError names an unknown class."""
    chosen: list[str] = []
    for raw in names:
        negate = raw.startswith("-")
        name = raw[1:] if negate else raw
        picked = DEFAULT if name == "default" else (name,)
        for item in picked:
            if item not in BY_NAME:
                known = ", ".join(("default", *BY_NAME))
                raise ValueError(f"unknown address class {name!r} (known: {known})")
            if negate:
                chosen = [c for c in chosen if c != item]
            elif item not in chosen:
                chosen.append(item)
    return tuple(c.name for c in CLASSES if c.name in chosen)


def classify(address: IPAddress, enabled: Sequence[str]) -> str | None:
    """The most specific enabled class of `address`, or None (longest prefix wins, so
    169.254.169.254 is `metadata` while link-local is on too)."""
    best: tuple[int, str] | None = None
    judged = canonical(address)
    for name in enabled:
        for net in BY_NAME[name].networks:
            inside = judged.version == net.version and judged in net
            if inside and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, name)
    return best[1] if best else None


# --- haproxy's lookup space ----------------------------------------------------------------


@dataclass(frozen=True)
class KeyPrefix:
    """One entry of an ip map in haproxy's lookup space, and what the addresses in it (those
    not in a longer entry) are judged as: the IPv4 network `inner`, or the IPv6 `prefix`."""

    prefix: V6
    inner: V4 | None

    def covered_by(self, network: Network) -> bool:
        """Whether every address of this entry lies in `network` as the policy judges it."""
        if self.inner is not None:
            return isinstance(network, V4) and self.inner.subnet_of(network)
        return isinstance(network, V6) and self.prefix.subnet_of(network)


def key_prefixes(networks: Iterable[Network]) -> list[KeyPrefix]:
    """The ip-map entries that make haproxy's longest-prefix lookup answer, for any address,
    from exactly the `networks` that contain it as `in_network` judges it.

    Every set of prefixes containing one address is a chain, so the longest entry containing
    an address determines all of them: an entry's value may be computed from the networks
    that cover it (`KeyPrefix.covered_by`). Besides the networks' own keys, each embedding
    form gets an entry of its own (no IPv6 network reaches into it) and the two carved-out
    addresses get theirs (no IPv4 network reaches them).
    """
    keys: dict[V6, KeyPrefix] = {}
    for address in CARVED_OUT:
        net = V6((int(address), 128))
        keys[net] = KeyPrefix(net, None)
    for form in EMBEDDINGS:
        keys.setdefault(form.prefix, KeyPrefix(form.prefix, V4("0.0.0.0/0")))
    for network in networks:
        if isinstance(network, V4):
            for form in EMBEDDINGS:
                image = form.image(network)
                keys.setdefault(image, KeyPrefix(image, network))
        else:
            for net in key_networks(network):
                keys.setdefault(net, KeyPrefix(net, None))
    return sorted(keys.values(), key=lambda k: (int(k.prefix.network_address), k.prefix.prefixlen))
