"""Name lookups for `explain`: the same nameservers, timeout and retries the router's haproxy
uses (`resolvers` in the config), so `explain` sees the addresses the router would connect to.

dnspython does the DNS work (message format, retries, TCP fallback on truncation): a resolver
is not worth writing by hand. Only a DNS query leaves the machine; the destination itself is
never contacted.
"""

from __future__ import annotations

import dns.exception
import dns.resolver

from haproxy_egress.config.addresses import IPAddress, parse_ip
from haproxy_egress.config.document import Resolvers
from haproxy_egress.errors import LookupFailed


class ConfiguredResolver:
    """Looks names up, A then AAAA; `explain` picks per route the family the route prefers."""

    def __init__(self, resolvers: Resolvers) -> None:
        self._config = resolvers
        self._resolver: dns.resolver.Resolver | None = None  # made on first use: most
        # destinations are addresses or have --address, and need no resolver at all
        self._servers = (
            ", ".join(f"{ns.host}:{ns.port}" for ns in resolvers.nameservers)
            or "the nameservers of /etc/resolv.conf"
        )

    def _make(self) -> dns.resolver.Resolver:
        config = self._config
        try:
            # With no nameservers configured haproxy reads /etc/resolv.conf; so does dnspython.
            resolver = dns.resolver.Resolver(configure=not config.nameservers)
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"no nameserver to ask ({self._servers}): {exc}") from exc
        if config.nameservers:
            resolver.nameservers = [str(ns.host) for ns in config.nameservers]
            resolver.nameserver_ports = {str(ns.host): ns.port for ns in config.nameservers}
        resolver.timeout = config.timeout / 1000
        resolver.lifetime = config.timeout * config.retries / 1000
        return resolver

    def __call__(self, name: str) -> tuple[IPAddress, ...]:
        """The name's addresses; () when it does not exist or has none (the router's 503)."""
        if self._resolver is None:
            self._resolver = self._make()
        found: list[IPAddress] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = self._resolver.resolve(name, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                message = f"cannot look up {name} ({rdtype}) at {self._servers}: {exc}"
                raise LookupFailed(message) from exc
            found.extend(parse_ip(r.to_text()) for r in answer)
        return tuple(found)


__all__ = ["ConfiguredResolver"]
