"""The log path's loss counters as metric families: every log line haproxy or the relay could
not deliver is counted here, so an alert can prove the audit trail stays whole."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

DROPPED_FAMILY = "haproxy_egress_log_dropped_total"
HELP_DROPPED = (
    "Log lines that never reached stdout. stage=haproxy: haproxy's DroppedLogs summed over "
    "every worker of this run, old and exited ones included (the sink could not take the line); "
    "stage=relay: lines the log relay had read but could not write (reason=killed: the relay "
    "died with them; reason=stdout_closed: stdout refused them); stage=syslog: lines a "
    "remote syslog target's ring could not take while its receiver was slow or away (target: "
    "its host:port)."
)


@dataclass(frozen=True)
class WorkerLogDrops:
    """One live haproxy worker's `show info` DroppedLogs."""

    pid: int
    role: str  # current | old
    dropped: int


@dataclass(frozen=True)
class LogLoss:
    """A snapshot of the log path's counters, taken by the supervisor."""

    haproxy_dropped: int = 0
    workers: tuple[WorkerLogDrops, ...] = ()
    relay: bool = False  # a log relay runs (EGRESS_LOG=relay)
    relay_lines: int = 0  # whole lines the relay wrote to stdout
    relay_lost_killed: int = 0
    relay_lost_stdout: int = 0
    # Remote syslog targets (the `logging` section): host:port → lines their ring dropped.
    syslog_dropped: tuple[tuple[str, int], ...] = ()

    @property
    def total(self) -> int:
        """Every lost line, wherever it was lost."""
        return self.stdout_lost + self.syslog_lost

    @property
    def stdout_lost(self) -> int:
        """Lines lost on the way to stdout."""
        return self.haproxy_dropped + self.relay_lost_killed + self.relay_lost_stdout

    @property
    def syslog_lost(self) -> int:
        """Lines lost on the way to any remote syslog target."""
        return sum(count for _, count in self.syslog_dropped)


def log_families(loss: LogLoss | None) -> list[Metric]:
    """haproxy_egress_log_dropped_total and friends; nothing before the first snapshot."""
    if loss is None:
        return []
    dropped = CounterMetricFamily(DROPPED_FAMILY, HELP_DROPPED, labels=["stage", "reason"])
    dropped.add_metric(["haproxy", "sink_full"], loss.haproxy_dropped)
    per_worker = GaugeMetricFamily(
        "haproxy_egress_log_worker_dropped",
        "DroppedLogs of each live haproxy worker (role=old: left behind by a reload).",
        labels=["pid", "role"],
    )
    for w in loss.workers:
        per_worker.add_metric([str(w.pid), w.role], w.dropped)
    for target, count in loss.syslog_dropped:
        # Its own label set (target instead of reason): one family, so one alert covers all.
        labels = {"stage": "syslog", "target": target}
        dropped.add_sample(DROPPED_FAMILY, labels, count)
    out: list[Metric] = [dropped, per_worker]
    if loss.relay:
        dropped.add_metric(["relay", "killed"], loss.relay_lost_killed)
        dropped.add_metric(["relay", "stdout_closed"], loss.relay_lost_stdout)
        out.append(
            CounterMetricFamily(
                "haproxy_egress_log_lines_total",
                "Whole log lines the log relay wrote to stdout.",
                value=loss.relay_lines,
            )
        )
    return out
