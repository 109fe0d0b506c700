"""A policy route's decision chain per phase, in the order haproxy runs it: a CONNECT
(`connect`, tcp-request content), a plain HTTP request (`plain`, http-request), a tls route's
ClientHello (`tls`) and the tunnel's SNI check (`sni_check`), with what follows a decision:
the answer, and where the stream goes."""

from __future__ import annotations

from functools import cached_property

from haproxy_egress.config.vocabulary import VARS, Limit, RuleId, Verdict, Via
from haproxy_egress.render.decision.conditions import (
    OR,
    PASSES,
    SNI_PORT,
    Term,
    begins,
    equals,
    found,
    is_true,
    unless,
    var,
    when,
)
from haproxy_egress.render.decision.lines import (
    AclLine,
    Comment,
    Line,
    Rule,
    RuleAction,
    comments,
    set_var,
    unset_var,
)
from haproxy_egress.render.decision.policy import Decision
from haproxy_egress.render.decision.refusals import REFUSE, answer

__all__ = ["PolicyChain"]


class PolicyChain(Decision):
    """The decision chain of one policy route, part by part, in the order haproxy runs them.

    Each part is a sequence of `Line`s; built on first use and kept, since a proxy route runs
    the same parts in its CONNECT (tcp-request content) and its plain HTTP (http-request) phase.
    """

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
                *comments(
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
            *comments(
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
            *set_destination(),
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
            Rule(REFUSE, bad),
        )

    @cached_property
    def connect_auth(self) -> tuple[Line, ...]:
        """A CONNECT without the credentials the route asks for: a 407."""
        auth = when(found(VARS.auth))
        return (Rule(set_var(VARS.status, "int(407)"), auth), Rule(REFUSE, auth))

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
        lines: list[Line] = [Rule(REFUSE, unless(PASSES))]
        if self.route.parents is not None:
            lines.append(Rule(RuleAction("lua.egress_drop_head"), when(equals(v.via, Via.DIRECT))))
        return (
            *lines,
            *set_destination(),
            *comments(
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
        # One test for "there is a path and it is not empty" (a missing variable has none).
        path = Term(var(v.pathq), "-m len 1:")
        to_parent = " (the parent gets the absolute URI)" if parents else ""
        return (
            Comment(f"Origin form towards the origin{to_parent}; proxy-only headers stay here."),
            Rule(set_var(v.pathq, "pathq")),
            Rule(RuleAction("set-uri", (), f"%[{var(v.pathq)}]"), when(path, *direct)),
            Rule(RuleAction("set-uri", (), "/"), when(~path, *direct)),
            Rule(RuleAction("del-header", (), "proxy-connection")),
            Rule(RuleAction("del-header", (), "proxy-authorization")),
        )

    @cached_property
    def http_auth(self) -> tuple[Line, ...]:
        """A plain request without the credentials the route asks for: a 407 and its realm."""
        realm = f"hdr Proxy-Authenticate 'Basic realm=\"{self.route.name}\"'"
        return (Rule(answer(407, realm), when(found(VARS.auth))),)

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
            Rule(answer(429), when(found(v.limit))),
            Rule(answer(403), when(equals(v.verdict, Verdict.DENY))),
            Rule(answer(503), when(equals(v.verdict, Verdict.UNRESOLVED))),
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
        return (Rule(RuleAction("reject"), unless(PASSES)), *set_destination())

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


def set_destination() -> tuple[Rule, ...]:
    """Connect to the address and port the decision chose."""
    return (
        Rule(RuleAction("set-dst", (), var(VARS.dstip))),
        Rule(RuleAction("set-dst-port", (), var(VARS.dstport))),
    )
