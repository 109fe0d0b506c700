"""Process settings read from the environment: the only module that looks at environ."""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from haproxy_egress.errors import ConfigError, Problem
from haproxy_egress.rundir import RunDir


class LogSink(enum.Enum):
    """Where haproxy's own log lines go."""

    # haproxy's `log stdout` into a FIFO read by the log relay child, copied to our stdout
    # whole lines in batches: nothing dropped until a large buffer is full, every drop counted.
    RELAY = "relay"
    SOCKLOG = "socklog"  # a socklog child on a unix datagram socket, copied to our stdout
    STDOUT = "stdout"  # haproxy's native `log stdout` on our stdout; no child

    @property
    def haproxy_writes_stdout(self) -> bool:
        """haproxy logs with `log stdout` (to the pod's stdout or to the relay's FIFO)."""
        return self is not LogSink.SOCKLOG


class LogFormat(enum.Enum):
    """How the supervisor formats its own log lines."""

    TEXT = "text"
    JSON = "json"


# The environment variables a route can come from; kept here so that `Settings` stays the one
# place that knows variable names, and sources get them as plain data.
SEED_VARS = (
    "SERVICE_NAME",
    "SERVICE_TCP_PORT",
    "SERVICE_DEST",
    "SERVICE_DEST_PORT",
    "STATS_PORT",
    "STATS_USER",
    "STATS_PASSWORD",
)
LEGACY_VARS = (
    "EGRESS_DESTINATION",
    "EGRESS_DNS_PROXY_DESTINATION",
    "EGRESS_HTTP_PROXY_DESTINATION",
    "EGRESS_SOURCE",
    "EGRESS_GATEWAY",
)
# The policy proxy's credentials file (config/users.py): named in its problems too.
PROXY_USERS_ENV = "EGRESS_PROXY_USERS_FILE"
# `parent: env` (config/parent.py): the pod's proxy variables, in the order they are consulted
# (upper case first, as curl and Go's httpproxy do; lower case is the older convention).
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")


@dataclass(frozen=True)
class Settings:
    """Everything the process needs to know that is not part of the route configuration."""

    config_dir: Path = Path("/etc/haproxy-egress")
    run_dir: Path = Path("/run/haproxy-egress")
    haproxy_bin: str = "haproxy"
    socklog_bin: str = "socklog"
    log_format: LogFormat = LogFormat.TEXT
    # --- the log path (docs/operations.md "Logging") ---
    log_sink: LogSink = LogSink.RELAY
    log_pipe_bytes: int = 1 << 20  # the FIFO's buffer (the kernel caps it at pipe-max-size)
    log_buffer_bytes: int = 16 << 20  # what the relay holds while stdout is slow
    log_warn_interval: float = 60.0  # at most one "log lines dropped" warning per interval
    drain_seconds: float = 30.0
    # A child that ran this long before it died crashed "for the first time" again: restarted
    # at once, its back-off forgotten (Backoff.stable_after).
    restart_stable_seconds: float = 10.0
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9101
    reload_debounce: float = 0.3
    poll_seconds: float = 10.0
    threads: int = 0  # 0: let haproxy pick (one per CPU it may use)
    include_unused_slots: bool = False
    # haproxy_exporter's selection flags, as the sidecar's users set them: CSV field indices
    # of server metrics to export, and server states (e.g. "maint,drain") to leave out.
    server_metric_fields: str = ""
    server_exclude_states: str = ""
    # An exporter-toolkit web-config file (TLS, client certificates, basic auth) for the
    # metrics port, as official exporters take with --web.config.file; None: plain HTTP.
    web_config_file: Path | None = None
    # The policy proxy's users (a mounted Secret, config/users.py); None: no proxy users.
    proxy_users_file: Path | None = None
    # Raw route-bearing variables (seed template + legacy dialects), handed to sources as data.
    route_env: Mapping[str, str] = field(default_factory=dict)
    # --- live changes and old workers (docs/operations.md "Live changes") ---
    # Destination and allow_from edits go through the runtime API (no new worker); off, every
    # change reloads as before.
    runtime_changes: bool = True
    # Old workers (left by a reload, serving connections of routes the reload did not touch)
    # are bounded: at most this many (the oldest is ended first), none older than
    # old_worker_max_age seconds, none larger than old_worker_max_rss bytes (0: no bound).
    max_old_workers: int = 8
    old_worker_max_age: float = 86400.0
    old_worker_max_rss: int = 0
    # --- end live changes

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from `environ` (default: os.environ); all problems reported together."""
        env = os.environ if environ is None else environ
        problems: list[Problem] = []

        def number(name: str, default: float, lo: float, hi: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                problems.append(Problem(name, "", f"must be a number (got {raw!r})"))
                return default
            if not lo <= value <= hi:
                problems.append(Problem(name, "", f"must be within {lo:g}..{hi:g} (got {raw})"))
                return default
            return value

        def choice(name: str, enum_type: type[enum.Enum], default: enum.Enum) -> enum.Enum:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            try:
                return enum_type(raw)
            except ValueError:
                allowed = ", ".join(str(m.value) for m in enum_type)
                problems.append(Problem(name, "", f"must be one of {allowed} (got {raw!r})"))
                return default

        sink = choice("EGRESS_LOG", LogSink, LogSink.RELAY)
        fmt = choice("EGRESS_LOG_FORMAT", LogFormat, LogFormat.TEXT)
        settings = cls(
            config_dir=Path(env.get("EGRESS_CONFIG_DIR") or cls.config_dir),
            run_dir=Path(env.get("EGRESS_RUN_DIR") or cls.run_dir),
            haproxy_bin=env.get("EGRESS_HAPROXY_BIN") or cls.haproxy_bin,
            socklog_bin=env.get("EGRESS_SOCKLOG_BIN") or cls.socklog_bin,
            log_format=LogFormat(fmt.value),
            log_sink=LogSink(sink.value),
            log_pipe_bytes=int(number("EGRESS_LOG_PIPE_BYTES", cls.log_pipe_bytes, 4096, 1 << 30)),
            log_buffer_bytes=int(
                number("EGRESS_LOG_BUFFER_BYTES", cls.log_buffer_bytes, 1 << 16, 1 << 32)
            ),
            log_warn_interval=number("EGRESS_LOG_WARN_SECONDS", cls.log_warn_interval, 1, 86400),
            drain_seconds=number("EGRESS_DRAIN_SECONDS", cls.drain_seconds, 0, 86400),
            restart_stable_seconds=number(
                "EGRESS_RESTART_STABLE_SECONDS", cls.restart_stable_seconds, 0, 3600
            ),
            metrics_address=env.get("METRICS_ADDRESS") or cls.metrics_address,
            metrics_port=int(number("SCRAPER_TCP_PORT", cls.metrics_port, 0, 65535)),
            reload_debounce=number("EGRESS_RELOAD_DEBOUNCE", cls.reload_debounce, 0, 60),
            poll_seconds=number("EGRESS_POLL_SECONDS", cls.poll_seconds, 0.1, 3600),
            threads=int(number("EGRESS_THREADS", 0, 0, 64)),
            include_unused_slots=env.get("EGRESS_EXPORT_UNUSED_SLOTS", "").lower()
            in ("1", "true", "yes"),
            server_metric_fields=env.get("EGRESS_SERVER_METRIC_FIELDS", "").strip(),
            server_exclude_states=env.get("EGRESS_SERVER_EXCLUDE_STATES", "").strip(),
            web_config_file=Path(web)
            if (web := env.get("EGRESS_WEB_CONFIG_FILE", "").strip())
            else None,
            proxy_users_file=Path(users)
            if (users := env.get(PROXY_USERS_ENV, "").strip())
            else None,
            route_env={
                k: env[k]
                for k in (*SEED_VARS, *LEGACY_VARS, *PROXY_VARIABLES, *NO_PROXY_VARIABLES)
                if k in env
            },
            runtime_changes=env.get("EGRESS_RUNTIME_CHANGES", "1").strip().lower()
            not in ("0", "false", "no", "off"),
            max_old_workers=int(number("EGRESS_MAX_OLD_WORKERS", cls.max_old_workers, 1, 100)),
            old_worker_max_age=number(
                "EGRESS_OLD_WORKER_MAX_AGE", cls.old_worker_max_age, 1, 30 * 86400
            ),
            old_worker_max_rss=int(
                number("EGRESS_OLD_WORKER_MAX_RSS_MB", 0, 0, 1 << 20) * 1024 * 1024
            ),
        )
        if problems:
            raise ConfigError(problems)
        return settings

    @property
    def run(self) -> RunDir:
        """Every path in the run dir."""
        return RunDir(self.run_dir)
