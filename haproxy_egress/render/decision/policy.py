"""The policy decision of a route as haproxy rules: the destination's address, the client's
group, the first matching rule, the guard and the verdict, the limits, the counters and the
refusal texts; each part a sequence of lines, shared by every phase that decides
(chain.py puts them in order with what follows a decision)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import format_duration
from haproxy_egress.config.vocabulary import (
    DEFAULT_GROUP,
    GUARD_PREFIX,
    LIMIT_PREFIX,
    SELF_CLASS,
    VARS,
    Action,
    Auth,
    Limit,
    Reason,
    RuleId,
    Verdict,
    Via,
)
from haproxy_egress.render.decision.conditions import (
    OR,
    PASSES,
    Cond,
    Term,
    begins,
    equals,
    found,
    in_networks,
    is_true,
    unless,
    var,
    when,
)
from haproxy_egress.render.decision.lines import (
    BLANK,
    Comment,
    Line,
    Rule,
    RuleAction,
    comments,
    increment,
    set_var,
    track,
    unset_var,
)
from haproxy_egress.render.decision.lookups import ANY_IP, RESOLVERS, TABLES, Files
from haproxy_egress.render.decision.refusals import refusal
from haproxy_egress.render.maps import NONE, parent_files, route_files

__all__ = ["Decision"]


class Decision:
    """The parts of one policy route's decision, each a sequence of `Line`s, built on first use
    and kept: a proxy route runs the same parts in its CONNECT (tcp-request content) and its
    plain HTTP (http-request) phase. `PolicyChain` (chain.py) puts them in order."""

    def __init__(self, route: Route, maps_dir: Path | str) -> None:
        self.route = route
        directory = str(maps_dir)
        self._maps = Files(directory, route_files(route))
        self._parent_maps = Files(directory, parent_files(route))

    # -- lookups shared by several parts --

    def _name_index(self, host: str, out: str, extra: Sequence[Term] = ()) -> list[Line]:
        """Into `out`, the lowest index of the rules that match the name in `host`: the exact
        name first, else the most specific domain (of the name with a dot in front, so that a
        domain rule covers the domain itself). Each lookup is one sample expression, the key
        built where it is used: no variable is set for a key, so none is left to unset."""
        m, v = self._maps, VARS
        guard = when(*extra) if extra else None
        exact = f"str(=),concat(,{host},/),concat(,{v.group},/)"
        domain = f"str(.),concat(,{host},),{m.lookup('domains')},concat(/,{v.group},/)"
        unset = when(~found(out), *extra)
        return [
            Rule(set_var(out, f"{exact},concat(,{v.dstport},),{m.lookup('index')}"), guard),
            Rule(set_var(out, f"{exact},concat(*),{m.lookup('index')}"), unset),
            Rule(set_var(out, f"{domain},concat(,{v.dstport},),{m.lookup('index')}"), unset),
            Rule(set_var(out, f"{domain},concat(*),{m.lookup('index')}"), unset),
        ]

    def _count(self, *terms: Term) -> list[Line]:
        """Count the decision in the policy table (ROUTE/GROUP/RULE/VERDICT, gpc0)."""
        v = VARS
        key = (
            f"str({self.route.name}/),concat(,{v.group},/),concat(,{v.rule},/)"
            f",concat(,{v.verdict},)"
        )
        guard = when(*terms) if terms else None
        return [Rule(track(0, key, TABLES.policy), guard), Rule(increment(0, 0), guard)]

    def _reason(self, kind: Reason, cond: Cond, text: str = "", **values: object) -> Rule:
        words = refusal(kind, self.route.name, text, **values)
        return Rule(RuleAction("set-var-fmt", (VARS.reason,), f'"{words}"'), cond)

    # -- the parts --

    @cached_property
    def count(self) -> tuple[Line, ...]:
        """Count every decision."""
        return tuple(self._count())

    def count_early(self, early: bool) -> tuple[Line, ...]:
        """Count the decisions whose SNI is checked later (`early`), or the others
        (connect_sni: match)."""
        return tuple(self._count(is_true(VARS.early) if early else ~is_true(VARS.early)))

    @cached_property
    def non_ascii(self) -> tuple[Line, ...]:
        """A CONNECT target outside ASCII: denied, logged and counted (connect.lua found it)."""
        v, name = VARS, self.route.name
        bad = equals(v.rule, RuleId.NON_ASCII)
        return (
            *comments(
                "A CONNECT target outside ASCII (connect.lua): refused with a 400 naming the"
                " reason,",
                f"logged and counted as rule {RuleId.NON_ASCII}. (A plain request with one in"
                " its URI or Host is",
                "refused by haproxy's HTTP parser, counted in the frontend's request errors.)",
            ),
            Rule(set_var(v.route, f"str({name})"), when(bad)),
            Rule(set_var(v.group, f"str({DEFAULT_GROUP})"), when(bad)),
            Rule(set_var(v.verdict, f"str({Verdict.DENY})"), when(bad)),
            *self._count(bad),
        )

    @cached_property
    def authenticate(self) -> tuple[Line, ...]:
        """Proxy users: the Basic credential, checked against the users map; a 407's cause."""
        m, v, r = self._maps, VARS, self.route
        required = r.proxy_auth == "required"
        auth = found(v.auth)
        return (
            *comments(
                f"-- proxy users (config/users.py): the Basic credential in {v.pauth}; its",
                "SHA-256 with the user's salt must equal the user's digest --",
            ),
            Rule(set_var(v.route, f"str({r.name})")),
            Rule(
                set_var(
                    v.cred,
                    f"{var(v.pauth)},regsub(^[Bb][Aa][Ss][Ii][Cc][[:blank:]]+,),b64dec",
                ),
                when(Term(var(v.pauth), "-m reg -i ^basic[[:blank:]]")),
            ),
            Rule(set_var(v.puser, f"{var(v.cred)},field(1,:)"), when(found(v.cred))),
            Rule(set_var(v.pentry, f"{var(v.puser)},{m.lookup('users')}"), when(found(v.puser))),
            Rule(
                set_var(
                    v.phash,
                    f"{var(v.pentry)},field(1,:),concat(:,{v.cred},),sha2(256),hex,lower",
                ),
                when(found(v.pentry)),
            ),
            Rule(
                set_var(v.user, var(v.puser)),
                when(Term(f"{var(v.pentry)},field(2,:),strcmp({v.phash})", "eq 0")),
            ),
            Comment(
                "A credential that is wrong gets 407 (never the groups without users)"
                + ("; so does none at all." if required else ".")
            ),
            Rule(set_var(v.auth, f"str({Auth.WRONG})"), when(found(v.pauth), ~found(v.user))),
            *(
                [Rule(set_var(v.auth, f"str({Auth.MISSING})"), unless(found(v.pauth)))]
                if required
                else []
            ),
            Rule(set_var(v.group, f"str({NONE})"), when(auth)),
            Rule(set_var(v.rule, f"str({RuleId.PROXY_AUTH})"), when(auth)),
            Rule(set_var(v.verdict, f"str({Verdict.DENY})"), when(auth)),
            self._reason(Reason.AUTH_MISSING, when(equals(v.auth, Auth.MISSING))),
            self._reason(Reason.AUTH_WRONG, when(equals(v.auth, Auth.WRONG))),
            *self._count(auth),
        )

    @cached_property
    def decide(self) -> tuple[Line, ...]:
        """The policy: the destination's address, the client's group, the first matching rule,
        the guard and the verdict (config/policy.py `decide` in haproxy's words); the reason
        of a refusal is worded later (`refusals`), only on the path of a request not allowed."""
        return (
            *self._address(),
            *self._group(),
            *self._first_match(),
            *self._guard(),
            *self._parent_choice(),
            BLANK,
        )

    def _address(self) -> list[Line]:
        v, r = VARS, self.route
        literal = in_networks(v.dsthost, *ANY_IP)
        fresh = is_true(v.fresh)
        lines: list[Line] = [
            *comments(
                "-- the policy (first match wins; docs/policy.md): lists live in the map files"
                " below, so",
                "an edit of a list changes only those files (render/maps.py says what each"
                " holds) --",
            ),
            Rule(set_var(v.route, f"str({r.name})")),
            Comment(
                "An IP literal is its own address; a name is looked up in the cache, else resolved."
            ),
            Rule(set_var(v.dstip, var(v.dsthost)), when(literal)),
        ]
        if r.resolve_prefer == "ipv4":
            lines += [
                Rule(
                    set_var(v.dstip, f"{var(v.dsthost)},table_gpt0({TABLES.dns}),ipmask(32)"),
                    unless(found(v.dstip)),
                ),
                Comment(
                    '0.0.0.0 is the cache\'s "not there"; the literal `::` matches it too'
                    " (as 0.0.0.0)."
                ),
                Rule(unset_var(v.dstip), when(in_networks(v.dstip, "0.0.0.0/32"), ~literal)),
            ]
        ipv4 = in_networks(v.dstip, "0.0.0.0/0")
        lines += [
            Rule(set_var(v.fresh, "bool(true)"), unless(found(v.dstip))),
            Rule(
                RuleAction("do-resolve", (v.dstip, RESOLVERS, r.resolve_prefer), var(v.dsthost)),
                when(fresh),
            ),
            Comment(
                "do-resolve keeps nothing once the request ends: remember IPv4 answers for"
                " `hold valid`."
            ),
            Rule(track(1, var(v.dsthost), TABLES.dns), when(fresh, ipv4)),
            Rule(RuleAction("sc-set-gpt0", ("1",), var(v.dstip)), when(fresh, ipv4)),
        ]
        return lines

    def _group(self) -> list[Line]:
        m, v = self._maps, VARS
        if not self.route.asks_credentials:
            return [
                Comment("The client's group: the first whose sources hold the client address."),
                Rule(
                    set_var(v.group, f"src,{m.lookup('groups', DEFAULT_GROUP)}"),
                    unless(found(v.group)),
                ),
            ]
        return [
            *comments(
                "The client's group: the first whose sources hold the client address and, if"
                " it names",
                "users, whose users include the authenticated one.",
            ),
            Rule(set_var(v.sources, f"src,{m.lookup('groups')}"), unless(found(v.group))),
            Rule(
                set_var(v.group, f"{var(v.sources)},concat(/,{v.user},),{m.lookup('members')}"),
                when(found(v.user), ~found(v.group)),
            ),
            Rule(
                set_var(
                    v.group,
                    f"{var(v.sources)},concat(/),{m.lookup('members', DEFAULT_GROUP)}",
                ),
                unless(found(v.group)),
            ),
        ]

    def _first_match(self) -> list[Line]:
        m, v = self._maps, VARS
        idx = found(v.idx)
        network = f"{var(v.dstip)},{m.lookup('networks')},concat(/,{v.group},/)"
        wildcard = f"str(*/),concat(,{v.group},),{m.lookup('index')}"
        lines: list[Line] = [
            *comments(
                "Each lookup names the most specific name, domain or network of any rule; the"
                " index map",
                "then gives, for this group and port, the lowest index of the rules that match it.",
                "First match: the lowest of the three (a name's, then lower ones replace it).",
            ),
            *self._name_index(v.dsthost, v.idx),
            Rule(
                set_var(v.ai, f"{network},concat(,{v.dstport},),{m.lookup('index')}"),
                when(found(v.dstip)),
            ),
            Rule(
                set_var(v.ai, f"{network},concat(*),{m.lookup('index')}"),
                when(found(v.dstip), ~found(v.ai)),
            ),
            Rule(
                set_var(v.idx, var(v.ai)), when(~idx, OR, Term(f"{var(v.ai)},sub({v.idx})", "lt 0"))
            ),
            Rule(
                set_var(v.idx, wildcard), when(~idx, OR, Term(f"{wildcard},sub({v.idx})", "lt 0"))
            ),
        ]
        if self.route.deny_doh:
            lines += [
                Comment(
                    "DNS-over-HTTPS resolvers (@doh, docs/policy.md) are denied before any rule"
                    " (deny_doh)."
                ),
                Rule(set_var(v.rule, f"str({RuleId.DOH})"), when(m.holds(v.dsthost, "doh"))),
            ]
        lines += [
            Rule(set_var(v.rule, var(v.idx)), unless(found(v.rule))),
            Rule(set_var(v.rule, f"str({RuleId.DEFAULT})"), unless(found(v.rule))),
            Rule(
                set_var(
                    v.action,
                    f"{var(v.group)},concat(/,{v.rule},),{m.lookup('rules', Action.DENY)}",
                )
            ),
        ]
        return lines

    def _guard(self) -> list[Line]:
        m, v = self._maps, VARS
        address = found(v.dstip)
        own_port = m.holds(v.dstport, "ports")
        cls = found(v.cls)
        is_self = equals(v.cls, SELF_CLASS)
        return [
            Comment(
                "The guard: address classes refuse what a name rule allowed; the router"
                " itself, always."
            ),
            Rule(set_var(v.cls, f"{var(v.dstip)},{m.lookup('classes')}"), when(address)),
            Rule(unset_var(v.cls), when(equals(v.cls, NONE))),
            Comment(
                "The router itself: one of its listen ports on one of its addresses, or on the"
                " address this"
            ),
            Comment("connection came to (compared with dst only for one of those ports)."),
            Rule(
                set_var(v.cls, f"str({SELF_CLASS})"),
                when(
                    own_port,
                    Term(f"{var(v.dstip)},{m.lookup('self')}", "-m found"),
                    OR,
                    own_port,
                    Term(f"dst,strcmp({v.dstip})", "eq 0"),
                ),
            ),
            Rule(
                set_var(v.verdict, f"str({Verdict.ALLOW})"),
                when(
                    equals(v.action, Action.ALLOW, Action.ALLOW_ADDRESS),
                    ~cls,
                    OR,
                    equals(v.action, Action.ALLOW_ADDRESS),
                    ~is_self,
                ),
            ),
            Rule(
                set_var(v.verdict, f"str({Verdict.WOULD_DENY})"),
                when(equals(v.action, Action.REPORT), ~cls),
            ),
            Comment(
                f"({RuleId.GUARD_SELF}: the self class is refused whatever the rule's action.)"
            ),
            Rule(
                set_var(v.rule, f"str({GUARD_PREFIX}),concat(,{v.cls},)"),
                when(cls, equals(v.action, Action.ALLOW, Action.REPORT), OR, is_self),
            ),
            Rule(set_var(v.verdict, f"str({Verdict.DENY})"), when(~found(v.verdict), OR, is_self)),
        ]

    def _parent_choice(self) -> list[Line]:
        """Where an allowed request goes (parent proxies), and the verdict without an address."""
        v, parents = VARS, self.route.parents
        unresolved = set_var(v.verdict, f"str({Verdict.UNRESOLVED})")
        if parents is None:
            return [Rule(unresolved, when(PASSES, ~found(v.dstip)))]
        d = self._parent_maps
        direct = set_var(v.via, f"str({Via.DIRECT})")
        dotted = f"str(.),concat(,{v.dsthost},)"
        lines: list[Line] = comments(
            "-- parent proxies (docs/policy.md): the policy allowed it; the direct list says"
            " whether",
            "it skips the parent (by name, or by address when the router knows one); a denied one",
            "goes nowhere --",
        )
        if any(rule.kind == "any" for rule in parents.direct_rules):
            lines.append(Rule(direct, when(PASSES)))
        lines += [
            Rule(
                direct,
                when(Term(f"{var(v.dsthost)},{d.lookup('direct-hosts')}", "-m found"), PASSES),
            ),
            Rule(
                direct,
                when(Term(f"{dotted},{d.lookup('direct-domains')}", "-m found"), PASSES),
            ),
            Rule(
                direct,
                when(Term(f"{var(v.dstip)},{d.lookup('direct-networks')}", "-m found"), PASSES),
            ),
            Rule(set_var(v.via, f"str({Via.PARENT})"), when(~found(v.via), PASSES)),
            Rule(unresolved, when(PASSES, ~found(v.dstip), equals(v.via, Via.DIRECT))),
            *comments(
                "Fail closed: with every parent down an allowed destination gets 503, never"
                " a direct",
                f"connection (counted as rule {RuleId.NO_PARENT}, verdict {Verdict.UNRESOLVED}).",
            ),
            Rule(
                set_var(v.rule, f"str({RuleId.NO_PARENT})"),
                when(
                    PASSES,
                    equals(v.via, Via.PARENT),
                    Term(f"nbsrv({self.route.name}-parent-tunnel)", "eq 0"),
                ),
            ),
            Rule(unresolved, when(equals(v.rule, RuleId.NO_PARENT))),
        ]
        return lines

    @cached_property
    def refusals(self) -> tuple[Line, ...]:
        """The reason of a refusal (403 body, CONNECT answer): which rule or limit decided and
        what would change it, in the words `explain` uses. Worded once the decision and the
        limits are judged, so an allowed request never pays for the texts."""
        m, v, r = self._maps, VARS, self.route
        text = f"%[{var(v.group)},concat(/,{v.idx},),{m.lookup('reasons')}]"
        guard = begins(v.rule, GUARD_PREFIX)
        lines: list[Line] = [
            *comments(
                "The reason (403 body and log): which rule decided and what would change it,"
                " in the",
                "words `explain` uses (config/policy.py REFUSALS); later lines win.",
            ),
            self._reason(
                Reason.DENY,
                when(equals(v.verdict, Verdict.DENY), equals(v.action, Action.DENY)),
                text,
            ),
            self._reason(Reason.DEFAULT, when(equals(v.rule, RuleId.DEFAULT))),
            self._reason(Reason.GUARD, when(guard, found(v.idx)), text),
            self._reason(Reason.GUARD_DEFAULT, when(guard, ~found(v.idx))),
            self._reason(Reason.SELF, when(equals(v.rule, RuleId.GUARD_SELF))),
        ]
        if r.deny_doh:
            lines.append(self._reason(Reason.DOH, when(equals(v.rule, RuleId.DOH))))
        lines.append(self._reason(Reason.UNRESOLVED, when(equals(v.verdict, Verdict.UNRESOLVED))))
        if r.parents is not None:
            lines.append(self._reason(Reason.NO_PARENT, when(equals(v.rule, RuleId.NO_PARENT))))
        lim = r.limits
        if lim.tunnels or lim.connection_rate or lim.request_rate:
            period = format_duration(lim.period)
            lines += [
                self._reason(
                    Reason.LIMIT_TUNNELS,
                    when(equals(v.limit, Limit.TUNNELS)),
                    tunnels=lim.tunnels,
                ),
                self._reason(
                    Reason.LIMIT_CONNECTION_RATE,
                    when(equals(v.limit, Limit.CONNECTION_RATE)),
                    rate=lim.connection_rate,
                    period=period,
                ),
                self._reason(
                    Reason.LIMIT_REQUEST_RATE,
                    when(equals(v.limit, Limit.REQUEST_RATE)),
                    rate=lim.request_rate,
                    period=period,
                ),
            ]
        return (*lines, BLANK)

    def limits(self, connect: bool) -> tuple[Line, ...]:
        """The route's limits, judged once the policy let the request through: tunnels (for a
        CONNECT), the client's connection rate and (plain HTTP) request rate."""
        v, r = VARS, self.route
        lim = r.limits
        lines: list[Line] = []
        if connect and lim.tunnels:
            conns = f"be_conn({r.name}-tunnel)"
            if r.parents is not None:
                lines += [
                    Comment("Tunnels through the parents count too."),
                    Rule(set_var(v.ptunnels, f"be_conn({r.name}-parent-tunnel)")),
                ]
                conns += f",add({v.ptunnels})"
            lines.append(
                Rule(
                    set_var(v.limit, f"str({Limit.TUNNELS})"),
                    when(PASSES, Term(conns, f"ge {lim.tunnels}")),
                )
            )
        if lim.connection_rate:
            lines.append(
                Rule(
                    set_var(v.limit, f"str({Limit.CONNECTION_RATE})"),
                    when(PASSES, Term("sc2_conn_rate", f"gt {lim.connection_rate}")),
                )
            )
        if not connect and lim.request_rate:
            lines.append(
                Rule(
                    set_var(v.limit, f"str({Limit.REQUEST_RATE})"),
                    when(PASSES, Term("sc2_http_req_rate", f"gt {lim.request_rate}")),
                )
            )
        if lim.tunnels or lim.connection_rate or lim.request_rate:
            limited = when(found(v.limit))
            lines += [
                Rule(set_var(v.rule, f"str({LIMIT_PREFIX}),concat(,{v.limit},)"), limited),
                Rule(set_var(v.verdict, f"str({Verdict.DENY})"), limited),
            ]
        lines.append(BLANK)
        return tuple(lines)

    @cached_property
    def destination(self) -> tuple[Line, ...]:
        """Per-destination counters (destinations_top), after the limits were judged."""
        v, r = VARS, self.route
        if not r.destinations_top:
            return (BLANK,)
        named = found(v.dsthost)
        return (
            *comments(
                "Per-destination counters (docs/metrics.md): attempts (gpc1), denials (gpc0)"
                " and, while",
                "the stream lives, bytes; in a size-bounded table, after the limits have been"
                " judged.",
            ),
            Rule(track(2, var(v.dsthost), r.destinations_table), when(named)),
            Rule(increment(1, 2), when(named)),
            Rule(increment(0, 2), when(named, ~PASSES)),
            BLANK,
        )
