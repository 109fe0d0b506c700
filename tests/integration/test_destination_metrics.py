"""Per-destination counters at the real proxy: haproxy counts every destination name in a
size-bounded table and the exporter shows the top N per route plus `other`, so 10,000
distinct names leave at most N + 1 series per route, and nothing is lost from the totals."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.metrics.destinations import DestinationCollector
from tests.policy_proxy import PolicyProxy, connect_reply
from tests.support import DnsServer, free_port, wait_for

TOP = 10
DISTINCT = 10_000
HEAVY = {f"heavy{i}.example": 20 + i for i in range(3)}  # asked for far more often
NAMES = [f"n{i}.example" for i in range(DISTINCT)]
TABLE = f"show table _egress_dst_{TOP}_pxy"


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[PolicyProxy]:
    # Every name answers (loopback; the rules deny them all before any connection).
    records = {name: ["127.0.0.1"] for name in [*NAMES, *HEAVY]}
    dns = DnsServer(records=records).start()
    doc = {
        "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "1s"},
        "routes": [
            {
                "name": "pxy",
                "listen": f"127.0.0.1:{free_port()}",
                "mode": "proxy",
                "policy": ["!*.example", "*"],
                "destinations_top": TOP,
            }
        ],
    }
    p = PolicyProxy(tmp_path, doc).start()
    yield p
    p.stop()
    dns.stop()


def _samples(proxy: PolicyProxy) -> dict[str, dict[tuple[str, str], float]]:
    """family → (route, destination) → value, as /metrics would show them."""
    socket = CliSocket(proxy.run.stats_socket, timeout=10)
    registry = CollectorRegistry()
    registry.register(DestinationCollector(socket.command))
    out: dict[str, dict[tuple[str, str], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.endswith("_total"):
                key = (s.labels["route"], s.labels["destination"])
                out.setdefault(s.name, {})[key] = s.value
    return out


def test_ten_thousand_names_leave_at_most_n_plus_one_series(proxy: PolicyProxy) -> None:
    assert proxy.config is not None
    port = proxy.config.routes[0].listen.port
    heavy = [name for name, times in HEAVY.items() for _ in range(times)]
    replies: list[bytes] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 240

    def client(part: list[str]) -> None:
        for name in part:
            if time.monotonic() > deadline:
                return
            reply = connect_reply(port, f"{name}:443")
            with lock:
                replies.append(reply[:12])

    # The flood first, from 8 clients; then the busy names, which stay in the table (a name
    # is counted from when it last entered it: the FACTOR x N most recently asked are kept).
    threads = [threading.Thread(target=client, args=(NAMES[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    # A full table can take a new name only when an entry is free of streams: wait until the
    # flood's streams have all ended, so the busy names' every attempt is theirs.
    stats = CliSocket(proxy.run.stats_socket, timeout=10)
    wait_for(lambda: " use=0 " in stats.command(TABLE) and " use=1 " not in stats.command(TABLE))
    client(heavy)
    names = NAMES + heavy
    assert len(replies) == len(names)
    assert all(r == b"HTTP/1.1 403" for r in replies)

    samples = _samples(proxy)
    connections = samples["haproxy_egress_destination_connections_total"]
    assert len(connections) <= TOP + 1
    assert set(HEAVY) <= {d for _, d in connections}  # the busiest are shown by name
    # A name is counted while it holds a table entry; under a flood of new names haproxy may
    # find no free entry for an attempt now and then: that attempt is in `other` (the sum
    # below stays exact). docs/metrics.md says so.
    for name, times in HEAVY.items():
        assert times - 2 <= connections[("pxy", name)] <= times, (name, connections)
    assert sum(connections.values()) == len(names)  # the top N and `other`: every attempt
    denials = samples["haproxy_egress_destination_denials_total"]
    assert sum(denials.values()) == len(names)
    for family in samples.values():
        assert len(family) <= TOP + 1
