"""The small metric families, built with prometheus_client: haproxy_up, haproxy_version_info,
haproxy_exporter's scrape counters and the router's own.

The big per-row haproxy families (frontend, backend, server) and the per-route denials (one
sample per route and stage, from the same frontend rows) are not built here: `exposition.py`
prints them straight from the CSV, driven by the tables in `families.py` and DENIED_STAGES.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Mapping

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from haproxy_egress import __version__
from haproxy_egress.metrics.logs import log_families
from haproxy_egress.metrics.stats import HaproxySnapshot
from haproxy_egress.metrics.status import RouterStatus

# --- the metric families ---------------------------------------------------------------------

HELP_UP = "Was the last scrape of HAProxy successful."
HELP_SCRAPES = "Current total HAProxy scrapes."
HELP_PARSE_FAILURES = "Number of errors while parsing CSV."
DENIED_FAMILY = "haproxy_egress_route_denied_total"
HELP_DENIED = (
    "Connections, sessions and requests a route refused by policy (allow_from, deny rules), "
    "from haproxy's frontend counters dcon, dses and dreq."
)
# stage label value -> CSV index: tcp-request connection, tcp-request session, request rules.
DENIED_STAGES: tuple[tuple[str, int], ...] = (("connection", 81), ("session", 82), ("request", 10))


class ScrapeCounters:
    """haproxy_exporter's own counters (scrapes, CSV parse failures), shared by all scrapes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scrapes = 0
        self._failures = 0

    def record(self, failures: int) -> tuple[int, int]:
        """Count one scrape and its parse failures; the totals including this scrape."""
        with self._lock:
            self._scrapes += 1
            self._failures += failures
            return self._scrapes, self._failures


def version_family(snapshot: HaproxySnapshot) -> Metric | None:
    """haproxy_version_info{release_date,version}, when `show info` answered."""
    if "Version" not in snapshot.info:
        return None
    return InfoMetricFamily(
        "haproxy_version",
        "HAProxy version info.",
        value={
            "release_date": snapshot.info.get("Release_date", ""),
            "version": snapshot.info["Version"],
        },
    )


def scrape_families(up: bool, totals: tuple[int, int]) -> list[Metric]:
    """haproxy_up and haproxy_exporter's two counters."""
    return [
        GaugeMetricFamily("haproxy_up", HELP_UP, value=1 if up else 0),
        CounterMetricFamily("haproxy_exporter_scrapes_total", HELP_SCRAPES, value=totals[0]),
        CounterMetricFamily(
            "haproxy_exporter_csv_parse_failures_total", HELP_PARSE_FAILURES, value=totals[1]
        ),
    ]


def router_families(status: RouterStatus | None, haproxy_version: str) -> list[Metric]:
    """The router's own metrics; only build info and `haproxy_egress_up 0` without a status."""
    build = InfoMetricFamily(
        "haproxy_egress_build",
        "Versions of haproxy-egress, the haproxy it runs, and Python.",
        value={
            "version": __version__,
            "haproxy_version": haproxy_version,
            "python_version": platform.python_version(),
        },
    )
    up = GaugeMetricFamily(
        "haproxy_egress_up",
        "1 while the supervisor loop is alive.",
        value=1 if status is not None and status.alive else 0,
    )
    if status is None:
        return [build, up]
    restarts = CounterMetricFamily(
        "haproxy_egress_child_restarts_total",
        "Times the supervisor restarted a child process after it died.",
        labels=["child"],
    )
    for child, count in sorted(status.child_restarts.items()):
        restarts.add_metric([child], count)
    return [
        build,
        up,
        GaugeMetricFamily(
            "haproxy_egress_ready",
            "1 while haproxy runs a configuration with its listeners bound.",
            value=1 if status.ready else 0,
        ),
        CounterMetricFamily(
            "haproxy_egress_reloads_total",
            "Configuration reloads attempted (changed ConfigMap, SIGHUP).",
            value=status.reloads_total,
        ),
        CounterMetricFamily(
            "haproxy_egress_reload_failures_total",
            "Reloads that failed (invalid config, haproxy -c refused, worker did not start); "
            "the previous configuration kept running.",
            value=status.reload_failures_total,
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_last_reload_successful",
            "1 if the last reload attempt succeeded.",
            value=1 if status.last_reload_successful else 0,
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful (re)load; 0 if none yet.",
            value=status.last_reload_success_timestamp,
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_check_failed",
            "1 if haproxy -c, run after a runtime change, refused the configuration the worker "
            "serves; the next reload is refused until an edit passes the check.",
            value=1 if status.config_check_failed else 0,
        ),
        InfoMetricFamily(
            "haproxy_egress_config",
            "sha256 of the configuration haproxy runs.",
            value={"digest": status.config_digest},
        ),
        GaugeMetricFamily(
            "haproxy_egress_config_routes",
            "Routes in the configuration haproxy runs.",
            value=status.config_routes,
        ),
        restarts,
        GaugeMetricFamily(
            "haproxy_egress_start_time_seconds",
            "Unix time the router started.",
            value=status.start_time,
        ),
        *_live_change_families(status),
        *log_families(status.log),
    ]


def _labelled(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, count in sorted(values.items()):
        family.add_metric([key], count)
    return family


def _live_change_families(status: RouterStatus) -> list[Metric]:
    """How edits were applied, and the old workers reloads leave (docs/operations.md)."""
    changes = {"noop": 0, "runtime": 0, "reload": 0, **status.config_changes}
    return [
        _labelled(
            "haproxy_egress_config_changes_total",
            "ConfigMap edits by how they reached haproxy: noop, runtime (runtime API, same "
            "worker) or reload (a new worker).",
            "kind",
            changes,
        ),
        GaugeMetricFamily(
            "haproxy_egress_old_workers",
            "haproxy workers left by reloads, still serving connections of earlier configs.",
            value=status.old_workers,
        ),
        GaugeMetricFamily(
            "haproxy_egress_old_worker_connections",
            "Connections the old workers still carry.",
            value=status.old_worker_connections,
        ),
        GaugeMetricFamily(
            "haproxy_egress_old_worker_rss_bytes",
            "Resident memory of all old workers together.",
            value=status.old_worker_rss_bytes,
        ),
        _labelled(
            "haproxy_egress_old_workers_ended_total",
            "Old workers the router ended because of a bound (count, age, memory).",
            "reason",
            status.old_workers_ended,
        ),
        _labelled(
            "haproxy_egress_connections_ended_total",
            "Connections the router ended: denied (an edit refuses them, after the drain "
            "time) or an old-worker bound (count, age, memory).",
            "reason",
            status.connections_ended,
        ),
    ]
