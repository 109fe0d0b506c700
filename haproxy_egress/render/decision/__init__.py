"""The decision chain of a policy route: the haproxy rules, in order, that decide it.

A policy route's verdict is computed by haproxy itself, rule after rule, from the map files
render/maps.py writes; `explain` computes the same verdict in Python (config/policy.py `decide`),
and tests/integration/test_policy_differential.py proves the two agree. This package builds that
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

Modules, stage by stage: `conditions` (terms and conditions), `lines` (actions, rules and the
other lines, and `rules` that prints them), `lookups` (tables and map files), `refusals` (the
refusal texts and answers), `policy` (the decision's parts) and `chain` (the phases in order).
"""

from __future__ import annotations

from haproxy_egress.render.decision.chain import PolicyChain
from haproxy_egress.render.decision.conditions import OR, PASSES, SNI_PORT, Acl, Cond, Or, Term
from haproxy_egress.render.decision.lines import (
    BLANK,
    AclLine,
    Blank,
    Comment,
    Line,
    Rule,
    RuleAction,
    rules,
)
from haproxy_egress.render.decision.lookups import RESOLVERS, TABLES, Tables
from haproxy_egress.render.decision.refusals import refusal

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
