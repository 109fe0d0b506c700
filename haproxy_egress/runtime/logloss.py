"""Counting lost log lines: haproxy's DroppedLogs of every worker (old ones included, through
the master CLI) plus the log relay's own losses; and one rate-limited warning when any grew."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from haproxy_egress.background import Background
from haproxy_egress.errors import EgressError
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.show import parse_info, parse_proc_table
from haproxy_egress.metrics.logs import LogLoss, WorkerLogDrops
from haproxy_egress.runtime.logrelay import read_counters

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0


def worker_pids(show_proc: str) -> list[tuple[int, str]]:
    """(pid, "current" | "old") of every worker in the master's `show proc`."""
    return [
        (p.pid, "old" if p.old else "current")
        for p in parse_proc_table(show_proc)
        if p.kind == "worker"
    ]


class LogLossWatch(Background):
    """Polls the loss counters in its own thread (a master CLI that is slow to answer must not
    hold up the supervisor's loop); `snapshot()` is for any thread."""

    def __init__(
        self,
        master_socket: Path,
        relay_state: Path | None,
        warn_interval: float,
        poll_interval: float = POLL_SECONDS,
    ) -> None:
        self._master = CliSocket(master_socket, timeout=2.0, master=True)
        self._relay_state = relay_state
        self._warn_interval = warn_interval
        self._poll_interval = poll_interval
        self._next_poll = 0.0
        self._last: dict[int, int] = {}  # pid -> last DroppedLogs seen
        self._retired = 0  # DroppedLogs of workers that have exited, as last seen
        self._warned_total = 0
        self._warned_at = -1e9
        self._snapshot = LogLoss(relay=relay_state is not None)
        self._polling = threading.Lock()  # the thread's polls and the final one at exit
        super().__init__("log-loss")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self._poll_interval)

    def snapshot(self) -> LogLoss:
        """The latest counters (an immutable object replaced whole: no lock needed)."""
        return self._snapshot

    def poll(self, now: float | None = None, force: bool = False) -> LogLoss:
        """Refresh the counters when due; warn (at most once per interval) if lines were lost."""
        with self._polling:
            return self._poll(time.monotonic() if now is None else now, force)

    def _poll(self, now: float, force: bool) -> LogLoss:
        if not force and now < self._next_poll:
            return self._snapshot
        self._next_poll = now + self._poll_interval
        found = self._workers()
        workers = self._snapshot.workers  # master away (re-executing): keep the last view
        if found is not None:
            workers = tuple(found)
            seen = {w.pid for w in workers}
            for pid in [p for p in self._last if p not in seen]:
                self._retired += self._last.pop(pid)
            for w in workers:
                self._last[w.pid] = max(w.dropped, self._last.get(w.pid, 0))
        relay = read_counters(self._relay_state) if self._relay_state is not None else None
        self._snapshot = LogLoss(
            haproxy_dropped=self._retired + sum(self._last.values()),
            workers=workers,
            relay=self._relay_state is not None,
            relay_lines=relay.lines_out if relay else 0,
            relay_lost_killed=relay.lost_killed if relay else 0,
            relay_lost_stdout=relay.lost_unwritable if relay else 0,
        )
        self._maybe_warn(now)
        return self._snapshot

    def _workers(self) -> list[WorkerLogDrops] | None:
        try:
            pids = worker_pids(self._master.command("show proc"))
        except EgressError:
            return None
        out = []
        for pid, role in pids:
            try:
                dropped = parse_info(self._master.command(f"@!{pid} show info")).dropped_logs
            except EgressError:
                dropped = None  # it exited between the two commands
            if dropped is not None:
                out.append(WorkerLogDrops(pid, role, dropped))
            elif pid in self._last:
                out.append(WorkerLogDrops(pid, role, self._last[pid]))
        return out

    def _maybe_warn(self, now: float) -> None:
        s = self._snapshot
        if s.total <= self._warned_total or now - self._warned_at < self._warn_interval:
            return
        log.warning(
            "%d log line(s) lost since the last warning (haproxy could not write %d, the relay "
            "lost %d); %d in all this run: see haproxy_egress_log_dropped_total",
            s.total - self._warned_total,
            s.haproxy_dropped,
            s.relay_lost_killed + s.relay_lost_stdout,
            s.total,
        )
        self._warned_total = s.total
        self._warned_at = now


__all__ = ["LogLossWatch", "worker_pids"]
