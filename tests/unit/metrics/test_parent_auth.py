"""haproxy_egress_parent_auth_failures_total from a recorded `show table _egress_policy`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from haproxy_egress.metrics.decisions import PolicyCollector, parse_parent_auth, parse_table

# haproxy 2.6 `show table` of a config with a parent route (store gpc0,gpc1).
TABLE = """# table: _egress_policy, type: string, size:65536, used:3
0x55d0c6f4e0a0: key=web/default/1/allow use=0 exp=0 gpc0=3 gpc1=2
0x55d0c6f4e1b0: key=web/default/default/deny use=0 exp=0 gpc0=1 gpc1=0
0x55d0c6f4e2c0: key=other/default/2/allow use=0 exp=0 gpc0=5 gpc1=1
"""


def test_parent_auth_failures_are_summed_per_route() -> None:
    assert parse_parent_auth(TABLE) == {"web": 2, "other": 1}
    # The decision counters still read gpc0 alone.
    assert parse_table(TABLE)[("web", "default", "1", "allow")] == 3


def test_collector_exports_both_families() -> None:
    registry = CollectorRegistry()
    registry.register(PolicyCollector(lambda: TABLE))
    text = generate_latest(registry).decode()
    assert 'haproxy_egress_parent_auth_failures_total{route="web"} 2.0' in text
    assert 'haproxy_egress_policy_decisions_total{group="default",route="other"' in text
