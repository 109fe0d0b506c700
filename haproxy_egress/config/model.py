"""The typed, frozen configuration model and its validation rules; no I/O.

Every input dialect (YAML ConfigMap keys, seed env vars, legacy EGRESS_* lines) ends up as these
objects. Anything that reaches haproxy.cfg is checked here against a strict pattern, so the
template can trust it and no input can smuggle in a directive.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from haproxy_egress.config import addresses as netaddr
from haproxy_egress.config import classes as egress_classes
from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config import vocabulary
from haproxy_egress.config.logtargets import Logging
from haproxy_egress.config.parent import Parent, parent_spec
from haproxy_egress.config.tls import TlsSpec
from haproxy_egress.config.users import USER_NAME, ProxyUser
from haproxy_egress.errors import Problem

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# Per-destination counters of policy routes: one stick table per route, `_egress_dst_<N>_<route>`
# (route names hold no '_', so the exporter reads N and the route back from the name),
# `FACTOR` times the top N in size, and never tiny: haproxy 3.0 shards a table, and a small
# one loses busy names to a flood of new ones far sooner than its size says.
DESTINATIONS_TABLE_PREFIX = "_egress_dst_"
DESTINATIONS_TABLE_FACTOR = 4
DESTINATIONS_TABLE_MIN = 1024
_DURATION = re.compile(r"^([0-9]{1,9})(us|ms|s|m|h|d)$")
_UNIT_MS = {"us": 0.001, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# Printable ASCII without blanks, quotes, backslash, '#' or '$': safe unquoted in haproxy.cfg.
SAFE_TOKEN = r"^[A-Za-z0-9!%&()*+,\-./:;<=>?@\[\]^_`{|}~]{1,128}$"
HTTP_PATH = r"^/[A-Za-z0-9!%&()*+,\-./:;=?@_~]{0,255}$"


def _duration_ms(value: object) -> int:
    """'5s', '500ms', '1h' → milliseconds; a bare number is refused (seconds or ms?)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"must be a duration such as 5s, 500ms, 1h (got {value!r})")
    text = str(value).strip()
    if text.isdigit():
        raise ValueError(f"duration {text!r} needs a unit: {text}s, {text}ms, {text}m, ...")
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"must be a duration such as 5s, 500ms, 1h (got {text!r})")
    ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if not 1 <= ms <= 24 * 86_400_000:
        raise ValueError(f"duration {text!r} out of range 1ms..24d")
    if ms != int(ms):  # '1500us' would silently become 1ms: haproxy times are whole ms here
        raise ValueError(f"duration {text!r} is not a whole number of milliseconds")
    return int(ms)


Duration = Annotated[
    int,
    BeforeValidator(_duration_ms),
    WithJsonSchema({"type": "string", "pattern": _DURATION.pattern, "examples": ["5s", "1h"]}),
]


@lru_cache(maxsize=1024)  # a config has a handful of distinct times, printed for every route
def format_duration(ms: int) -> str:
    """Milliseconds back into the shortest exact haproxy time string."""
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_MS[unit])
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class Frozen(BaseModel):
    """Base: immutable, unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Endpoint(Frozen):
    """A destination: a DNS name or IP literal, and a port."""

    host: str
    port: int

    # Cached: the compiler asks each endpoint for these several times, and parsing an address
    # was half of rendering 10,000 routes. The model is frozen, so a cached value stays true.
    @cached_property
    def ip(self) -> netaddr.IPAddress | None:
        """The address when the host is an IP literal, else None (a name to resolve)."""
        return netaddr.ip_or_none(self.host)

    @cached_property
    def hostport(self) -> str:
        """host:port, with brackets around IPv6 literals, as haproxy and URLs want it."""
        return netaddr.join_host_port(self.host, self.port)

    @property
    def server_name(self) -> str:
        """A readable haproxy server name (also the `server` label in metrics)."""
        return f"{self.host.replace(':', '-')}_{self.port}"


def _ipv4_endpoint(text: str) -> dict[str, object] | None:
    """'a.b.c.d:port' with a canonical IPv4 literal, without the general parser, or None.

    inet_pton takes exactly the canonical dotted quad (no blanks, leading zeros or short
    forms), so whatever it accepts, parse_endpoint would have returned unchanged; everything
    else goes the long way. Destinations are mostly such literals, and parsing each through
    ipaddress was a third of validating 10,000 routes.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        return None
    if not netaddr.canonical_ipv4(host):
        return None
    # parse_port's own rule for a short run of ASCII digits, inline; anything else (such as
    # 0 or 99999) goes through it for its message.
    value = int(port) if port.isascii() and len(port) <= 5 else 0
    return {"host": host, "port": value if 1 <= value <= 65535 else netaddr.parse_port(port)}


def _endpoint(value: object) -> object:
    """Accept 'host:port' strings as well as {host, port} mappings."""
    if isinstance(value, bool | int | float):
        raise ValueError(f"must be 'HOST:PORT' or {{host: ..., port: ...}} (got {value!r})")
    if isinstance(value, str):
        fast = _ipv4_endpoint(value)
        if fast is not None:
            return fast
        host, port = netaddr.parse_endpoint(value, default_port=None)
        return {"host": host, "port": port}
    if isinstance(value, Mapping):
        out = dict(value)
        if "host" in out and isinstance(out["host"], str):
            out["host"] = netaddr.normalize_host(out["host"])
        if "port" in out and isinstance(out["port"], str | int):
            out["port"] = netaddr.parse_port(out["port"])
        return out
    return value


EndpointSpec = Annotated[
    Endpoint,
    BeforeValidator(_endpoint),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "examples": ["api.github.com:443", "[2001:db8::1]:443"]},
                {
                    "type": "object",
                    "properties": {
                        "host": {"type": "string"},
                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    },
                    "required": ["host", "port"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class Listen(Frozen):
    """Where a route accepts connections: an optional local address and a port."""

    address: str | None = None
    port: int

    @cached_property
    def ip(self) -> netaddr.IPAddress | None:
        """The listen address, parsed once (frozen model: it cannot change)."""
        return None if self.address is None else ipaddress.ip_address(self.address)

    @property
    def bind(self) -> str:
        """The haproxy `bind` address; IPv6 listeners also take IPv4 (v4v6)."""
        ip = self.ip
        if ip is None:
            return f":{self.port}"
        return f"[{self.address}]:{self.port}" if ip.version == 6 else f"{ip}:{self.port}"

    @property
    def is_v6(self) -> bool:
        """True for an IPv6 listen address."""
        return self.ip is not None and self.ip.version == 6

    @property
    def is_wildcard(self) -> bool:
        """No address, 0.0.0.0 or '::': the listener takes the port on every address."""
        return self.ip is None or self.ip.is_unspecified

    def overlaps(self, other: Listen) -> bool:
        """Same port and the same or a wildcard address: both cannot own the traffic."""
        if self.port != other.port:
            return False
        return self.is_wildcard or other.is_wildcard or self.address == other.address

    def __str__(self) -> str:
        return self.bind if self.address else str(self.port)


def _listen(value: object) -> object:
    """A port, 'ADDR:PORT' or '[V6]:PORT'; other scalars get a message naming the forms."""
    if isinstance(value, str | int) and not isinstance(value, bool):
        address, port = netaddr.parse_listen(value)
        return {"address": address, "port": port}
    if not isinstance(value, Mapping | Listen):
        raise ValueError(f"must be a port or 'ADDRESS:PORT' (got {value!r})")
    return value


ListenSpec = Annotated[
    Listen,
    BeforeValidator(_listen),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 1, "maximum": 65535},
                {"type": "string", "examples": ["8443", "127.0.0.1:8443", "[::]:8443"]},
            ]
        }
    ),
]


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


def _no_zone(value: object) -> object:
    """Addresses are text: pydantic's IP types would take `5` as 0.0.0.5 and YAML's `no`
    (false) as 0.0.0.0, and they accept IPv6 zone ids with any text (newlines too) after '%'."""
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address written as text (got {value!r})")
    if "%" in value:
        raise ValueError(f"IPv6 zone ids ('%...') are not supported (got {value!r})")
    return value


SourceAddress = Annotated[IPvAnyAddress, BeforeValidator(_no_zone)]


@cache
def _client_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """addresses.parse_network (as policy rules), parsed once per distinct text: one
    allow_from list usually stands in every route (through `defaults:`), and parsing it again
    for each of 10,000 routes was a tenth of their validation. Networks are immutable."""
    try:
        return netaddr.parse_network(text)
    except ValueError as exc:
        raise PydanticCustomError(
            "value_error",
            "invalid network {text}: {reason}",
            {"text": repr(text), "reason": str(exc)},
        ) from None


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return _client_network(str(_no_zone(value)))


ClientNetwork = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    PlainValidator(_network),
    PlainSerializer(str, when_used="json-unless-none"),
    WithJsonSchema({"type": "string", "format": "ipvanynetwork"}),
]


# --- Lua hooks attached to a route (resolved against the hook files by hooks.py) ----

HOOK_NAME = r"^[a-z][a-z0-9_]{0,31}$"  # also the Lua action/service name: `lua.<name>`
HOOK_ARG_KEY = r"^[a-z][a-z0-9_]{0,31}$"
# Arguments reach haproxy.cfg only as `set-var(txn.arg.<hook>.<key>) str(<value>)`: no blank,
# quote, comma, parenthesis, backslash, '#', '%' or '$' can get in to end the token.
HOOK_ARG_VALUE = r"^[A-Za-z0-9._:/@+=-]{1,128}$"
HookPhase = Literal["tcp-request", "http-request", "http-response", "service"]


def _hook_args(value: object) -> object:
    """A mapping of arguments → sorted (key, value) pairs; numbers and booleans become text."""
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of name: value (got {value!r})")
    out = []
    for key, raw in value.items():
        if not isinstance(key, str) or not re.fullmatch(HOOK_ARG_KEY, key):
            raise ValueError(f"argument name {key!r} must match {HOOK_ARG_KEY}")
        item = raw
        if isinstance(raw, bool):
            item = "true" if raw else "false"
        elif isinstance(raw, int | float):
            item = str(raw)
        if not isinstance(item, str) or not re.fullmatch(HOOK_ARG_VALUE, item):
            raise ValueError(f"argument {key}: invalid value {item!r}: must match {HOOK_ARG_VALUE}")
        out.append((key, item))
    return tuple(sorted(out))


HookArgs = Annotated[
    tuple[
        tuple[
            Annotated[str, Field(pattern=HOOK_ARG_KEY)],
            Annotated[str, Field(pattern=HOOK_ARG_VALUE)],
        ],
        ...,
    ],
    BeforeValidator(_hook_args),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": HOOK_ARG_KEY},
            "additionalProperties": {"type": "string", "pattern": HOOK_ARG_VALUE},
        }
    ),
]


class HookUse(Frozen):
    """One Lua hook attached to a route: which hook, where it runs, and its arguments."""

    use: Annotated[str, Field(pattern=HOOK_NAME)]
    # Not `on`: YAML 1.1 reads that key as the boolean true.
    at: HookPhase | None = None  # shipped hooks know where they run; user hooks must say
    args: HookArgs = ()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        """`- audit` as a shorthand for `- use: audit`."""
        return {"use": value} if isinstance(value, str) else value

    def arg(self, key: str) -> str | None:
        """One argument's value, or None."""
        return dict(self.args).get(key)


# --- egress policy rules: each entry is one EGRESS_HTTP_PROXY_DESTINATION line ---

POLICY_MODES = ("proxy", "tls")
DEFAULT_GROUP = vocabulary.DEFAULT_GROUP


def _policy_rule(value: str) -> str:
    """A rule must parse (policy.parse_rule); the text is kept as written, for messages."""
    egress_policy.parse_rule(value)
    return value


def _rule_list(value: object, handler: ValidatorFunctionWrapHandler) -> tuple[str, ...]:
    """A rule list: each rule checked (PolicyRuleText), and `*` only last; a misplaced `*`
    is reported in the same pass as the bad rules, not after they are fixed."""
    texts = list(value) if isinstance(value, list | tuple) else []
    misplaced = any(isinstance(t, str) and t.strip() == "*" for t in texts[:-1])
    try:
        rules: tuple[str, ...] = handler(value)
    except ValidationError as exc:
        if not misplaced:
            raise
        details = [
            InitErrorDetails(
                type=PydanticCustomError(e["type"], e["msg"]),
                loc=e["loc"],
                input=e["input"],
            )
            for e in exc.errors()
        ]
        details.append(
            InitErrorDetails(
                type=PydanticCustomError("value_error", egress_policy.WILDCARD_LAST),
                loc=(),
                input=value,
            )
        )
        raise ValidationError.from_exception_data(exc.title, details) from None
    egress_policy.check_order([egress_policy.parse_rule(text) for text in rules])
    return rules


PolicyRuleText = Annotated[
    str,
    AfterValidator(_policy_rule),
    WithJsonSchema({"type": "string", "examples": ["*.example.com", "!10.0.0.0/8", "*"]}),
]


def _guard_classes(value: tuple[str, ...]) -> tuple[str, ...]:
    """`default`, class names and `-name`; kept as written, checked by classes.expand."""
    egress_classes.expand(value)
    return value


GuardList = Annotated[
    tuple[Annotated[str, Field(pattern=r"^-?[a-z0-9-]{1,32}$")], ...],
    AfterValidator(_guard_classes),
    WithJsonSchema(
        {
            "type": "array",
            "items": {"type": "string", "enum": ["default", *egress_classes.BY_NAME]},
            "examples": [["default", "private"], ["default", "-cgnat"]],
        }
    ),
]


GROUP_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class ClientGroup(Frozen):
    """A client group of a policy route: its clients (source networks) and their own ordered
    rule list (docs/policy.md)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", str_strip_whitespace=True, populate_by_name=True
    )

    name: Annotated[str, Field(pattern=GROUP_NAME)]
    sources: tuple[ClientNetwork, ...] = Field((), alias="from")  # (): any address
    # Proxy users (Proxy-Authorization: Basic, config/users.py) this group is for; (): anyone.
    users: tuple[Annotated[str, Field(pattern=USER_NAME)], ...] = ()
    policy: tuple[PolicyRuleText, ...]
    enforce: bool | None = None  # None: the route's `enforce`

    @model_validator(mode="after")
    def _someone(self) -> ClientGroup:
        if not self.sources and not self.users:
            raise ValueError("a client group needs `from` (client networks), `users`, or both")
        return self

    @field_validator("name")
    @classmethod
    def _not_default(cls, value: str) -> str:
        if value == DEFAULT_GROUP:
            raise ValueError(f"{DEFAULT_GROUP!r} is the route's own list (its `policy`)")
        return value

    @field_validator("policy", mode="wrap")
    @classmethod
    def _policy_order(cls, value: object, handler: ValidatorFunctionWrapHandler) -> tuple[str, ...]:
        if not value:
            raise ValueError("a client group needs a policy")
        return _rule_list(value, handler)


class Limits(Frozen):
    """Bounds of a policy route: concurrent CONNECT tunnels, and per client address a
    connection and a request rate (over `period`)."""

    tunnels: int | None = Field(None, ge=1, le=1_000_000)
    connection_rate: int | None = Field(None, ge=1, le=1_000_000)
    request_rate: int | None = Field(None, ge=1, le=1_000_000)
    period: Duration = 10_000


class RouteSettings(Frozen):
    """The per-route knobs; also the shape of `defaults:`, which sets them for every route."""

    mode: Literal["tcp", "http"] = "tcp"
    balance: Literal["roundrobin", "first", "leastconn", "source"] = "roundrobin"
    connect_timeout: Duration = 5000
    idle_timeout: Duration = 3_600_000
    source: SourceAddress | None = None
    allow_from: tuple[ClientNetwork, ...] = ()
    maxconn: int | None = Field(None, ge=1, le=1_000_000)
    check: HealthCheck = HealthCheck()
    proxy_protocol: Literal["v1", "v2"] | None = None
    resolve_prefer: Literal["ipv4", "ipv6"] = "ipv4"
    dns_slots: int = Field(4, ge=1, le=64)
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
    destinations_top: int = Field(50, ge=0, le=1000)


class Route(RouteSettings):
    """One egress route: a listener, and the destinations its traffic may go to."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    listen: ListenSpec
    # proxy and tls are per route only: a default making every route a proxy is a typo.
    mode: Literal["tcp", "http", "proxy", "tls"] = "tcp"  # type: ignore[assignment]
    # Required for tcp/http routes, refused for proxy/tls ones (`_destinations_for_mode`).
    destinations: tuple[EndpointSpec, ...] = Field((), validate_default=True)
    # --- egress policy (semantics in policy.py, docs/policy.md) ---
    policy: tuple[PolicyRuleText, ...] = ()
    destination_port: int | None = Field(None, ge=1, le=65535)  # tls: default = listen port
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
        return _rule_list(value, handler)

    @cached_property
    def rules(self) -> tuple[egress_policy.Rule, ...]:
        """The parsed policy rules, in order (first match wins)."""
        return tuple(egress_policy.parse_rule(text) for text in self.policy)

    @cached_property
    def groups(self) -> tuple[egress_policy.Group, ...]:
        """The client groups, in order; the route's own `policy` is the last, for everyone."""
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

    @cached_property
    def guard_classes(self) -> tuple[str, ...]:
        """The refused address classes (`guard` expanded)."""
        return egress_classes.expand(self.guard)

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
        if self.mode != "proxy":
            for key in (
                "clients",
                "limits",
                "connect_sni",
                "connect_sni_ports",
                "enforce",
                "proxy_auth",
                "parent",
            ):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} needs mode: proxy")
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
        """Entries the table keeps (least recently used go first): room for the top N and
        for the newcomers that may overtake them."""
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
    def named_destinations(self) -> tuple[Endpoint, ...]:
        """Destinations that are DNS names, resolved at runtime into server-template slots."""
        return tuple(d for d in self.destinations if d.ip is None)


class Resolvers(Frozen):
    """How haproxy re-resolves destination names at runtime."""

    nameservers: tuple[EndpointSpecDNS, ...] = ()  # empty: take them from /etc/resolv.conf
    hold_valid: Duration = 10_000
    # How long an address that left the DNS answer keeps its slot (and its traffic).
    hold_obsolete: Duration = 30_000
    timeout: Duration = 1000
    retries: int = Field(3, ge=1, le=100)


def _dns_endpoint(value: object) -> object:
    if isinstance(value, str):
        host, port = netaddr.parse_endpoint(value, default_port=53)
        if netaddr.looks_like_ipv4(host) or ":" in host:
            return {"host": host, "port": port}
        raise ValueError(f"nameserver must be an IP address (got {value!r})")
    return _endpoint(value)


EndpointSpecDNS = Annotated[
    Endpoint,
    BeforeValidator(_dns_endpoint),
    WithJsonSchema({"type": "string", "examples": ["10.0.0.10", "127.0.0.1:5353"]}),
]
Resolvers.model_rebuild()


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

    @property
    def needs_resolvers(self) -> bool:
        """A `resolvers` section is only emitted when some destination is a DNS name (or a
        policy route resolves names at runtime)."""
        return any(r.named_destinations or r.is_policy for r in self.routes)

    @property
    def policy_routes(self) -> tuple[Route, ...]:
        """The proxy and tls routes: they share the policy's stick tables."""
        return tuple(r for r in self.routes if r.is_policy)

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


# --- turning pydantic's errors into located problems ------------------------------------------


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_loc(loc: Sequence[int | str]) -> str:
    """('routes', 1, 'listen') → 'routes[1].listen'; odd keys (a typo'd "\n") come quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-") or part in ("tagged-union",):
            continue  # pydantic's internal validator names carry no meaning for users
        elif not _PLAIN_KEY.fullmatch(part):
            out += f"[{part!r}]"  # repr: a key cannot break the one-line-per-problem output
        else:
            out += f".{part}" if out else part
    return out


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model a field holds: itself, or inside tuple[...], `X | None` or Annotated[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel] | None, loc: Sequence[int | str]) -> list[str]:
    """The field names (as written in YAML: aliases) of the model at `loc` under `model`."""
    current = model
    for part in loc:
        if isinstance(part, int) or part.startswith("function-") or current is None:
            continue
        fields = current.model_fields
        info = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        current = _model_in(info.annotation) if info is not None else None
    if current is None:
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def closest(name: str, known: Iterable[str]) -> str:
    """ "did you mean `x`? " for the known name closest to a misspelt one, or ""."""
    close = difflib.get_close_matches(name.replace("-", "_").lower(), list(known), n=1)
    return f"did you mean `{close[0]}`? " if close else ""


def unknown_field(name: str, known: Iterable[str]) -> str:
    """The message for an unknown field, with the closest known name when one is close."""
    return f"unknown field ({closest(name, known)}see `haproxy-egress schema` for every field)"


def _not_a_list(err: Mapping[str, Any]) -> str:
    """A single value where a list belongs, with the list spelled out for this value."""
    got = err["input"]
    name = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "field")
    return (
        f"must be a list, not the single value {got!r}: write `{name}: [{got}]`, "
        f"or one `- {got}` per line below `{name}:`"
    )


def _message(err: Mapping[str, Any], model: type[BaseModel] | None = None) -> str:
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err["type"] == "too_short":
        return "must not be empty"
    if err["type"] == "extra_forbidden":
        return unknown_field(str(err["loc"][-1]), _fields_at(model, err["loc"][:-1]))
    if err["type"] in ("tuple_type", "list_type") and isinstance(err.get("input"), str | int):
        return _not_a_list(err)
    if any("password" in str(part) for part in err["loc"]):
        return (
            msg.split(" (got", 1)[0]
            if err["type"] != "string_pattern_mismatch"
            else (
                "invalid value (not shown: it is a secret): printable ASCII without blanks, "
                "quotes, backslash, '#' or '$'"
            )
        )
    if err["type"] == "string_pattern_mismatch":
        got = err.get("input")
        return f"invalid value {got!r}: must match {err['ctx']['pattern']}"
    if err["type"] not in ("value_error", "missing") and "input" in err:
        got = err["input"]
        if not isinstance(got, Mapping | list | tuple):
            msg += f" (got {got!r})"
    return msg


def problems_from(
    error: ValidationError, source: str, prefix: str = "", model: type[BaseModel] | None = None
) -> list[Problem]:
    """All of a ValidationError's errors as problems under `source` and a path prefix
    (`model`, the one validated, names the known fields when one is unknown)."""
    problems = []
    errors = error.errors()
    item_locs = {
        format_loc(e["loc"][:-1]) for e in errors if e["loc"] and isinstance(e["loc"][-1], int)
    }
    for err in errors:
        loc = format_loc(err["loc"])
        if err["type"] == "too_short" and loc in item_locs:
            continue  # pydantic counts only valid items: "empty" would be wrong, the item is bad
        if prefix and loc:
            path = f"{prefix}.{loc}" if not loc.startswith("[") else prefix + loc
        else:
            path = prefix or loc
        problems.append(Problem(source, path, _message(err, model)))
    return problems


def validate(model: type[BaseModel], data: object, source: str, prefix: str = "") -> Any:
    """Validate `data` as `model`; raise ProblemList with located problems on failure."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProblemList(problems_from(exc, source, prefix, model)) from None


class ProblemList(Exception):
    """Internal carrier of located problems between the model and the loaders."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(map(str, self.problems)))


@dataclass(frozen=True)
class Located:
    """A validated route and where it was defined."""

    route: Route
    source: str
    path: str
    line: int | None = None


def cross_route_problems(
    routes: Sequence[Located], reserved: Mapping[str, Listen]
) -> list[Problem]:
    """Names and listen addresses must be unique across every source (and not collide with the
    stats page or metrics endpoint, given in `reserved` as label → listener)."""
    problems: list[Problem] = []
    by_name: dict[str, Located] = {}
    for item in routes:
        first = by_name.get(item.route.name)
        if first is not None:
            problems.append(
                Problem(
                    item.source,
                    f"{item.path}.name",
                    f"route name {item.route.name!r} is already used by "
                    f"{first.source}: {first.path}",
                    item.line,
                )
            )
        else:
            by_name[item.route.name] = item
    # Only listeners on the same port can overlap, and only on the same address or when one is
    # a wildcard: index by (port, address) with the first wildcard per port, to stay linear.
    by_address: dict[tuple[int, str | None], Located] = {}
    wildcard: dict[int, Located] = {}
    any_on_port: dict[int, Located] = {}
    for item in routes:
        listen = item.route.listen
        key = (listen.port, None if listen.is_wildcard else listen.address)
        if listen.is_wildcard:
            clash = any_on_port.get(listen.port)
        else:
            clash = wildcard.get(listen.port) or by_address.get(key)
        if clash is not None:
            problems.append(
                Problem(
                    item.source,
                    f"{item.path}.listen",
                    f"listen {listen} is already used by route "
                    f"{clash.route.name!r} ({clash.source}: {clash.path})",
                    item.line,
                )
            )
        any_on_port.setdefault(listen.port, item)
        by_address.setdefault(key, item)
        if listen.is_wildcard:
            wildcard.setdefault(listen.port, item)
        for label, listener in reserved.items():
            if item.route.listen.overlaps(listener):
                problems.append(
                    Problem(
                        item.source,
                        f"{item.path}.listen",
                        f"listen {item.route.listen} collides with the {label}",
                        item.line,
                    )
                )
    return problems
