"""One egress route and the per-route settings (`defaults:` has the same shape), and the rules
that make a route coherent; the typed, frozen model every input dialect ends up as (no I/O).

Routes are slotted pydantic dataclasses, not models: the router keeps every route for as long
as it runs, and a model gives each its own dict (832 bytes for a route's 31 fields, 8 MB at
10,000 routes). They validate as a model would (`STRICT`); what a model's cached properties
held lives in slots of their own (`_Derived`)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BeforeValidator,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import ArgsKwargs, PydanticCustomError

from haproxy_egress.config import classes as egress_classes
from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config import vocabulary
from haproxy_egress.config.derived import Derived
from haproxy_egress.config.hookuse import HookUse
from haproxy_egress.config.parent import Parent, parent_spec
from haproxy_egress.config.policyfields import (
    DEFAULT_GROUP,
    POLICY_MODES,
    ClientGroup,
    GuardList,
    Limits,
    PolicyRuleText,
    rule_list,
)
from haproxy_egress.config.scalars import (
    HTTP_PATH,
    NAME_PATTERN,
    STRICT,
    ClientNetwork,
    Duration,
    Endpoint,
    EndpointSpec,
    Frozen,
    ListenSpec,
    SourceAddress,
)
from haproxy_egress.config.tls import TlsSpec

# Per-destination counters of policy routes: one stick table per route, `_egress_dst_<N>_<route>`
# (route names hold no '_', so the exporter reads N and the route back from the name),
# `FACTOR` times the top N in size, and never tiny, so that the names a route is busy with now
# and the newcomers that may overtake them fit together.
DESTINATIONS_TABLE_PREFIX = "_egress_dst_"
DESTINATIONS_TABLE_FACTOR = 4
DESTINATIONS_TABLE_MIN = 1024


class HealthCheck(Frozen):
    """Active health checks of the destinations (a TCP connect, or an HTTP GET for http)."""

    enabled: bool = True
    interval: Duration = 2000
    rise: int = Field(2, ge=1, le=100)
    fall: int = Field(3, ge=1, le=100)
    http_path: Annotated[str, Field(pattern=HTTP_PATH)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        """`check: false` / `check: true` as shorthands for `check: {enabled: ...}`."""
        return {"enabled": value} if isinstance(value, bool) else value


# Fields only a proxy route may set: checked on the input, where it is known which fields it
# named (a dataclass keeps no record of that).
PROXY_ONLY_FIELDS = (
    "clients",
    "limits",
    "connect_sni",
    "connect_sni_ports",
    "enforce",
    "proxy_auth",
    "parent",
)

S = TypeVar("S", bound="RouteSettings")


def replaced(settings: S, **changes: Any) -> S:
    """A copy of a route (or of route settings) with `changes`, not validated again: every
    value is already a validated one (what `model_copy(update=...)` did for a model; a
    dataclass's own `replace` validates, and its validators take YAML input)."""
    copy = object.__new__(type(settings))
    for field in dataclasses.fields(settings):
        value = changes.pop(field.name, getattr(settings, field.name))
        object.__setattr__(copy, field.name, value)  # frozen: a copy being made
    if changes:
        raise TypeError(f"not a field: {', '.join(sorted(changes))}")
    return copy


class _Derived(Derived):
    """Where a route keeps what it derives from its fields (config/derived.py): the parsed
    rules and groups, the refused classes, the destinations to resolve."""

    __slots__ = ("_groups", "_guard_classes", "_named_destinations", "_rules")


@pydantic_dataclass(frozen=True, slots=True, config=STRICT)
class RouteSettings(_Derived):
    """The per-route knobs; also the shape of `defaults:`, which sets them for every route."""

    mode: Literal["tcp", "http"] = "tcp"
    balance: Literal["roundrobin", "first", "leastconn", "source"] = "roundrobin"
    connect_timeout: Duration = 5000
    idle_timeout: Duration = 3_600_000
    source: SourceAddress | None = None
    allow_from: tuple[ClientNetwork, ...] = ()
    maxconn: int | None = Field(default=None, ge=1, le=1_000_000)
    check: HealthCheck = HealthCheck()
    proxy_protocol: Literal["v1", "v2"] | None = None
    resolve_prefer: Literal["ipv4", "ipv6"] = "ipv4"
    dns_slots: int = Field(default=4, ge=1, le=64)
    hooks: tuple[HookUse, ...] = ()  # Lua hooks, in order (docs/lua.md)
    # Kernel splicing of what clients send too, not only of what destinations send back: for
    # upload-heavy routes; it slowed small keep-alive exchanges in some runs, so it is not the
    # default (docs/benchmarks.md, docs/configuration.md).
    splice: Literal["response", "both"] = "response"
    # false: no log line per connection (tcp) or request (http), for busy routes whose
    # connections need no record; tcp and http routes only, and not with the audit hook.
    log: bool = True
    # Policy routes: the address classes refused after DNS (classes.py, docs/policy.md).
    guard: GuardList = ("default",)
    # Policy routes: deny the well-known DNS-over-HTTPS resolvers (`@doh`) before any rule.
    deny_doh: bool = True
    # Policy routes: per-destination counters for the top N destinations (0: off); the series
    # are at most N + 1 per route whatever clients ask for (docs/metrics.md).
    destinations_top: int = Field(default=50, ge=0, le=1000)
    # Policy routes: a destination idle this long leaves the per-destination table (its count
    # moves to `other`), which is what frees room for new names once the table is full.
    destinations_idle: Duration = Field(default=600_000, ge=1000, le=86_400_000)


@pydantic_dataclass(frozen=True, slots=True, config=STRICT)
class Route(RouteSettings):
    """One egress route: a listener, and the destinations its traffic may go to."""

    # Required (`default=...`): written with a default only because the fields they follow
    # have one (keyword-only fields would hide the fields before them from the field
    # validators' `info.data`).
    name: Annotated[str, Field(pattern=NAME_PATTERN)] = Field(default=...)
    listen: ListenSpec = Field(default=...)
    # proxy and tls are per route only: a default making every route a proxy is a typo.
    mode: Literal["tcp", "http", "proxy", "tls"] = "tcp"  # type: ignore[assignment]
    # Required for tcp/http routes, refused for proxy/tls ones (`_destinations_for_mode`).
    destinations: tuple[EndpointSpec, ...] = Field(default=(), validate_default=True)
    # --- egress policy (semantics in policy.py, docs/policy.md) ---
    policy: tuple[PolicyRuleText, ...] = ()
    # tls: default = listen port
    destination_port: int | None = Field(default=None, ge=1, le=65535)
    clients: tuple[ClientGroup, ...] = ()  # client groups, before the route's own `policy`
    enforce: bool = True  # false: report only (would-deny is logged and counted, not refused)
    limits: Limits = Limits()
    # match: a CONNECT's TLS ClientHello must name the CONNECT host (or a name its rule allows)
    connect_sni: Literal["off", "match"] = "off"
    connect_sni_ports: tuple[Annotated[int, Field(ge=1, le=65535)], ...] = (443,)  # TLS ports
    # required: every request needs valid proxy credentials (else 407); optional: a request
    # without any falls to the groups that name no users (a wrong one still gets 407).
    proxy_auth: Literal["optional", "required"] = "optional"
    # Parent proxies (config/parent.py); `env` is resolved from HTTPS_PROXY/NO_PROXY on load.
    parent: Annotated[Parent | None, BeforeValidator(parent_spec)] = None
    # TLS origination to the destinations (config/tls.py, docs/configuration.md).
    tls: TlsSpec = None

    @model_validator(mode="before")
    @classmethod
    def _proxy_only_fields(cls, value: Any) -> Any:
        """Fields only a proxy route may set are refused on the others when the input (a
        mapping, or the keywords of a call) names them."""
        named = (value.kwargs or {}) if isinstance(value, ArgsKwargs) else value
        if not isinstance(named, dict):
            return value  # not a mapping: the validation says so
        mode = named.get("mode", "tcp")
        if (mode.strip() if isinstance(mode, str) else mode) in ("tcp", "http", "tls"):
            for key in PROXY_ONLY_FIELDS:
                if key in named:
                    raise ValueError(f"{key} needs mode: proxy")
        return value

    @field_validator("destinations")
    @classmethod
    def _destinations_for_mode(
        cls, value: tuple[Endpoint, ...], info: ValidationInfo
    ) -> tuple[Endpoint, ...]:
        """tcp/http routes need destinations; proxy/tls routes go where the policy allows."""
        mode = info.data.get("mode", "tcp")
        if mode in POLICY_MODES:
            if value:
                raise ValueError(
                    f"a {mode} route takes no destinations: its policy decides where traffic goes"
                )
        elif not value:
            raise PydanticCustomError("too_short", "must not be empty")
        return value

    @field_validator("policy", mode="wrap")
    @classmethod
    def _policy_order(cls, value: object, handler: ValidatorFunctionWrapHandler) -> tuple[str, ...]:
        return rule_list(value, handler)

    @property
    def rules(self) -> tuple[egress_policy.Rule, ...]:
        """The parsed policy rules, in order (first match wins)."""
        return self._derived(
            "_rules", lambda: tuple(egress_policy.parse_rule(text) for text in self.policy)
        )

    @property
    def groups(self) -> tuple[egress_policy.Group, ...]:
        """The client groups, in order; the route's own `policy` is the last, for everyone."""
        return self._derived("_groups", self._make_groups)

    def _make_groups(self) -> tuple[egress_policy.Group, ...]:
        groups = [
            egress_policy.Group(
                g.name,
                tuple(egress_policy.parse_rule(t) for t in g.policy),
                tuple(g.sources),
                self.enforce if g.enforce is None else g.enforce,
                frozenset(g.users),
            )
            for g in self.clients
        ]
        groups.append(egress_policy.Group(DEFAULT_GROUP, self.rules, enforce=self.enforce))
        return tuple(groups)

    @property
    def guard_classes(self) -> tuple[str, ...]:
        """The refused address classes (`guard` expanded)."""
        return self._derived("_guard_classes", lambda: egress_classes.expand(self.guard))

    @property
    def asks_credentials(self) -> bool:
        """Whether the proxy reads Proxy-Authorization: some group names users, or every
        request must authenticate."""
        return self.proxy_auth == "required" or any(g.users for g in self.clients)

    @property
    def upstream_port(self) -> int:
        """tls routes: the port the SNI name is reached on."""
        return self.destination_port or self.listen.port

    # --- end egress policy ---

    @field_validator("destinations")
    @classmethod
    def _unique_destinations(cls, value: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        # Hosts are already canonical (`_endpoint`): comparing the text is comparing the
        # addresses, without parsing each one again (a third of validating 10,000 routes).
        seen: set[tuple[str, int]] = set()
        for endpoint in value:
            key = (endpoint.host, endpoint.port)
            if key in seen:
                raise ValueError(f"destination {endpoint.hostport} is listed twice")
            seen.add(key)
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Route:
        if self.check.http_path is not None and self.mode != "http":
            raise ValueError("check.http_path needs mode: http")
        self._policy_coherent()
        self._datapath_coherent()
        return self

    def _datapath_coherent(self) -> None:
        """`splice` and `log` shape tcp and http routes; a proxy or tls route's decision log is
        its record of what was allowed, and an audit hook writes its lines through the log."""
        if self.mode in POLICY_MODES and (self.splice != "response" or not self.log):
            raise ValueError(f"splice and log: false apply to tcp and http routes, not {self.mode}")
        if not self.log and any(h.use == "audit" for h in self.hooks):
            raise ValueError("log: false would drop the audit hook's lines")

    def _policy_coherent(self) -> None:
        """A policy belongs to proxy/tls routes, and they need one."""
        if self.mode in POLICY_MODES and not self.policy:
            raise ValueError(
                f"a {self.mode} route needs a policy (write policy: ['*'] to allow everything)"
            )
        if self.mode not in POLICY_MODES and self.policy:
            raise ValueError("policy needs mode: proxy or mode: tls")
        if self.destination_port is not None and self.mode != "tls":
            raise ValueError("destination_port needs mode: tls")
        if self.parent is not None and self.connect_sni == "match":
            raise ValueError("connect_sni: match cannot be combined with parent")
        names = [g.name for g in self.clients]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"client group {name!r} is listed twice")
        if self.is_policy and self.deny_doh:
            for g in self.groups:
                for rule in g.rules:
                    if rule.kind == "category" and rule.action == vocabulary.Action.ALLOW:
                        raise ValueError(
                            f"rule {rule.text!r} allows what deny_doh (on by default) denies "
                            "before any rule: set deny_doh: false on this route"
                        )

    @property
    def destinations_table(self) -> str:
        """The stick table counting this policy route's destinations (render and metrics)."""
        return f"{DESTINATIONS_TABLE_PREFIX}{self.destinations_top}_{self.name}"

    @property
    def destinations_table_size(self) -> int:
        """Entries the table holds: room for the top N and for the newcomers that may overtake
        them. A full table takes no new name until one has been idle `destinations_idle`."""
        return max(DESTINATIONS_TABLE_FACTOR * self.destinations_top, DESTINATIONS_TABLE_MIN)

    @property
    def parents(self) -> Parent | None:
        """The resolved parent proxies (build_config replaces `env`), or None: direct only."""
        return None if self.parent is None or self.parent.from_env else self.parent

    @property
    def is_policy(self) -> bool:
        """A policy route (mode proxy or tls): destinations come from the client, by rule."""
        return self.mode in POLICY_MODES

    @property
    def needs_resolver(self) -> bool:
        """Whether haproxy resolves names for this route at runtime (a DNS destination, or
        a policy route's destinations, which come from the client)."""
        return self.mode in POLICY_MODES or bool(self.named_destinations)

    @property
    def named_destinations(self) -> tuple[Endpoint, ...]:
        """Destinations that are DNS names, resolved at runtime into server-template slots."""
        return self._derived(
            "_named_destinations", lambda: tuple(d for d in self.destinations if d.ip is None)
        )
