"""Policy decision counters: `show table _egress_policy` → Prometheus families.

haproxy counts each decision of a proxy/tls route in the stick table `_egress_policy`, keyed
`ROUTE/GROUP/RULE/VERDICT` (GROUP: the client group, `default` for the route's own list;
RULE: 1-based rule index within the group or a `vocabulary.RuleId`, `guard-CLASS` or
`limit-KIND`; VERDICT: a `vocabulary.Verdict`), value gpc0.
The collector keeps no state between scrapes and reads one snapshot per scrape through the
callable it is given (the exporter passes one that asks the stats socket); a failing socket
yields no samples, never an exception.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from haproxy_egress.config.vocabulary import Verdict
from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy import show
from haproxy_egress.metrics.stats import Query
from haproxy_egress.render.compiler import TABLES

log = logging.getLogger(__name__)

TABLE = TABLES.policy
COMMAND = f"show table {TABLE}"
# The keys the template writes: ROUTE/GROUP/RULE/VERDICT.
_VERDICTS = "|".join(re.escape(v) for v in Verdict)
_KEY = re.compile(rf"([a-z0-9._-]+)/([a-z0-9_-]+)/([a-z0-9-]+)/({_VERDICTS})")


def parse_parent_auth(text: str) -> dict[str, int]:
    """`show table _egress_policy` output → route → parent-auth failures (407s): routes with
    parent proxies store gpc1 too, counted against the decision that sent the request on."""
    out: dict[str, int] = {}
    for entry in show.parse_table(text):
        route = entry.key.split("/", 1)[0]
        count = entry.data.get("gpc1", "")
        if count.isdigit():
            out[route] = out.get(route, 0) + int(count)
    return out


def parse_table(text: str) -> dict[tuple[str, str, str, str], int]:
    """`show table _egress_policy` output → (route, group, rule, verdict) → count."""
    out: dict[tuple[str, str, str, str], int] = {}
    for entry in show.parse_table(text):
        m = _KEY.fullmatch(entry.key)
        count = entry.data.get("gpc0", "")
        if m and count.isdigit():
            out[(m.group(1), m.group(2), m.group(3), m.group(4))] = int(count)
    return out


def socket_table(query: Query) -> Callable[[], str]:
    """`show table _egress_policy` over the stats socket; "" when haproxy does not answer
    (the family is then empty, like haproxy_up 0 says for the rest)."""

    def show() -> str:
        try:
            return query(COMMAND)
        except HaproxyError as exc:
            log.debug("policy counters unavailable: %s", exc)
            return ""

    return show


class DestinationSource(Protocol):
    """The per-destination families, given this scrape's decision table (destinations.py)."""

    def collect_with(self, policy_table: str | None) -> Iterator[CounterMetricFamily]: ...


class MultiCollector(Collector):
    """Several collectors as one (the HTTP endpoint takes one `extra`)."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


class PolicyCollector(Collector):
    """`haproxy_egress_policy_decisions_total{route,group,rule,verdict}` and
    `haproxy_egress_parent_auth_failures_total{route}` from one snapshot."""

    def __init__(
        self, show_table: Callable[[], str], destinations: DestinationSource | None = None
    ) -> None:
        self._show_table = show_table
        # The per-destination families read the stats socket only once this scrape's
        # decision table came back: a wedged socket costs the scrape one wait, not several.
        self._destinations = destinations

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            text = self._show_table()
        except OSError as exc:
            log.debug("policy counters unavailable: %s", exc)
            text = ""
        family = CounterMetricFamily(
            "haproxy_egress_policy_decisions",
            "Egress policy decisions of proxy/tls routes, by route, client group, rule and "
            "verdict.",
            labels=["route", "group", "rule", "verdict"],
        )
        for (route, group, rule, verdict), value in sorted(parse_table(text).items()):
            family.add_metric([route, group, rule, verdict], value)
        yield family
        refused = CounterMetricFamily(
            "haproxy_egress_parent_auth_failures",
            "Requests a parent proxy answered with 407 (it refused the router's credentials), "
            "by route.",
            labels=["route"],
        )
        for route, value in sorted(parse_parent_auth(text).items()):
            refused.add_metric([route], value)
        yield refused
        if self._destinations is not None and text:
            yield from self._destinations.collect_with(text)
