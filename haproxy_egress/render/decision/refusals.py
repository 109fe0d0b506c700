"""The refusal of a request in the proxy's words: the texts (config/policy.py REFUSALS) with
the request's values as sample expressions, and the actions that answer with them."""

from __future__ import annotations

from haproxy_egress.config import policy as egress_policy
from haproxy_egress.config.vocabulary import VARS, Reason
from haproxy_egress.render.decision.conditions import var
from haproxy_egress.render.decision.lines import RuleAction

__all__ = ["REFUSE", "answer", "refusal"]


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


# The refusal of a CONNECT: connect.lua's service answers with the status and reason.
REFUSE = RuleAction("use-service", (), "lua.egress_refuse")


def answer(status: int, extra: str = "") -> RuleAction:
    """`return` a plain request's refusal: its status, and the reason as the body."""
    tail = f" {extra}" if extra else ""
    body = f'lf-string "%[{var(VARS.reason)}]"{tail}'
    return RuleAction("return", (), f"status {status} content-type text/plain {body}")
