"""The whole configuration: a ConfigMap key's `Document` (its public shape, also the JSON
Schema), and the validated `Config` the compiler renders, with the resolvers and stats page."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from itertools import compress
from operator import attrgetter
from typing import Annotated, Literal

from pydantic import Field, model_validator

from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config.logtargets import Logging
from haproxy_egress.config.route import Route, RouteSettings
from haproxy_egress.config.scalars import SAFE_TOKEN, Duration, EndpointSpecDNS, Frozen, Listen
from haproxy_egress.config.users import ProxyUser

# Per-route flags read across 10,000 routes in the C library (each is cached on its route).
_NEEDS_RESOLVER = attrgetter("needs_resolver")
_IS_POLICY = attrgetter("is_policy")
_TLS = attrgetter("tls")


class Resolvers(Frozen):
    """How haproxy re-resolves destination names at runtime."""

    nameservers: tuple[EndpointSpecDNS, ...] = ()  # empty: take them from /etc/resolv.conf
    hold_valid: Duration = 10_000
    # How long an address that left the DNS answer keeps its slot (and its traffic).
    hold_obsolete: Duration = 30_000
    timeout: Duration = 1000
    retries: int = Field(3, ge=1, le=100)


class StatsPage(Frozen):
    """haproxy's own stats page (HTML, and CSV at `/;csv`); off unless a port is given."""

    address: str | None = None
    port: int = Field(ge=1, le=65535)
    user: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    password: Annotated[str, Field(pattern=SAFE_TOKEN)] | None = None

    @model_validator(mode="after")
    def _auth_pair(self) -> StatsPage:
        # The stats page lists every destination and lets an admin-level page act on them:
        # never anonymous on a security border.
        if self.user is None or self.password is None:
            raise ValueError("the stats page needs STATS_USER and STATS_PASSWORD (basic auth)")
        return self


class Document(Frozen):
    """One YAML key of the ConfigMap: the public shape (also exported as JSON Schema)."""

    version: Literal[1] = 1
    defaults: RouteSettings | None = None
    resolvers: Resolvers | None = None
    logging: Logging | None = None
    routes: tuple[Route, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole, validated router configuration: what the compiler renders."""

    routes: tuple[Route, ...]
    resolvers: Resolvers = field(default_factory=Resolvers)
    stats: StatsPage | None = None
    # The policy proxy's users (EGRESS_PROXY_USERS_FILE), by name.
    proxy_users: tuple[ProxyUser, ...] = ()
    # Remote syslog targets besides stdout (the `logging` section).
    logging: Logging = field(default_factory=Logging)
    # Where each route was defined (route name → "routes.yaml: routes[2]"), for messages.
    origins: tuple[tuple[str, str], ...] = ()
    # The process's own listeners that are not routes (the metrics and probe endpoint): no
    # route may take them, and the policy's `self` class covers them like the routes' ports.
    reserved: tuple[Listen, ...] = ()

    # Both are asked several times per compile (template, pattern files, diff): once each.
    @cached_property
    def needs_resolvers(self) -> bool:
        """A `resolvers` section is only emitted when some destination is a DNS name (or a
        policy route resolves names at runtime)."""
        return any(map(_NEEDS_RESOLVER, self.routes))

    @cached_property
    def policy_routes(self) -> tuple[Route, ...]:
        """The proxy and tls routes: they share the policy's stick tables."""
        return tuple(compress(self.routes, map(_IS_POLICY, self.routes)))

    @cached_property
    def tls_routes(self) -> tuple[Route, ...]:
        """The routes that originate TLS to their destinations."""
        return tuple(compress(self.routes, map(_TLS, self.routes)))

    def guard(self, route: Route) -> egress_policy.Guard:
        """A policy route's guard: its classes, and every listener of this router (a
        destination on one of them would loop back into the router)."""
        own_ports, own_networks = self._own_listeners
        return egress_policy.Guard(route.guard_classes, own_ports, own_networks)

    @cached_property
    def _own_listeners(self) -> tuple[tuple[int, ...], tuple[egress_policy.Network, ...]]:
        listeners = [r.listen for r in self.routes] + list(self.reserved)
        if self.stats is not None:
            listeners.append(Listen(address=self.stats.address, port=self.stats.port))
        ports = {listen.port for listen in listeners}
        own = list(egress_policy.OWN_NETWORKS)
        for listen in listeners:
            if not listen.is_wildcard and listen.address is not None:
                own.append(ipaddress.ip_network(listen.address))
        return tuple(sorted(ports)), tuple(dict.fromkeys(own))

    def origin_of(self, route_name: str) -> str:
        """Where a route was defined, for messages."""
        return dict(self.origins).get(route_name, "")
