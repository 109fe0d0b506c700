"""Per-destination counters at the real proxy: haproxy counts every destination name in a
size-bounded table that takes no new name while full (`nopurge`) and lets idle names expire,
and the exporter shows the top N per route plus `other`. So 10,000 distinct names leave at
most N + 1 series per route, a flood of new names cannot push out the names a route is busy
with, nothing is lost from the totals, and haproxy 2.6 and 3.0 keep the same names."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
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
USED = re.compile(r"size:(\d+), used:(\d+)")

Start = Callable[[str], PolicyProxy]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """A proxy route whose destination names idle for `idle` leave its table."""
    # Every name answers (loopback; the rules deny them all before any connection).
    records = {name: ["127.0.0.1"] for name in [*NAMES, *HEAVY, "late.example"]}
    dns = DnsServer(records=records).start()
    started: list[PolicyProxy] = []

    def run(idle: str) -> PolicyProxy:
        doc = {
            "resolvers": {"nameservers": [f"127.0.0.1:{dns.port}"], "timeout": "1s"},
            "routes": [
                {
                    "name": "pxy",
                    "listen": f"127.0.0.1:{free_port()}",
                    "mode": "proxy",
                    "policy": ["!*.example", "*"],
                    "destinations_top": TOP,
                    "destinations_idle": idle,
                }
            ],
        }
        started.append(PolicyProxy(tmp_path / f"p{len(started)}", doc).start())
        return started[-1]

    yield run
    for p in started:
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


def _ask(port: int, names: list[str], clients: int, replies: list[bytes]) -> None:
    """CONNECT once to each name, from `clients` parallel clients (bounded: 240 s)."""
    deadline = time.monotonic() + 240
    lock = threading.Lock()

    def client(part: list[str]) -> None:
        for name in part:
            if time.monotonic() > deadline:
                return
            reply = connect_reply(port, f"{name}:443")
            with lock:
                replies.append(reply[:12])

    threads = [threading.Thread(target=client, args=(names[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)


def _table_use(proxy: PolicyProxy) -> tuple[int, int]:
    """(size, used) of the route's destination table."""
    found = USED.search(CliSocket(proxy.run.stats_socket, timeout=10).command(TABLE))
    assert found is not None
    return int(found[1]), int(found[2])


def test_ten_thousand_names_leave_at_most_n_plus_one_series(start: Start) -> None:
    proxy = start("10m")
    assert proxy.config is not None
    port = proxy.config.routes[0].listen.port
    replies: list[bytes] = []
    # The busy names first (once each), then a flood of 10,000 new names from 8 clients that
    # fills the table, then the busy names' other attempts and one newcomer.
    _ask(port, list(HEAVY), 1, replies)
    _ask(port, NAMES, 8, replies)
    size, used = _table_use(proxy)
    assert used == size  # full: the rest of the flood was not taken in
    _ask(port, [name for name, times in HEAVY.items() for _ in range(times - 1)], 1, replies)
    _ask(port, ["late.example"], 1, replies)
    asked = len(HEAVY) + DISTINCT + sum(HEAVY.values()) - len(HEAVY) + 1
    assert len(replies) == asked
    assert all(r == b"HTTP/1.1 403" for r in replies)

    samples = _samples(proxy)
    connections = samples["haproxy_egress_destination_connections_total"]
    assert len(connections) <= TOP + 1
    # The flood took no entry of a name in the table: every busy name is counted exactly.
    for name, times in HEAVY.items():
        assert connections[("pxy", name)] == times, (name, connections)
    assert ("pxy", "late.example") not in connections  # a full table: in `other`
    assert sum(connections.values()) == asked  # the top N and `other`: every attempt
    denials = samples["haproxy_egress_destination_denials_total"]
    assert sum(denials.values()) == asked
    for family in samples.values():
        assert len(family) <= TOP + 1


def test_idle_names_leave_and_make_room_for_new_ones(start: Start) -> None:
    proxy = start("1s")
    assert proxy.config is not None
    port = proxy.config.routes[0].listen.port
    replies: list[bytes] = []
    size, _ = _table_use(proxy)
    _ask(port, NAMES[: size + 100], 8, replies)
    # Idle for a second, every name expires (haproxy's own expiry, no purge of a full table).
    wait_for(lambda: _table_use(proxy)[1] == 0, timeout=60)
    _ask(port, ["late.example"] * 5, 1, replies)
    connections = _samples(proxy)["haproxy_egress_destination_connections_total"]
    assert connections[("pxy", "late.example")] == 5
    assert sum(connections.values()) == len(replies) == size + 105
