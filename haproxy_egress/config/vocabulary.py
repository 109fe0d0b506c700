"""The policy vocabulary: every word the proxy, `explain`, the maps, the metrics and the logs share.

The decision of a policy route is made by haproxy (render/decision/'s rules, lua/*.lua) and
read by Python (`explain`, the metrics, the log readers), so its words are an interface: the
verdicts, the rule ids, the map actions, the limit kinds and the `txn.*` variables that carry
them from one haproxy rule to the next. They are spelled here and nowhere else
(tests/unit/config/test_vocabulary.py fails on a second spelling):

- Python modules import the enums and constants (render/decision/ builds the decision
  chain's rules from them);
- the templates get `VOCABULARY` as `V` (render/compiler.py): `{{ V.var.verdict }}`,
  `{{ V.reason.PARENT_AUTH }}`;
- Lua gets `lua_module()`, a generated file loaded before every other Lua file, which sets
  the global table `egress` (`egress.var.rule`, `egress.rule.ALLOW_FROM`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

__all__ = [
    "DEFAULT_GROUP",
    "GUARD_PREFIX",
    "LIMIT_PREFIX",
    "PASSING",
    "SELF_CLASS",
    "VARS",
    "VOCABULARY",
    "Action",
    "AuditVerdict",
    "Auth",
    "Limit",
    "Reason",
    "RuleId",
    "Vars",
    "Verdict",
    "Via",
    "Vocabulary",
    "guard_rule",
    "limit_rule",
    "lua_module",
]


class Verdict(StrEnum):
    """A decision's outcome (log `verdict=`, the metric's `verdict` label, `explain`)."""

    ALLOW = "allow"
    DENY = "deny"
    WOULD_DENY = "would-deny"  # a report-only list would have denied: let through, counted
    UNRESOLVED = "unresolved"  # allowed, but no address to go to (or no parent reachable)


# The verdicts that let a request through.
PASSING = (Verdict.ALLOW, Verdict.WOULD_DENY)


class AuditVerdict(StrEnum):
    """The audit hook's `"verdict"` (lua/audit.lua): denied when a refusal named its rule."""

    ALLOWED = "allowed"
    DENIED = "denied"


class Action(StrEnum):
    """What a rule of a client group does, as the rules map holds it (render/maps.py)."""

    ALLOW = "allow"
    ALLOW_ADDRESS = "allow-address"  # an address rule: lets a refused address class through
    DENY = "deny"
    REPORT = "report"  # a deny of a report-only group (`enforce: false`)


class RuleId(StrEnum):
    """The rule a decision names when it is not a rule's 1-based index (log `rule=`)."""

    DEFAULT = "default"  # no rule matched
    PROXY_AUTH = "proxy-auth"  # a 407: missing or wrong proxy credentials
    SNI_MISMATCH = "sni-mismatch"  # connect_sni: match, and the ClientHello named another host
    NO_SNI = "no-sni"  # a tls route's ClientHello without a server name
    NON_ASCII = "non-ascii"  # a CONNECT target or SNI outside ASCII (names travel as A-labels)
    DOH = "doh"  # a DNS-over-HTTPS resolver (the @doh category), denied before any rule
    GUARD_SELF = "guard-self"  # the router itself
    NO_PARENT = "no-parent"  # every parent proxy is down: fail closed
    ALLOW_FROM = "allow_from"  # the client is outside the route's allow_from


GUARD_PREFIX = "guard-"  # guard-<class>: an address class refused what a rule allowed
LIMIT_PREFIX = "limit-"  # limit-<kind>: a limit refused it


class Limit(StrEnum):
    """The limit that refused a request (`limit-<kind>`)."""

    TUNNELS = "tunnels"
    CONNECTION_RATE = "connection-rate"
    REQUEST_RATE = "request-rate"


class Auth(StrEnum):
    """Why the proxy asked for credentials (a 407)."""

    MISSING = "missing"
    WRONG = "wrong"


class Reason(StrEnum):
    """Which refusal's words (config/policy.py REFUSALS) a 403/407 body and `explain` say."""

    DEFAULT = "default"  # no rule matched
    DENY = "deny"  # a deny rule matched
    GUARD = "guard"  # a rule matched, but the address class is refused
    GUARD_DEFAULT = "guard-default"  # report-only with no match, into a refused class
    SELF = "self"  # the router itself
    AUTH_MISSING = "auth-missing"
    AUTH_WRONG = "auth-wrong"
    DOH = "doh"  # a DNS-over-HTTPS resolver, denied before any rule (deny_doh)
    LIMIT_TUNNELS = "limit-tunnels"
    LIMIT_CONNECTION_RATE = "limit-connection-rate"
    LIMIT_REQUEST_RATE = "limit-request-rate"
    UNRESOLVED = "unresolved"  # the name does not resolve
    NO_PARENT = "no-parent"  # every parent proxy is down
    PARENT_AUTH = "parent-refused-credentials"  # a parent proxy refused the router's credentials


class Via(StrEnum):
    """Where an allowed request goes on a route with parent proxies."""

    DIRECT = "direct"
    PARENT = "parent"


DEFAULT_GROUP = "default"  # the route's own `policy`, for every client no group takes
SELF_CLASS = "self"  # the router's own listen addresses and ports: always refused


def guard_rule(cls: str) -> str:
    """The rule id of a guard refusal: `guard-<class>`."""
    return f"{GUARD_PREFIX}{cls}"


def limit_rule(kind: Limit) -> str:
    """The rule id of a limit refusal: `limit-<kind>`."""
    return f"{LIMIT_PREFIX}{kind}"


@dataclass(frozen=True)
class Vars:
    """The `txn.*` variables of a policy route: the interface between its haproxy rules, its
    Lua actions and its log line. Attribute → the full haproxy name."""

    # The destination (set by Lua for CONNECT, by http-request rules for plain HTTP, by the
    # SNI for tls routes) and the address it goes to.
    dsthost: str = "txn.dsthost"
    dstport: str = "txn.dstport"
    dstip: str = "txn.dstip"
    # The decision.
    route: str = "txn.egress_route"
    group: str = "txn.egress_group"
    rule: str = "txn.egress_rule"
    verdict: str = "txn.egress_verdict"
    reason: str = "txn.egress_reason"
    action: str = "txn.egress_action"
    cls: str = "txn.egress_class"
    idx: str = "txn.egress_idx"
    status: str = "txn.egress_status"
    limit: str = "txn.egress_limit"
    # The lookups that find the first matching rule.
    ai: str = "txn.egress_ai"
    fresh: str = "txn.egress_fresh"
    sources: str = "txn.egress_sources"
    # Proxy users.
    pauth: str = "txn.egress_pauth"
    cred: str = "txn.egress_cred"
    puser: str = "txn.egress_puser"
    pentry: str = "txn.egress_pentry"
    phash: str = "txn.egress_phash"
    user: str = "txn.egress_user"
    auth: str = "txn.egress_auth"
    # The CONNECT head (Lua) and the tunnel.
    connect: str = "txn.egress_connect"
    bad: str = "txn.egress_bad"
    headlen: str = "txn.egress_headlen"
    tunnel: str = "txn.egress_tunnel"
    url: str = "txn.egress_url"
    pathq: str = "txn.egress_pathq"
    # connect_sni: match.
    early: str = "txn.egress_early"
    sent: str = "txn.egress_sent"
    sni: str = "txn.egress_sni"
    sni_idx: str = "txn.egress_sni_idx"
    sni_ok: str = "txn.egress_sni_ok"
    # Parent proxies.
    via: str = "txn.egress_via"
    ptunnels: str = "txn.egress_ptunnels"
    pcred: str = "txn.egress_pcred"
    pstatus: str = "txn.egress_pstatus"
    pclose: str = "txn.egress_pclose"
    # The audit hook's Host header (http routes).
    audit_host: str = "txn.audit_host"


VARS = Vars()


@dataclass(frozen=True)
class Vocabulary:
    """What the templates get as `V`: the variables and every word (the conditions built from
    them are render/decision/'s)."""

    var: Vars = VARS
    verdict: type[Verdict] = Verdict
    action: type[Action] = Action
    rule: type[RuleId] = RuleId
    limit: type[Limit] = Limit
    auth: type[Auth] = Auth
    reason: type[Reason] = Reason
    via: type[Via] = Via
    guard_prefix: str = GUARD_PREFIX
    limit_prefix: str = LIMIT_PREFIX
    default_group: str = DEFAULT_GROUP
    self_class: str = SELF_CLASS


VOCABULARY = Vocabulary()


def _lua_table(name: str, items: dict[str, str]) -> str:
    body = "".join(f"        {k} = {_lua_string(v)},\n" for k, v in sorted(items.items()))
    return f"    {name} = {{\n{body}    }},\n"


def _lua_string(value: str) -> str:
    # Every value above is plain ASCII without quotes or backslashes.
    if '"' in value or "\\" in value:
        raise ValueError(f"not a plain Lua string: {value!r}")
    return f'"{value}"'


def lua_module(refusals: Mapping[Reason, str]) -> str:
    """The Lua text that hands the vocabulary to the Lua files: the global table `egress`.

    Loaded first (render/hooks.py), in every thread's Lua state, so each later file reads
    `egress.var.rule` rather than spelling "txn.egress_rule" itself. `refusals` (config/policy.py
    REFUSALS): those whose only blank is the route go along as `string.format` patterns
    (`egress.reason.PARENT_AUTH`, one `%s` for the route).
    """
    by_route = {
        kind.name: text.replace("%", "%%").replace("{route}", "%s")
        for kind, text in refusals.items()
        if "{" not in text.replace("{route}", "")
    }
    tables = {
        "var": {f.name: getattr(VARS, f.name) for f in fields(VARS)},
        "verdict": {m.name: m.value for m in Verdict},
        "rule": {m.name: m.value for m in RuleId},
        "limit": {m.name: m.value for m in Limit},
        "auth": {m.name: m.value for m in Auth},
        "via": {m.name: m.value for m in Via},
        "audit": {m.name: m.value for m in AuditVerdict},
        "reason": by_route,
    }
    return (
        "-- Generated by haproxy_egress/config/vocabulary.py: the policy vocabulary for Lua.\n"
        "egress = {\n" + "".join(_lua_table(k, v) for k, v in tables.items()) + "}\n"
    )
