"""The decision chain of a policy route: the haproxy rules, in order, that decide it.

A policy route's verdict is computed by haproxy itself, rule after rule, from the map files
render/maps.py writes; `explain` computes the same verdict in Python (config/policy.py `decide`),
and tests/integration/test_policy_differential.py proves the two agree. This module builds that
program as typed values, so no template splices a condition together:

- a `Term` is one ACL test (`{ var(txn.egress_rule) -m found }`, `!` in front when negated),
  a `Cond` the `if`/`unless` of a rule, made of terms;
- a `RuleAction` (`set-var`, `set-var-fmt`, `unset-var`, `do-resolve`, `track-sc<n>`, ...) with
  its arguments renders its own haproxy words;
- a `Rule` is an action and its condition; an `AclLine` declares a named ACL; a `Comment` is a
  line the reader of the live haproxy.cfg gets; `BLANK` an empty line where the rendered text
  has always had one.

`PolicyChain(route, maps_dir)` gives a route's chain per phase (`connect`, `plain`, `tls`), its
parts in the order haproxy runs them; templates/policy.cfg.j2 prints a chain with
`rules(prefix, chain)`, every rule after its prefix (`tcp-request content` or `http-request`:
a proxy route runs the same `decide` in both), and decides nothing. (Printed in Python, not
by a Jinja loop, which cost Jinja's call overhead on every line of every route.)
Every word comes from config/vocabulary.py; the refusal texts from config/policy.py REFUSALS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property, lru_cache
from pathlib import Path
from typing import Literal

from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config.route import Route
from haproxy_egress.config.scalars import format_duration
from haproxy_egress.config.vocabulary import (
    DEFAULT_GROUP,
    GUARD_PREFIX,
    LIMIT_PREFIX,
    PASSING,
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
from haproxy_egress.render.maps import MATCH, NONE, parent_files, route_files

__all__ = [
    "BLANK",
    "OR",
    "PASSES",
    "RESOLVERS",
    "SNI_PORT",
    "TABLES",
    "Acl",
    "AclLine",
    "Blank",
    "Comment",
    "Cond",
    "Line",
    "Or",
    "PolicyChain",
    "Rule",
    "RuleAction",
    "Tables",
    "Term",
    "refusal",
    "rules",
]


@dataclass(frozen=True)
class Tables:
    """The stick tables policy routes share (the exporter reads the decision counters)."""

    policy: str = "_egress_policy"  # key ROUTE/RULE/VERDICT, gpc0 = decisions
    dns: str = "_egress_dns"  # key name, gpt0 = its IPv4 address, for `hold valid`


TABLES = Tables()
RESOLVERS = "dns"  # the `resolvers` section of haproxy.cfg.j2 that do-resolve asks
_ANY_IP = ("0.0.0.0/0", "::/0")


# -- conditions --


@dataclass(frozen=True, slots=True)
class Term:
    """One ACL test in braces: a sample and what it must be (`-m found`, `lt 0`)."""

    sample: str
    test: str
    negated: bool = False

    def __invert__(self) -> Term:
        return _negated(self)

    def __str__(self) -> str:
        return f"{'!' if self.negated else ''}{{ {self.sample} {self.test} }}"


@lru_cache(maxsize=1024)  # bounded: a term may name a route
def _negated(term: Term) -> Term:
    return Term(term.sample, term.test, not term.negated)


@dataclass(frozen=True, slots=True)
class Acl:
    """A named ACL an `AclLine` declared (`acl egress_sni_port ...`), as a term."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Or:
    """`||` between the terms of a condition: either side may hold."""

    def __str__(self) -> str:
        return "||"


OR = Or()


@dataclass(frozen=True, slots=True)
class Cond:
    """A rule's condition: all terms hold (`if`), or not all of them (`unless`); `OR`
    between terms separates alternatives."""

    keyword: Literal["if", "unless"]
    terms: tuple[Term | Acl | Or, ...]
    # Printed once per render or twice (both phases of a proxy route): kept as text.
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        text = f"{self.keyword} {' '.join(str(t) for t in self.terms)}"
        object.__setattr__(self, "text", text)

    def __str__(self) -> str:
        return self.text


# Most conditions are the same for every route: kept, so each is built and printed once (a
# bounded cache, since some name the route).
@lru_cache(maxsize=2048)
def when(*terms: Term | Acl | Or) -> Cond:
    """`if` all of `terms`."""
    return Cond("if", terms)


@lru_cache(maxsize=256)
def unless(*terms: Term | Acl | Or) -> Cond:
    """`unless` all of `terms`."""
    return Cond("unless", terms)


def var(name: str) -> str:
    """The sample of a variable."""
    return f"var({name})"


# The tests on a variable name no route (their arguments are variable names and vocabulary
# words): each is built once per process, not once per route.
@cache
def found(name: str) -> Term:
    """The variable is set."""
    return Term(var(name), "-m found")


@cache
def is_true(name: str) -> Term:
    """The boolean variable is true."""
    return Term(var(name), "-m bool")


@cache
def equals(name: str, *words: str) -> Term:
    """The variable is one of `words`."""
    return Term(var(name), f"-m str {' '.join(words)}")


@cache
def begins(name: str, prefix: str) -> Term:
    """The variable begins with `prefix`."""
    return Term(var(name), f"-m beg {prefix}")


@cache
def in_networks(name: str, *networks: str) -> Term:
    """The variable is an address in one of `networks`."""
    return Term(var(name), f"-m ip {' '.join(networks)}")


# The policy lets the request through (its verdict is one of PASSING).
PASSES = equals(VARS.verdict, *PASSING)
# connect_sni: match: the CONNECT names one of the route's TLS ports (declared in `connect`).
SNI_PORT = Acl("egress_sni_port")


# -- actions --


@dataclass(frozen=True, slots=True)
class RuleAction:
    """What a rule does: its keyword (`set-var`, `unset-var`, `set-var-fmt`, `do-resolve`,
    `track-sc0`, `sc-inc-gpc0`, `sc-set-gpt0`), its arguments in parentheses and its operand
    (a sample, a log-format text, a key and its table)."""

    keyword: str
    args: tuple[str, ...] = ()
    operand: str = ""
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = f"{self.keyword}({','.join(self.args)})" if self.args else self.keyword
        object.__setattr__(self, "text", f"{head} {self.operand}" if self.operand else head)

    def __str__(self) -> str:
        return self.text


def set_var(name: str, sample: str) -> RuleAction:
    """`set-var(<name>) <sample>`."""
    return RuleAction("set-var", (name,), sample)


def unset_var(name: str) -> RuleAction:
    """`unset-var(<name>)`."""
    return RuleAction("unset-var", (name,))


def track(counter: int, key: str, table: str) -> RuleAction:
    """`track-sc<counter> <key> table <table>`: the stream's entry of the table."""
    return RuleAction(f"track-sc{counter}", (), f"{key} table {table}")


def increment(gpc: int, counter: int) -> RuleAction:
    """`sc-inc-gpc<gpc>(<counter>)`: count in the tracked entry."""
    return RuleAction(f"sc-inc-gpc{gpc}", (str(counter),))


# -- lines --

_INDENT = "    "


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: an action and, unless it always runs, its condition."""

    action: RuleAction
    cond: Cond | None = None
    text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        action = self.action.text
        object.__setattr__(self, "text", f"{action} {self.cond.text}" if self.cond else action)

    def __str__(self) -> str:
        return self.text

    def line(self, prefix: str) -> str:
        """The rule as a line of its section, after `prefix` (http-request, ...)."""
        return f"{_INDENT}{prefix} {self.text}"


@dataclass(frozen=True, slots=True)
class Comment:
    """A line that explains the rules after it, for the reader of the live haproxy.cfg."""

    text: str

    def line(self, prefix: str) -> str:
        """The comment line (the prefix is for rules only)."""
        return f"{_INDENT}# {self.text}"


@dataclass(frozen=True, slots=True)
class Blank:
    """An empty line between parts of the chain."""

    def line(self, prefix: str) -> str:
        """Nothing: the line is empty."""
        return ""


BLANK = Blank()


@dataclass(frozen=True, slots=True)
class AclLine:
    """The declaration of a named ACL (`acl <name> <criterion>`), which later rules test."""

    acl: Acl
    criterion: str

    def line(self, prefix: str) -> str:
        """The declaration (an acl line takes no rule prefix)."""
        return f"{_INDENT}acl {self.acl} {self.criterion}"


Line = Rule | Comment | Blank | AclLine


def rules(prefix: str, lines: Sequence[Line]) -> str:
    """The text of a part of the chain: its lines, each rule after `prefix` (`http-request`,
    `tcp-request content`), joined without a newline at the end (the template's `rules`)."""
    return "\n".join(line.line(prefix) for line in lines)


def _comments(*texts: str) -> list[Line]:
    return [Comment(t) for t in texts]


# -- refusal texts --

# What fills each word of a refusal (config/policy.py REFUSALS) in the proxy: the values of
# the request, as the decision left them in its variables.
_REFUSAL_SAMPLES = {
    "host": f"%[var({VARS.dsthost})]",
    "port": f"%[var({VARS.dstport})]",
    "address": f"%[var({VARS.dstip})]",
    "cls": f"%[var({VARS.cls})]",
    "rule": f"%[var({VARS.idx})]",
    "group": f"%[var({VARS.group})]",
    "client": "%[src]",
}


def refusal(kind: Reason, route: str, text: str = "", **values: object) -> str:
    """A refusal's words (REFUSALS[kind]) for haproxy's set-var-fmt: the route's name, and
    sample expressions for the rest; `text` is the expression of the rule's text, `values` the
    route's own figures (a limit and its period)."""
    samples = {**_REFUSAL_SAMPLES, **values}
    return egress_policy.REFUSALS[kind].format(route=route, text=text, **samples)


# -- the chain --


class _Files:
    """A route's map and pattern files under the maps directory, each read with its own
    converter or match method (render/maps.py MATCH)."""

    def __init__(self, directory: str, names: dict[str, str]) -> None:
        self._directory = directory
        self._names = names

    def path(self, table: str) -> str:
        return f"{self._directory}/{self._names[table]}"

    def lookup(self, table: str, default: str | None = None) -> str:
        """The converter that looks a sample up in the map (`map_ip(<file>,<default>)`)."""
        tail = f",{default}" if default is not None else ""
        return f"{MATCH[table]}({self.path(table)}{tail})"

    def holds(self, name: str, table: str) -> Term:
        """The variable is one of the patterns of the file (`-m int -f <file>`)."""
        return Term(var(name), f"-m {MATCH[table]} -f {self.path(table)}")


class PolicyChain:
    """The decision chain of one policy route, part by part, in the order haproxy runs them.

    Each part is a sequence of `Line`s; built on first use and kept, since a proxy route runs
    the same parts in its CONNECT (tcp-request content) and its plain HTTP (http-request) phase.
    """

    def __init__(self, route: Route, maps_dir: Path | str) -> None:
        self.route = route
        directory = str(maps_dir)
        self._maps = _Files(directory, route_files(route))
        self._parent_maps = _Files(directory, parent_files(route))

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
            *_comments(
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
            *_comments(
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
        literal = in_networks(v.dsthost, *_ANY_IP)
        fresh = is_true(v.fresh)
        lines: list[Line] = [
            *_comments(
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
            *_comments(
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
            *_comments(
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
        own = found(v.own)
        cls = found(v.cls)
        is_self = equals(v.cls, SELF_CLASS)
        return [
            Comment(
                "The guard: address classes refuse what a name rule allowed; the router"
                " itself, always."
            ),
            Rule(set_var(v.cls, f"{var(v.dstip)},{m.lookup('classes')}"), when(address)),
            Rule(unset_var(v.cls), when(equals(v.cls, NONE))),
            Comment("The router's own address, wanted only for one of its own listen ports."),
            Rule(set_var(v.own, "dst"), when(address, m.holds(v.dstport, "ports"))),
            Rule(
                set_var(v.cls, f"str({SELF_CLASS})"),
                when(
                    own,
                    Term(f"{var(v.dstip)},{m.lookup('self')}", "-m found"),
                    OR,
                    own,
                    Term(f"{var(v.dstip)},strcmp({v.own})", "eq 0"),
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
        lines: list[Line] = _comments(
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
            *_comments(
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
            *_comments(
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
            *_comments(
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

    # -- a phase's whole chain, in order --

    @cached_property
    def connect(self) -> tuple[Line, ...]:
        """A proxy route's tcp-request content chain, after connect.lua read the head: a
        CONNECT is judged and answered here (a plain request only passes through)."""
        r = self.route
        lines = [*self.non_ascii, *self.connect_bad]
        if r.asks_credentials:
            lines += [*self.authenticate, *self.connect_auth]
        lines += [*self.decide, *self.limits(True), *self.refusals, *self.connect_status]
        if r.connect_sni == "match":
            ports = " ".join(str(p) for p in r.connect_sni_ports)
            lines += [
                *_comments(
                    "connect_sni: match: streams to a TLS port are counted once their SNI is"
                    " checked, in",
                    "the tunnel backend.",
                ),
                AclLine(SNI_PORT, f"{var(VARS.dstport)} -m int {ports}"),
                *self.connect_early,
                *self.count_early(False),
            ]
        else:
            lines += self.count
        return (*lines, *self.destination, *self.connect_forward)

    @cached_property
    def plain(self) -> tuple[Line, ...]:
        """A proxy route's http-request chain: a plain HTTP request judged and answered."""
        lines = [
            *_comments(
                "-- plain HTTP: the destination comes from the absolute URI (haproxy checks"
                " Host matches) --",
                "HTTP fetches stay out of the ACL conditions of this TCP frontend (switch-mode"
                " http): with",
                'one there, haproxy warns "HTTP log/header format not usable" at every start'
                " and reload.",
            ),
            *self.http_destination,
        ]
        if self.route.asks_credentials:
            lines += [*self.http_credentials, *self.authenticate, *self.http_auth]
        return (
            *lines,
            *self.decide,
            *self.limits(False),
            *self.count,
            *self.destination,
            *_set_destination(),
            *self.origin_form,
            *self.http_allowed,
            *self.refusals,
            *self.http_forward,
        )

    @cached_property
    def tls(self) -> tuple[Line, ...]:
        """A tls route's tcp-request content chain, once the ClientHello is in (a refused
        stream is closed without an answer: no reason is worded)."""
        return (*self.tls_sni, *self.decide, *self.count, *self.destination, *self.tls_forward)

    # -- what follows a decision: the answer, and where the stream goes --

    @cached_property
    def connect_bad(self) -> tuple[Line, ...]:
        """A CONNECT head connect.lua refused: a 400 naming the reason it left in the variable."""
        v = VARS
        bad = when(found(v.bad))
        return (
            Rule(set_var(v.status, "int(400)"), bad),
            Rule(set_var(v.reason, var(v.bad)), bad),
            Rule(_REFUSE, bad),
        )

    @cached_property
    def connect_auth(self) -> tuple[Line, ...]:
        """A CONNECT without the credentials the route asks for: a 407."""
        auth = when(found(VARS.auth))
        return (Rule(set_var(VARS.status, "int(407)"), auth), Rule(_REFUSE, auth))

    @cached_property
    def connect_status(self) -> tuple[Line, ...]:
        """The status of a refused CONNECT (egress_refuse sends it): a full tunnel count 503,
        a rate 429, a denial 403, no address 503."""
        v = VARS
        unset = ~found(v.status)
        return (
            Rule(set_var(v.status, "int(503)"), when(equals(v.limit, Limit.TUNNELS))),
            Rule(set_var(v.status, "int(429)"), when(found(v.limit), unset)),
            Rule(set_var(v.status, "int(403)"), when(equals(v.verdict, Verdict.DENY), unset)),
            Rule(set_var(v.status, "int(503)"), when(equals(v.verdict, Verdict.UNRESOLVED))),
        )

    @cached_property
    def connect_early(self) -> tuple[Line, ...]:
        """connect_sni: match: an allowed CONNECT to a TLS port is judged again on its SNI."""
        return (Rule(set_var(VARS.early, "bool(true)"), when(PASSES, SNI_PORT)),)

    @cached_property
    def connect_forward(self) -> tuple[Line, ...]:
        """A CONNECT the policy let through goes to the address it decided; any other is
        refused with its status."""
        v = VARS
        lines: list[Line] = [Rule(_REFUSE, unless(PASSES))]
        if self.route.parents is not None:
            lines.append(Rule(RuleAction("lua.egress_drop_head"), when(equals(v.via, Via.DIRECT))))
        return (
            *lines,
            *_set_destination(),
            *_comments(
                'Only a real tunnel gets "200 Connection established", and only once it is'
                " connected",
                "(unless connect_sni sent it already).",
            ),
            Rule(set_var(v.tunnel, "bool(true)"), unless(is_true(v.early))),
        )

    @cached_property
    def http_destination(self) -> tuple[Line, ...]:
        """A plain request's destination: the host and port of its absolute URI (haproxy has
        checked that Host matches), IPv6 literals without their brackets."""
        v = VARS
        absolute = Term(var(v.url), "-m beg -i http://")
        authority = "url,field(3,/)"
        return (
            Rule(set_var(v.url, "url")),
            Rule(
                RuleAction(
                    "return",
                    (),
                    "status 400 content-type text/plain string"
                    ' "absolute http:// URI expected (use CONNECT for https)"',
                ),
                unless(absolute),
            ),
            Rule(set_var(v.dsthost, f"{authority},host_only,lower")),
            Rule(set_var(v.dstport, f"{authority},port_only")),
            Rule(set_var(v.dstport, "int(80)"), when(Term(var(v.dstport), "-m int 0"))),
            Rule(
                set_var(v.dsthost, rf"{var(v.dsthost)},regsub(^\\[,),regsub(\\]$,)"),
                when(begins(v.dsthost, "["), OR, Term(var(v.dsthost), "-m end ]")),
            ),
        )

    @cached_property
    def http_credentials(self) -> tuple[Line, ...]:
        """A plain request's proxy credentials: its Proxy-Authorization header."""
        return (Rule(set_var(VARS.pauth, "req.fhdr(proxy-authorization)")),)

    @cached_property
    def origin_form(self) -> tuple[Line, ...]:
        """A plain request goes on in origin form (a parent gets the absolute URI), without
        the headers meant for the proxy."""
        v, parents = VARS, self.route.parents is not None
        direct = (equals(v.via, Via.DIRECT),) if parents else ()
        path = found(v.pathq)
        empty = Term(var(v.pathq), "-m len 0")
        to_parent = " (the parent gets the absolute URI)" if parents else ""
        return (
            Comment(f"Origin form towards the origin{to_parent}; proxy-only headers stay here."),
            Rule(set_var(v.pathq, "pathq")),
            Rule(RuleAction("set-uri", (), f"%[{var(v.pathq)}]"), when(path, ~empty, *direct)),
            Rule(RuleAction("set-uri", (), "/"), when(~path, *direct, OR, empty, *direct)),
            Rule(RuleAction("del-header", (), "proxy-connection")),
            Rule(RuleAction("del-header", (), "proxy-authorization")),
        )

    @cached_property
    def http_auth(self) -> tuple[Line, ...]:
        """A plain request without the credentials the route asks for: a 407 and its realm."""
        realm = f"hdr Proxy-Authenticate 'Basic realm=\"{self.route.name}\"'"
        return (Rule(_answer(407, realm), when(found(VARS.auth))),)

    @cached_property
    def http_allowed(self) -> tuple[Line, ...]:
        """An allowed plain request leaves the rules here, on its way to the address the policy
        decided: what follows is only for the others."""
        return (
            Comment(
                "Allowed: on its way (the rules below word and answer a refusal; report-only"
                " goes on after them)."
            ),
            Rule(RuleAction("allow"), when(equals(VARS.verdict, Verdict.ALLOW))),
        )

    @cached_property
    def http_forward(self) -> tuple[Line, ...]:
        """A refused plain request gets its status and reason (the address it was set to is
        never connected to)."""
        v = VARS
        return (
            Rule(_answer(429), when(found(v.limit))),
            Rule(_answer(403), when(equals(v.verdict, Verdict.DENY))),
            Rule(_answer(503), when(equals(v.verdict, Verdict.UNRESOLVED))),
        )

    @cached_property
    def tls_sni(self) -> tuple[Line, ...]:
        """A tls route's destination: the ClientHello's server name, on the route's port."""
        v = VARS
        non_ascii = RuleId.NON_ASCII
        return (
            Rule(set_var(v.dstport, f"int({self.route.upstream_port})")),
            Rule(set_var(v.dsthost, "req.ssl_sni,lower"), when(Term("req.ssl_hello_type", "1"))),
            Rule(set_var(v.rule, f"str({RuleId.NO_SNI})"), unless(found(v.dsthost))),
            Comment(
                "An SNI outside ASCII never reaches DNS nor a destination: the connection is"
                " closed."
            ),
            Rule(
                set_var(v.rule, f"str({non_ascii})"),
                when(Term(var(v.dsthost), "-m reg [^[:ascii:]]")),
            ),
            Rule(unset_var(v.dsthost), when(equals(v.rule, non_ascii))),
        )

    @cached_property
    def tls_forward(self) -> tuple[Line, ...]:
        """A tls stream the policy let through goes to the address it decided; any other is
        closed."""
        return (Rule(RuleAction("reject"), unless(PASSES)), *_set_destination())

    @cached_property
    def sni_check(self) -> tuple[Line, ...]:
        """connect_sni: match, in the tunnel backend: the early 200, then the ClientHello's
        name must be the CONNECT host or one the same rule allows; else the stream is closed,
        logged and counted as an SNI mismatch."""
        v = VARS
        early = is_true(v.early)
        mismatch = equals(v.rule, RuleId.SNI_MISMATCH)
        return (
            Rule(RuleAction("lua.egress_early_established"), when(early, ~is_true(v.sent))),
            Rule(set_var(v.sent, "bool(true)"), when(early)),
            Rule(
                set_var(v.sni, "req.ssl_sni,lower"),
                when(early, Term("req.ssl_hello_type", "1")),
            ),
            *self._name_index(v.sni, v.sni_idx, (found(v.sni),)),
            Rule(
                set_var(v.sni_ok, "bool(true)"),
                when(Term(f"{var(v.sni)},strcmp({v.dsthost})", "eq 0")),
            ),
            Rule(
                set_var(v.sni_ok, "bool(true)"),
                when(Term(f"{var(v.sni_idx)},sub({v.idx})", "eq 0")),
            ),
            Rule(set_var(v.rule, f"str({RuleId.SNI_MISMATCH})"), when(early, ~is_true(v.sni_ok))),
            Rule(set_var(v.verdict, f"str({Verdict.DENY})"), when(mismatch)),
            *self._count(early),
            Comment(
                "A mismatch, or no TLS at all, after the early 200: closed, logged and counted."
            ),
            Rule(RuleAction("reject"), when(mismatch)),
        )


# The refusal of a CONNECT: connect.lua's service answers with the status and reason.
_REFUSE = RuleAction("use-service", (), "lua.egress_refuse")


def _answer(status: int, extra: str = "") -> RuleAction:
    """`return` a plain request's refusal: its status, and the reason as the body."""
    tail = f" {extra}" if extra else ""
    body = f'lf-string "%[{var(VARS.reason)}]"{tail}'
    return RuleAction("return", (), f"status {status} content-type text/plain {body}")


def _set_destination() -> tuple[Rule, ...]:
    """Connect to the address and port the decision chose."""
    return (
        Rule(RuleAction("set-dst", (), var(VARS.dstip))),
        Rule(RuleAction("set-dst-port", (), var(VARS.dstport))),
    )
