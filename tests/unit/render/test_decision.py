"""The decision chain (render/decision/): each rule, term and comment renders its own haproxy
text, and a route's chain comes in the order haproxy must run it.

That the chain decides as `explain` does is proven against live haproxy by
tests/integration/test_policy_differential.py; that the rendered config is what it was, by the
golden files (tests/data/golden/, tests/data/policy-golden/)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from haproxy_egress.config.route import Route
from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.config.vocabulary import VARS, Limit, RuleId, Verdict
from haproxy_egress.render.decision import (
    BLANK,
    OR,
    PASSES,
    AclLine,
    Comment,
    Cond,
    Line,
    PolicyChain,
    Rule,
    RuleAction,
    Term,
)

MAPS = Path("/run/haproxy-egress/maps")
# Proxy users with fixed salts (a Secret mount in the golden case).
USERS = Path(__file__).parents[2] / "data" / "policy-golden" / "secret" / "users"


def _route(**fields: Any) -> Route:
    route = {"name": "web", "listen": 8080, "mode": "proxy", "policy": ["*.example.com"]}
    doc = {"resolvers": {"nameservers": ["127.0.0.1:53"]}, "routes": [route | fields]}
    data = yaml.safe_dump(doc).encode()
    snapshot = Snapshot(Path("/cfg"), (("r.yaml", data),), users=("users", USERS.read_bytes()))
    (only,) = load_snapshot(snapshot, {}).routes
    return only


def _text(lines: tuple[Line, ...], prefix: str = "http-request") -> list[str]:
    return [line.line(prefix) for line in lines]


def _index(lines: list[str], fragment: str) -> int:
    """The position of the first line holding `fragment`."""
    return next(i for i, line in enumerate(lines) if fragment in line)


def test_a_term_renders_its_braces_and_its_negation() -> None:
    term = Term(f"var({VARS.dstip})", "-m found")
    assert str(term) == "{ var(txn.dstip) -m found }"
    assert str(~term) == "!{ var(txn.dstip) -m found }"
    assert str(~~term) == str(term)
    assert str(PASSES) == "{ var(txn.egress_verdict) -m str allow would-deny }"


def test_a_condition_joins_its_terms_after_if_or_unless() -> None:
    a, b = Term("var(txn.a)", "-m found"), Term("var(txn.b),sub(txn.c)", "lt 0")
    assert str(Cond("if", (a, ~b))) == "if { var(txn.a) -m found } !{ var(txn.b),sub(txn.c) lt 0 }"
    assert str(Cond("unless", (a,))) == "unless { var(txn.a) -m found }"


def test_an_action_renders_its_keyword_arguments_and_operand() -> None:
    assert str(RuleAction("set-var", ("txn.x",), "str(y)")) == "set-var(txn.x) str(y)"
    assert str(RuleAction("unset-var", ("txn.x",))) == "unset-var(txn.x)"
    assert (
        str(RuleAction("do-resolve", ("txn.ip", "dns", "ipv4"), "var(txn.h)"))
        == "do-resolve(txn.ip,dns,ipv4) var(txn.h)"
    )
    assert str(RuleAction("track-sc1", (), "var(txn.h) table t")) == "track-sc1 var(txn.h) table t"


def test_a_line_puts_the_prefix_before_a_rule_only() -> None:
    rule = Rule(RuleAction("set-var", ("txn.x",), "bool(true)"), Cond("if", (PASSES,)))
    assert rule.line("tcp-request content") == (
        "    tcp-request content set-var(txn.x) bool(true)"
        " if { var(txn.egress_verdict) -m str allow would-deny }"
    )
    assert Rule(RuleAction("set-var", ("txn.x",), "dst")).line("http-request") == (
        "    http-request set-var(txn.x) dst"
    )
    assert Comment("why").line("http-request") == "    # why"
    assert BLANK.line("http-request") == ""


def test_decide_runs_address_group_first_match_guard_then_verdict() -> None:
    chain = PolicyChain(_route(), MAPS)
    lines = _text(chain.decide)
    order = [
        f"set-var({VARS.route}) str(web)",
        f"do-resolve({VARS.dstip},dns,ipv4)",
        f"set-var({VARS.group}) src,map_ip({MAPS}/web.groups.map,default)",
        f"set-var({VARS.idx}) str(=),concat(,{VARS.dsthost},/),concat(,{VARS.group},/),"
        f"concat(,{VARS.dstport},),map_str_int(",
        f"set-var({VARS.idx}) str(.),concat(,{VARS.dsthost},),map_end(",
        f"set-var({VARS.idx}) var({VARS.ai}) if",
        f"set-var({VARS.rule}) str({RuleId.DOH})",
        f"set-var({VARS.action}) var({VARS.group})",
        f"set-var({VARS.cls}) var({VARS.dstip}),map_ip({MAPS}/web.classes.map)",
        f"set-var({VARS.verdict}) str({Verdict.DENY}) if",
        f"set-var({VARS.verdict}) str({Verdict.UNRESOLVED})",
    ]
    positions = [_index(lines, fragment) for fragment in order]
    assert positions == sorted(positions)
    assert lines[0].startswith("    # -- the policy (first match wins; docs/policy.md)")
    assert lines[-1] == ""  # a blank line closes the part, as the template always printed
    # No key is kept in a variable (none is left to unset), and no reason is worded here.
    assert not any("unset-var(txn.egress_key)" in line or "set-var-fmt" in line for line in lines)
    assert _text(chain.refusals)[-2].endswith(f"if {{ var({VARS.verdict}) -m str unresolved }}")


def test_a_phase_runs_its_parts_in_order() -> None:
    route = _route(proxy_auth="required", connect_sni="match", limits={"tunnels": 3})
    chain = PolicyChain(route, MAPS)
    connect = chain.connect
    order = [
        chain.non_ascii[-1],  # each part's last line
        chain.connect_bad[-1],
        chain.authenticate[-1],
        chain.connect_auth[-1],
        chain.decide[-2],  # (the last one is the blank line closing it)
        chain.limits(True)[-2],
        chain.refusals[-2],
        chain.connect_status[-1],
        chain.connect_early[-1],
        chain.count_early(False)[-1],
        chain.connect_forward[-1],
    ]
    positions = [connect.index(line) for line in order]
    assert positions == sorted(positions)
    assert connect[-len(chain.connect_forward) :] == chain.connect_forward
    # The connect_sni ports' ACL is declared before the rule that tests it.
    (declared,) = [i for i, line in enumerate(connect) if isinstance(line, AclLine)]
    assert connect[declared].line("x") == "    acl egress_sni_port var(txn.dstport) -m int 443"
    assert declared < connect.index(chain.connect_early[0])
    plain = chain.plain
    assert plain.index(chain.http_credentials[0]) < plain.index(chain.authenticate[0])
    # An allowed request leaves before the refusals are worded and answered.
    allowed = plain.index(chain.http_allowed[-1])
    assert plain.index(chain.origin_form[-1]) < allowed < plain.index(chain.refusals[-2])
    assert plain[-len(chain.http_forward) :] == chain.http_forward
    assert str(chain.http_allowed[-1]) == "allow if { var(txn.egress_verdict) -m str allow }"
    tls = PolicyChain(_route(mode="tls", destination_port=443), MAPS).tls
    assert tls[0].line("tcp-request content") == (
        "    tcp-request content set-var(txn.dstport) int(443)"
    )


def test_decide_follows_the_route_switches() -> None:
    plain = _text(PolicyChain(_route(), MAPS).decide)
    assert not any("txn.egress_via" in line for line in plain)
    assert any("table_gpt0(_egress_dns)" in line for line in plain)  # resolve_prefer: ipv4
    ipv6 = _text(PolicyChain(_route(resolve_prefer="ipv6", deny_doh=False), MAPS).decide)
    assert not any("table_gpt0" in line or "doh" in line for line in ipv6)
    assert any("do-resolve(txn.dstip,dns,ipv6)" in line for line in ipv6)


def test_with_parents_the_choice_comes_after_the_verdict_and_fails_closed() -> None:
    route = _route(parent={"proxies": ["192.0.2.20:3128"], "direct": ["*"]})
    lines = _text(PolicyChain(route, MAPS).decide, "tcp-request content")
    everything_direct = _index(
        lines, f"set-var({VARS.via}) str(direct) if {PASSES}"
    )  # the direct list holds `*`
    assert _index(lines, f"str({Verdict.DENY}) if !") < everything_direct
    no_parent = _index(lines, f"set-var({VARS.rule}) str({RuleId.NO_PARENT}) if")
    assert lines[no_parent].endswith("{ nbsrv(web-parent-tunnel) eq 0 }")
    assert everything_direct < no_parent


def test_limits_judge_what_the_phase_can_count() -> None:
    route = _route(limits={"tunnels": 3, "connection_rate": 5, "request_rate": 7, "period": "10s"})
    chain = PolicyChain(route, MAPS)
    connect = _text(chain.limits(True), "tcp-request content")
    plain = _text(chain.limits(False))
    assert any(
        f"str({Limit.TUNNELS})" in line and "be_conn(web-tunnel) ge 3" in line for line in connect
    )
    assert not any("sc2_http_req_rate" in line for line in connect)
    assert not any("be_conn" in line for line in plain)
    assert any("{ sc2_http_req_rate gt 7 }" in line for line in plain)
    # The verdict comes after every limit was judged, the reason with the other refusals.
    assert _index(plain, "sc2_conn_rate gt 5") < _index(plain, f"set-var({VARS.verdict})")
    assert any("at most 7 requests per 10s from %[src]" in line for line in _text(chain.refusals))
    assert PolicyChain(_route(), MAPS).limits(True) == (BLANK,)


def test_counting_and_its_conditions() -> None:
    chain = PolicyChain(_route(), MAPS)
    assert _text(chain.count) == [
        "    http-request track-sc0 str(web/),concat(,txn.egress_group,/),"
        "concat(,txn.egress_rule,/),concat(,txn.egress_verdict,) table _egress_policy",
        "    http-request sc-inc-gpc0(0)",
    ]
    early, others = chain.count_early(True), chain.count_early(False)
    assert all(str(line).endswith(" if { var(txn.egress_early) -m bool }") for line in early)
    assert all(str(line).endswith(" if !{ var(txn.egress_early) -m bool }") for line in others)


def test_authentication_asks_for_credentials_only_when_required() -> None:
    users = {"clients": [{"name": "b", "users": ["alice"], "policy": ["*"]}]}
    optional = _text(PolicyChain(_route(**users), MAPS).authenticate)
    required = _text(PolicyChain(_route(proxy_auth="required"), MAPS).authenticate)
    assert not any("str(missing)" in line for line in optional)
    assert any(line.endswith("unless { var(txn.egress_pauth) -m found }") for line in required)
    # Denied and counted once a cause is known.
    assert _index(required, f"str({RuleId.PROXY_AUTH})") < _index(required, "track-sc0")


def test_the_sni_check_looks_the_name_up_once_there_is_one_then_judges_and_closes() -> None:
    lines = _text(PolicyChain(_route(connect_sni="match"), MAPS).sni_check, "tcp-request content")
    lookups = [line for line in lines if f"set-var({VARS.sni_idx})" in line]
    assert len(lookups) == 4
    assert not any("txn.egress_key" in line or "txn.egress_sni_dotted" in line for line in lines)
    assert all("{ var(txn.egress_sni) -m found }" in line for line in lookups)
    order = [
        "lua.egress_early_established",
        f"set-var({VARS.sni}) req.ssl_sni,lower",
        f"set-var({VARS.sni_idx})",
        f"set-var({VARS.sni_ok})",
        f"str({RuleId.SNI_MISMATCH})",
        "track-sc0",
        "reject if",
    ]
    positions = [_index(lines, fragment) for fragment in order]
    assert positions == sorted(positions)
    assert lines[-1] == (
        f"    tcp-request content reject if {{ var({VARS.rule}) -m str {RuleId.SNI_MISMATCH} }}"
    )


def test_a_refused_connect_gets_the_status_of_its_first_cause() -> None:
    chain = PolicyChain(_route(), MAPS)
    assert [str(line) for line in chain.connect_status] == [
        "set-var(txn.egress_status) int(503) if { var(txn.egress_limit) -m str tunnels }",
        "set-var(txn.egress_status) int(429) if { var(txn.egress_limit) -m found }"
        " !{ var(txn.egress_status) -m found }",
        "set-var(txn.egress_status) int(403) if { var(txn.egress_verdict) -m str deny }"
        " !{ var(txn.egress_status) -m found }",
        "set-var(txn.egress_status) int(503) if { var(txn.egress_verdict) -m str unresolved }",
    ]
    forward = [str(line) for line in chain.connect_forward if isinstance(line, Rule)]
    assert forward[0] == f"use-service lua.egress_refuse unless {PASSES}"
    assert forward[1:3] == ["set-dst var(txn.dstip)", "set-dst-port var(txn.dstport)"]
    # With parents, a direct tunnel drops the CONNECT head the parent would have read.
    route = _route(parent={"proxies": ["192.0.2.20:3128"]})
    with_parents = [str(line) for line in PolicyChain(route, MAPS).connect_forward]
    assert with_parents[1] == "lua.egress_drop_head if { var(txn.egress_via) -m str direct }"


def test_a_refused_plain_request_is_answered_with_its_reason() -> None:
    lines = _text(PolicyChain(_route(), MAPS).http_forward)
    assert lines[0] == (
        "    http-request return status 429 content-type text/plain"
        ' lf-string "%[var(txn.egress_reason)]" if { var(txn.egress_limit) -m found }'
    )
    assert lines[-1].endswith("if { var(txn.egress_verdict) -m str unresolved }")
    (auth,) = _text(PolicyChain(_route(proxy_auth="required"), MAPS).http_auth)
    assert "hdr Proxy-Authenticate 'Basic realm=\"web\"' if" in auth


def test_or_separates_alternatives_of_a_condition() -> None:
    a, b = Term("var(txn.a)", "-m found"), Term("var(txn.b)", "-m len 0")
    assert str(Cond("if", (~a, OR, b))) == "if !{ var(txn.a) -m found } || { var(txn.b) -m len 0 }"


def test_origin_form_keeps_the_absolute_uri_for_a_parent() -> None:
    direct = [str(line) for line in PolicyChain(_route(), MAPS).origin_form]
    assert direct[2:4] == [
        "set-uri %[var(txn.egress_pathq)] if { var(txn.egress_pathq) -m len 1: }",
        "set-uri / if !{ var(txn.egress_pathq) -m len 1: }",
    ]
    route = _route(parent={"proxies": ["192.0.2.20:3128"]})
    parents = [str(line) for line in PolicyChain(route, MAPS).origin_form]
    via = "{ var(txn.egress_via) -m str direct }"
    assert parents[3] == f"set-uri / if !{{ var(txn.egress_pathq) -m len 1: }} {via}"
    assert "(the parent gets the absolute URI)" in parents[0]


def test_a_plain_request_names_its_destination_before_anything_is_decided() -> None:
    lines = _text(PolicyChain(_route(), MAPS).http_destination)
    assert lines[1].endswith("unless { var(txn.egress_url) -m beg -i http:// }")
    assert lines[-1] == (
        "    http-request set-var(txn.dsthost) var(txn.dsthost),regsub(^\\\\[,),regsub(\\\\]$,)"
        " if { var(txn.dsthost) -m beg [ } || { var(txn.dsthost) -m end ] }"
    )


POLICY_TEMPLATE = Path(__file__).parents[3] / "templates" / "policy.cfg.j2"
# What policy.cfg.j2 may still name itself: the CONNECT intake and the backend choice, the
# decision log's extra fields, the parent proxies' backends. None of it decides.
_NOT_THE_DECISION = {
    "V.var.connect",  # CONNECT or plain HTTP: which backend
    "V.var.user",  # log-format
    "V.var.via",  # log-format; use_backend to the parent
    "V.via.PARENT",  # use_backend to the parent
    "V.var.pstatus",  # the parent's answer, in the parent backends
    "V.var.pcred",  # the router's credential for the parent
    "V.var.pclose",  # the parent backend closes what the parent refused
    "V.var.tunnel",  # the tunnel backend's "200 Connection established"
    "V.reason.PARENT_AUTH",  # the parent refused the router's credentials (its 502)
}


def test_the_policy_template_prints_the_chain_and_decides_nothing() -> None:
    """Verdicts, rule ids, map actions and the decision's variables are render/decision/'s:
    the template names none of them (a new step of the decision is a rule there)."""
    text = POLICY_TEMPLATE.read_text()
    named = set(re.findall(r"\bV\.\w+(?:\.\w+)?", text))
    assert named <= _NOT_THE_DECISION, sorted(named - _NOT_THE_DECISION)
    assert "rules(" in text
    assert "refusal(V.reason.PARENT_AUTH" in text  # the one refusal outside the chain
