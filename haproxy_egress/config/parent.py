"""Parent proxies of a `mode: proxy` route: where allowed traffic goes when it may not go direct.

A route's `parent:` names one or more upstream HTTP proxies (the corporate squid, Zscaler...),
how to pick among them (`first`: ordered failover, `roundrobin`), a `direct:` list in the rule
syntax of `policy` (config/policy.py) for destinations that skip the parent, and a mounted
`kubernetes.io/basic-auth` Secret for the parent's credentials. `parent: env` takes the proxy
and the direct list from the pod's HTTPS_PROXY / HTTP_PROXY / NO_PROXY (`from_environment`).

The local policy always decides first; this module only says, for an allowed destination,
whether it goes direct or to the parent (`goes_direct`), for the template and `explain` alike.
No I/O here: the credentials are read by config/sources (they are an input like the users file).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config.addresses import IPAddress, ip_or_none, join_host_port, parse_endpoint
from haproxy_egress.config.vocabulary import Action
from haproxy_egress.settings import NO_PROXY_VARIABLES, PROXY_VARIABLES

ENV = "env"
# A Secret's mount path: absolute, no blanks or characters that need quoting anywhere.
_DIR = re.compile(r"^/[A-Za-z0-9._/-]{0,4095}$")
# Basic credentials (RFC 7617): the user name may not hold ':'; neither may hold control chars.
_USER = re.compile(r"^[^:\x00-\x1f\x7f]{1,256}$")
_PASSWORD = re.compile(r"^[^\x00-\x1f\x7f]{1,1024}$")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class ParentProxy(_Frozen):
    """One parent: a DNS name (re-resolved like destinations) or an IP literal, and a port."""

    host: str
    port: int = Field(ge=1, le=65535)

    @property
    def hostport(self) -> str:
        """host:port, with brackets around IPv6 literals (haproxy's `server` address)."""
        return join_host_port(self.host, self.port)

    @property
    def is_name(self) -> bool:
        """A DNS name: the server line resolves it through the route's resolvers."""
        return ip_or_none(self.host) is None

    @property
    def server_name(self) -> str:
        """The haproxy server name, and the `server` label of its metrics."""
        return f"{self.host.replace(':', '-')}_{self.port}"


def parent_spec(value: object) -> object:
    """`parent: env` is the short form of `{from_env: true}`; other strings are mistakes."""
    if isinstance(value, str):
        if value.strip() != ENV:
            raise ValueError(f"must be '{ENV}' or a mapping with proxies (got {value!r})")
        return {"from_env": True}
    return value


def _proxy(value: object) -> object:
    """'host:port' (the port is required: a parent on a guessed port is a silent misroute)."""
    if isinstance(value, str):
        host, port = parse_endpoint(value, default_port=None)
        return {"host": host, "port": port}
    return value


def _direct_rule(text: str) -> str:
    """A direct-list entry: a name, `*.domain`, an address or network, or `*`; no `!`, no ports
    (a destination either skips the parent or not: exceptions belong in the policy)."""
    rule = egress_policy.parse_rule(text)
    if rule.action == Action.DENY:
        raise ValueError(f"{text!r}: a direct list takes no '!' (deny in the policy instead)")
    if rule.ports:
        raise ValueError(f"{text!r}: a direct list takes no ports")
    return text


ProxySpec = Annotated[ParentProxy, BeforeValidator(_proxy)]


class Parent(_Frozen):
    """`parent:` of a proxy route (docs/policy.md, "Parent proxies")."""

    proxies: tuple[ProxySpec, ...] = Field((), max_length=32)
    balance: Literal["first", "roundrobin"] = "first"
    direct: tuple[str, ...] = ()
    credentials_dir: str | None = None
    # `parent: env` is `{from_env: true}`: proxies and direct list from HTTPS_PROXY/NO_PROXY
    # (resolved by config/sources on load); the long form can still name credentials_dir.
    from_env: bool = False
    # base64(user:password) read from credentials_dir by config/sources: private, so it is in
    # no dump, schema or repr (only the map file the proxy reads holds it).
    _credential: str | None = PrivateAttr(None)

    @field_validator("proxies")
    @classmethod
    def _unique(cls, value: tuple[ParentProxy, ...]) -> tuple[ParentProxy, ...]:
        names = [p.server_name for p in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"parent {name.replace('_', ':')} is listed twice")
        return value

    @model_validator(mode="after")
    def _proxies_or_env(self) -> Parent:
        if self.from_env and (self.proxies or self.direct):
            raise ValueError(
                "from_env takes the proxies and the direct list from HTTPS_PROXY/NO_PROXY: "
                "leave out proxies and direct"
            )
        if not self.from_env and not self.proxies:
            raise ValueError("proxies: name at least one parent proxy (HOST:PORT)")
        return self

    @field_validator("direct")
    @classmethod
    def _direct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for text in value:
            _direct_rule(text)
        egress_policy.check_order([egress_policy.parse_rule(t) for t in value])
        return value

    @field_validator("credentials_dir")
    @classmethod
    def _credentials_dir(cls, value: str | None) -> str | None:
        if value is not None and not _DIR.match(value):
            raise ValueError(f"must be an absolute path of letters, digits, ._/- (got {value!r})")
        return value

    @property
    def credential(self) -> str | None:
        """The Basic credential for the parent, or None (no credentials_dir)."""
        return self._credential

    def with_credential(self, credential: str | None) -> Parent:
        """A copy holding `credential` (equality sees it: a rotation is a change)."""
        copy = self.model_copy()
        copy._credential = credential
        return copy

    @cached_property
    def direct_rules(self) -> tuple[egress_policy.Rule, ...]:
        """The direct list as rules (all `allow`): a match means "skip the parent"."""
        return tuple(egress_policy.parse_rule(t) for t in self.direct)

    def goes_direct(self, host: str, address: IPAddress | None) -> bool:
        """Whether an allowed destination skips the parent: a direct entry matches its name, or
        its address when the router knows one (an IP literal, or a name it resolved)."""
        return any(r.matches_target(host, address) for r in self.direct_rules)


def basic_credential(username: bytes, password: bytes, source: str) -> str:
    """`base64(user:password)` for Proxy-Authorization: Basic; ValueError names `source`."""
    try:
        user, secret = username.decode().strip("\r\n"), password.decode().strip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{source}: username and password must be UTF-8 text") from None
    if not _USER.match(user):
        raise ValueError(f"{source}/username: 1-256 characters, no ':' or control characters")
    if not _PASSWORD.match(secret):
        raise ValueError(f"{source}/password: 1-1024 characters, no control characters")
    return base64.b64encode(f"{user}:{secret}".encode()).decode()


def _no_proxy_entry(entry: str) -> str:
    """One NO_PROXY entry as a direct-list rule: `.example.com` and `example.com` both mean the
    domain and every name below it (curl's reading), CIDRs and addresses stay, `*` is `*`."""
    if entry == "*":
        return "*"
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
        return entry.strip("[]")
    except ValueError:
        pass
    name = entry.lstrip(".").lstrip("*").lstrip(".")
    if not name or ":" in name:
        raise ValueError(
            f"entry {entry!r}: only names, .domains, addresses, CIDRs and * (no ports)"
        )
    return f"*.{name}"


def from_environment(env: Mapping[str, str], spec: Parent | None = None) -> Parent:
    """`parent: env`: the parent from HTTPS_PROXY (or HTTP_PROXY), the direct list from
    NO_PROXY, balance and credentials_dir from `spec`; ValueError names the variable and the
    form it cannot express."""
    proxies: list[dict[str, object]] = []
    for variable in PROXY_VARIABLES:
        url = env.get(variable, "").strip()
        if not url:
            continue
        m = re.match(r"^(?:(https?)://)?(?:([^@/]*)@)?([^/@]+?)/?$", url)
        if m is None or m.group(1) == "https":
            raise ValueError(f"{variable}: expected http://HOST:PORT (got {url!r})")
        if m.group(2) is not None:
            raise ValueError(
                f"{variable}: credentials in the URL are not used (they would end up in "
                "haproxy.cfg); mount them as a Secret and set parent.credentials_dir"
            )
        try:
            host, port = parse_endpoint(m.group(3), default_port=None)
        except ValueError as exc:
            raise ValueError(f"{variable}: {exc}") from None
        if {"host": host, "port": port} not in proxies:
            proxies.append({"host": host, "port": port})
    if not proxies:
        raise ValueError(f"parent: env needs one of {', '.join(PROXY_VARIABLES)}")
    direct: list[str] = []
    for variable in NO_PROXY_VARIABLES:
        for raw in env.get(variable, "").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                rule = _direct_rule(_no_proxy_entry(entry))
            except ValueError as exc:
                raise ValueError(f"{variable}: {exc}") from None
            if rule not in direct:
                direct.append(rule)
        if env.get(variable, "").strip():
            break
    # `*` must be the last entry of a rule list; everything else keeps NO_PROXY's order.
    direct.sort(key=lambda r: r == "*")
    return Parent.model_validate(
        {
            "proxies": proxies,
            "direct": direct,
            "balance": spec.balance if spec else "first",
            "credentials_dir": spec.credentials_dir if spec else None,
        }
    )
