"""Per-destination counters of policy routes, with a bounded label set.

haproxy counts each destination name of a proxy/tls route in a size-bounded stick table
(`_egress_dst_<N>_<route>`, templates/policy.cfg.j2): attempts (gpc1), denials (gpc0) and the bytes
of the streams while they live. Each scrape reads those tables, keeps the top N names of each
route by attempts (N, the route's `destinations_top`, is in the table's name) and puts
everything else into `destination="other"`: the route's totals (its decisions and its
frontend's bytes) minus the top N. So a route has at most N + 1 series per family, whatever
names clients ask for, and haproxy does all the counting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from haproxy_egress.config.route import DESTINATIONS_TABLE_PREFIX
from haproxy_egress.config.vocabulary import Verdict
from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy import show
from haproxy_egress.haproxy.stat import parse_stat
from haproxy_egress.metrics.decisions import COMMAND as POLICY_COMMAND
from haproxy_egress.metrics.decisions import parse_table as parse_policy_table
from haproxy_egress.metrics.stats import Query

log = logging.getLogger(__name__)

OTHER = "other"
_BIN, _BOUT = 8, 9  # `show stat` columns
# The routes' bytes come from their frontend rows: haproxy is asked for those alone (type 1,
# every proxy, every server), a quarter of the whole CSV, which the scrape has already read.
FRONTENDS_COMMAND = "show stat -1 1 -1"


@dataclass(frozen=True)
class Counts:
    """What one destination (or a route's total) carried."""

    connections: int = 0
    denied: int = 0
    bytes_in: int = 0  # from clients
    bytes_out: int = 0  # to clients

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.connections + other.connections,
            self.denied + other.denied,
            self.bytes_in + other.bytes_in,
            self.bytes_out + other.bytes_out,
        )

    def __sub__(self, other: Counts) -> Counts:
        """What is left of a total once `other` is taken out (never below 0: the total and
        the table are read a moment apart)."""
        return Counts(
            max(0, self.connections - other.connections),
            max(0, self.denied - other.denied),
            max(0, self.bytes_in - other.bytes_in),
            max(0, self.bytes_out - other.bytes_out),
        )


def parse_tables(text: str) -> dict[str, tuple[str, int]]:
    """`show table` (no name): route → its per-destination table and the top N it shows."""
    out: dict[str, tuple[str, int]] = {}
    for name in (table.name for table in show.parse_table_list(text)):
        top_n, _, route = name.removeprefix(DESTINATIONS_TABLE_PREFIX).partition("_")
        if name.startswith(DESTINATIONS_TABLE_PREFIX) and top_n.isdigit() and route:
            out[route] = (name, int(top_n))
    return out


def parse_entries(text: str) -> dict[str, Counts]:
    """`show table _egress_dst_<route>`: destination name → its counts."""

    def count(entry: show.TableEntry, name: str) -> int:
        value = entry.data.get(name, "0")
        return int(value) if value.isdigit() else 0

    return {
        e.key: Counts(
            count(e, "gpc1"), count(e, "gpc0"), count(e, "bytes_in_cnt"), count(e, "bytes_out_cnt")
        )
        for e in show.parse_table(text)
    }


def top(entries: dict[str, Counts], n: int) -> list[tuple[str, Counts]]:
    """The `n` destinations with the most attempts (ties: by name, so scrapes agree)."""
    return sorted(entries.items(), key=lambda item: (-item[1].connections, item[0]))[:n]


def route_totals(policy_table: str, stat: str) -> dict[str, Counts]:
    """Each policy route's decisions (and denials) and its frontend's bytes."""
    totals: dict[str, Counts] = {}
    for (route, _group, _rule, verdict), count in parse_policy_table(policy_table).items():
        denied = count if verdict == Verdict.DENY else 0
        totals[route] = totals.get(route, Counts()) + Counts(count, denied)
    for row in parse_stat(stat).frontends:
        total = totals.get(row[0])
        if total is not None and row[_BIN].isdigit() and row[_BOUT].isdigit():
            totals[row[0]] = Counts(
                total.connections, total.denied, int(row[_BIN]), int(row[_BOUT])
            )
    return totals


FAMILIES = (
    ("connections", "Attempts through the route to this destination (allowed or denied)."),
    ("denials", "Attempts to this destination the route denied."),
    ("bytes_in", "Bytes clients sent on streams to this destination."),
    ("bytes_out", "Bytes sent back to clients on streams from this destination."),
)


class DestinationCollector(Collector):
    """`haproxy_egress_destination_*_total{route,destination}`: top N + `other` per route."""

    def __init__(self, query: Query) -> None:
        self._query = query

    def _snapshot(self, policy_table: str | None) -> dict[str, list[tuple[str, Counts]]]:
        tables = parse_tables(self._query("show table"))
        if not tables:
            return {}
        if policy_table is None:
            policy_table = self._query(POLICY_COMMAND)
        totals = route_totals(policy_table, self._query(FRONTENDS_COMMAND))
        out: dict[str, list[tuple[str, Counts]]] = {}
        for route, (table, n) in sorted(tables.items()):
            entries = parse_entries(self._query(f"show table {table}"))
            shown = top(entries, n)
            taken = sum((c for _, c in shown), Counts())
            out[route] = [*shown, (OTHER, totals.get(route, taken) - taken)]
        return out

    def collect(self) -> Iterator[CounterMetricFamily]:
        return self.collect_with(None)

    def collect_with(self, policy_table: str | None) -> Iterator[CounterMetricFamily]:
        """The families, from a `show table _egress_policy` answer already read this scrape
        (None: read it here)."""
        try:
            snapshot = self._snapshot(policy_table)
        except (HaproxyError, OSError) as exc:
            log.debug("destination counters unavailable: %s", exc)
            snapshot = {}
        families = {
            name: CounterMetricFamily(
                f"haproxy_egress_destination_{name}",
                f"{text} Top N destinations per route by attempts, the rest as "
                'destination="other" (docs/metrics.md).',
                labels=["route", "destination"],
            )
            for name, text in FAMILIES
        }
        for route, rows in snapshot.items():
            for destination, c in rows:
                labels = [route, destination]
                families["connections"].add_metric(labels, c.connections)
                families["denials"].add_metric(labels, c.denied)
                families["bytes_in"].add_metric(labels, c.bytes_in)
                families["bytes_out"].add_metric(labels, c.bytes_out)
        yield from families.values()


__all__ = ["OTHER", "Counts", "DestinationCollector", "parse_entries", "parse_tables", "top"]
