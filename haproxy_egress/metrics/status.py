"""The router's state as the supervisor hands it to the metrics thread, read once per scrape."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from haproxy_egress.config.tlsmaterial import RouteTls
from haproxy_egress.metrics.logs import LogLoss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterStatus:
    """The supervisor's state as its loop published it after a turn (see Supervisor.status)."""

    alive: bool  # supervisor loop alive -> /healthz 200, else 503
    ready: bool  # haproxy runs a config with listeners bound -> /readyz 200, else 503
    reloads_total: int
    reload_failures_total: int
    last_reload_successful: bool
    last_reload_success_timestamp: float  # unix seconds, 0 if never
    config_digest: str
    config_routes: int
    child_restarts: Mapping[str, int]  # {"haproxy": n, "socklog": n}
    start_time: float
    log: LogLoss | None = None  # the log path's loss counters (metrics/logs.py)
    # Live changes: edits by how they were applied {"noop": n, "runtime": n, "reload": n};
    # old workers left by reloads; connections the router ended, by reason
    # ("denied": an edit refused them; "count" / "age" / "memory": an old-worker bound).
    config_changes: Mapping[str, int] = field(default_factory=dict)
    old_workers: int = 0
    old_worker_connections: int = 0
    old_worker_rss_bytes: int = 0
    old_workers_ended: Mapping[str, int] = field(default_factory=dict)
    connections_ended: Mapping[str, int] = field(default_factory=dict)
    # TLS origination: the running routes' checked material, and whether the last change was
    # refused for its TLS material (metrics/tls.py).
    tls: tuple[RouteTls, ...] = ()
    tls_rejected: bool = False
    # haproxy -c, run after a runtime change, refused the config the worker serves.
    config_check_failed: bool = False


def safe_status(status: Callable[[], RouterStatus]) -> RouterStatus | None:
    """Call the supervisor's status callable; None (and a log line) if it fails."""
    try:
        return status()
    except Exception:
        logger.exception("router status unavailable for metrics")
        return None
