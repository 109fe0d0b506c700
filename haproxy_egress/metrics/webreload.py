"""The web-config in force on the metrics port, its reloads, and the metrics about them.

A reload is a transaction like the router's own: the new files are read and checked whole
(`websecurity.load_web_security`) before anything is replaced; a failure keeps the last good
configuration, logs one line and shows in `haproxy_egress_web_config_*`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from haproxy_egress.errors import ConfigError
from haproxy_egress.metrics.webconfig import parse_web_config
from haproxy_egress.metrics.websecurity import WebSecurity, load_web_security

__all__ = ["WebConfigCollector", "WebConfigState"]

logger = logging.getLogger(__name__)


def _named_files(path: Path) -> tuple[Path, ...]:
    """The files a web-config names, if it parses at all; () otherwise."""
    try:
        return parse_web_config(path.read_bytes(), path).watched_files()
    except (ConfigError, OSError):
        return ()


class WebConfigState:
    """The web-config in force, and how its reloads went (for the log and /metrics)."""

    def __init__(self, path: Path, security: WebSecurity) -> None:
        self.path = path
        self.security = security
        self.last_successful = True
        self.failures = 0
        self.last_success = time.time()
        # Files a rejected version names that the one in force does not (a new certificate
        # path not there yet): watched too, so their arrival is a change.
        self._rejected_files: tuple[Path, ...] = ()
        self._lock = threading.Lock()

    def reload(self) -> None:
        """Files changed: load them; on any problem keep the last good config and say so."""
        try:
            security = load_web_security(self.path)
        except ConfigError as exc:
            with self._lock:
                self.failures += 1
                self.last_successful = False
                self._rejected_files = _named_files(self.path)
            detail = "; ".join(str(p) for p in exc.problems)
            logger.error(
                "web-config reload rejected, still serving with %s (%s): %s",
                self.security.digest[:12],
                self.security.describe(),
                detail.replace("\n", " | "),
            )
            return
        with self._lock:
            changed = security.digest != self.security.digest
            self.last_successful = True
            self._rejected_files = ()
            if changed:
                self.security = security
                self.last_success = time.time()
        if changed:
            logger.info(
                "web-config reloaded from %s: %s (digest %s)",
                self.path,
                security.describe(),
                security.digest[:12],
            )

    def files(self) -> tuple[Path, ...]:
        """The files to watch: the web-config and the TLS files the one in force names."""
        current = self.security.file.watched_files()
        return current + tuple(f for f in self._rejected_files if f not in current)


class WebConfigCollector(Collector):
    """The web-config reload state, beside the router's own reload metrics."""

    def __init__(self, state: WebConfigState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        yield GaugeMetricFamily(
            "haproxy_egress_web_config_last_reload_successful",
            "1 if the last load of the web-config file (and its certificates) succeeded.",
            value=1 if state.last_successful else 0,
        )
        yield CounterMetricFamily(
            "haproxy_egress_web_config_reload_failures_total",
            "Changed web-config or certificate files that could not be used; the previous "
            "ones stayed in force.",
            value=state.failures,
        )
        yield GaugeMetricFamily(
            "haproxy_egress_web_config_last_reload_success_timestamp_seconds",
            "Unix time the web-config in force was loaded.",
            value=state.last_success,
        )
