"""Counting lost log lines: haproxy's DroppedLogs of every worker (old ones included, through
the master CLI) plus the log relay's own losses, and what each remote syslog ring dropped; and
one rate-limited warning when any grew."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from haproxy_egress.background import Background
from haproxy_egress.config.logtargets import RING_PREFIX
from haproxy_egress.errors import EgressError
from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.show import (
    announcements,
    parse_event_sinks,
    parse_info,
    parse_proc_table,
)
from haproxy_egress.metrics.logs import LogLoss, WorkerLogDrops
from haproxy_egress.runtime.logrelay import read_counters
from haproxy_egress.runtime.ringtap import RingTaps

log = logging.getLogger(__name__)

POLL_SECONDS = 2.0
BUSY_POLL_SECONDS = 0.25
SEEN_LINES = 1024  # announcements a tap read, kept to skip them in a later dump of its ring


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
        *,
        poll_interval: float = POLL_SECONDS,
        sink_labels: Callable[[], Mapping[str, str]] = dict,
        stats_socket: Path | None = None,
    ) -> None:
        self._master = CliSocket(master_socket, timeout=2.0, master=True)
        # The current worker's rings are read as haproxy writes them (ringtap.py): every
        # "N events dropped" line is seen, however fast the ring turns over.
        self._taps = RingTaps(stats_socket) if stats_socket is not None else None
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
        self._rings = RingDrops()
        # A ring's receiver by haproxy's name for it; else its description (a `ring` section's
        # is the receiver's host:port).
        self._sink_labels = sink_labels
        super().__init__("log-loss")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self._interval())

    def _interval(self) -> float:
        """The poll interval; shorter while a ring drops: its announcement may be gone
        within a second."""
        if self._rings.busy:
            return min(self._poll_interval, BUSY_POLL_SECONDS)
        return self._poll_interval

    def stop(self) -> None:
        """Stop polling, then close the ring taps (an old worker waits for their sessions)."""
        super().stop()
        with self._polling:
            if self._taps is not None:
                self._taps.stop()

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
        self._next_poll = now + self._interval()
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
            syslog_dropped=self._rings.totals(),
        )
        self._maybe_warn(now)
        return self._snapshot

    def _workers(self) -> list[WorkerLogDrops] | None:
        try:
            pids = worker_pids(self._master.command("show proc"))
        except EgressError:
            return None
        labels = self._sink_labels()
        if self._taps is not None:
            # Before `retire`: a tap that ended with its worker still has lines to book.
            current = [pid for pid, role in pids if role == "current"]
            for tap in self._taps.sync(current, labels):
                self._rings.stream(tap.pid, tap.ring, labels.get(tap.ring, tap.ring), tap.take())
        self._rings.retire({pid for pid, _ in pids})
        out = []
        for pid, role in pids:
            try:
                info = parse_info(self._master.command(f"@!{pid} show info"))
            except EgressError:
                info = None  # it exited between the two commands
            dropped = info.dropped_logs if info is not None else None
            if info is not None:
                self._poll_rings(pid, info.sink_drops_doubled, labels)
            if dropped is not None:
                out.append(WorkerLogDrops(pid, role, dropped))
            elif pid in self._last:
                out.append(WorkerLogDrops(pid, role, self._last[pid]))
        return out

    def _poll_rings(self, pid: int, doubled: bool, labels: Mapping[str, str]) -> None:
        """One worker's syslog ring counters, and haproxy's "N events dropped" lines
        (`labels`: ring name → its target, of the running config)."""
        # Rings with drops in play are read first, the counters after: a line haproxy
        # writes in between is booked at the next poll (never counted twice).
        tapped = set()
        for ring, target in labels.items():
            tap = self._taps.get(pid, ring) if self._taps is not None else None
            if tap is not None:
                self._rings.stream(pid, ring, target, tap.take())
                tapped.add(ring)
        # The other rings (an old worker's, whose tap is closed): the announcements still in
        # the ring, from a dump.
        for ring in self._rings.to_read(pid):
            if ring in tapped:
                continue
            try:
                dump = self._master.command(f"@!{pid} show events {ring}")
            except EgressError:
                continue
            self._rings.read(pid, ring, announcements(dump))
        try:
            sinks = parse_event_sinks(self._master.command(f"@!{pid} show events"), doubled)
        except EgressError:
            return  # it exited meanwhile: what was seen last is retired with it
        for sink in sinks:
            if sink.kind == "buffer" and sink.name.startswith(RING_PREFIX):
                target = labels.get(sink.name, sink.description)
                self._rings.see(pid, sink.name, target, sink.dropped)

    def _maybe_warn(self, now: float) -> None:
        s = self._snapshot
        if s.total <= self._warned_total or now - self._warned_at < self._warn_interval:
            return
        log.warning(
            "%d log line(s) lost since the last warning (haproxy could not write %d, the relay "
            "lost %d, remote syslog rings dropped %d); %d in all this run: see "
            "haproxy_egress_log_dropped_total",
            s.total - self._warned_total,
            s.haproxy_dropped,
            s.relay_lost_killed + s.relay_lost_stdout,
            s.syslog_lost,
            s.total,
        )
        self._warned_total = s.total
        self._warned_at = now


class RingDrops:
    """Lines each syslog ring dropped, summed over workers and over haproxy's resets.

    haproxy counts a ring's drops per worker and, at its next successful write, writes
    "N events dropped" into the ring (so the receiver learns of them too) and starts the
    count again from 0. So a ring's drops are the announced Ns plus the current count. Pure
    bookkeeping: the watch feeds it what the master CLI and the taps said.

    The current worker's announcements come from a tap (ringtap.py) that reads the ring as
    haproxy writes it, so none is missed, however fast the ring turns over (haproxy 3.0 under
    load replaces a 64 KiB ring's 300 lines within 0.1 s, faster than any poll). An old
    worker's (its tap closed, or there is no stats socket) are read from a dump of the ring
    while drops are in play, each booked once (the ring is first in, first out).

    A counter found lower than last time was announced, at least by what it showed last time:
    that much is booked at once (a floor), so the total never goes down while the announcement
    is on its way; the announcement, once read, books only what exceeds the floor. From a tap
    it always comes, and the count is exact. From a dump it may be gone: then what the ring
    dropped between the last poll and the announcement is missed (never too high, low by at
    most one poll interval's drops; docs/operations.md, "Remote syslog").
    """

    def __init__(self) -> None:
        self._count: dict[tuple[int, str], int] = {}  # (pid, ring) → not yet announced
        self._target: dict[tuple[int, str], str] = {}  # (pid, ring) → host:port
        self._seen: dict[tuple[int, str], frozenset[str]] = {}  # announcements in the ring
        self._active: set[tuple[int, str]] = set()  # read the ring at the next poll
        self._booked: dict[str, int] = {}  # host:port → announced, or of workers gone
        self._announced: dict[tuple[int, str], int] = {}  # read since the last counter
        self._floor: dict[tuple[int, str], int] = {}  # booked for a reset not yet read

    @property
    def busy(self) -> bool:
        """Some ring has drops in play (the watch then polls faster)."""
        return bool(self._active)

    def to_read(self, pid: int) -> list[str]:
        """The rings of `pid` whose announcements the next poll must read."""
        return sorted(ring for p, ring in self._active if p == pid)

    def read(self, pid: int, ring: str, found: Sequence[tuple[str, int]]) -> None:
        """Book the announcements (line, N) of a ring dump not booked before."""
        key = (pid, ring)
        seen = self._seen.get(key, frozenset())
        new = sum(n for line, n in found if line not in seen)
        # A dump that shows no announcement for a reset never will: the floor stays booked.
        self._book(key, self._target.get(key, ring), new, self._floor.pop(key, 0))
        self._seen[key] = frozenset(line for line, _ in found)
        if not new:
            self._active.discard(key)  # kept below if the counter still moves

    def stream(self, pid: int, ring: str, target: str, found: Sequence[tuple[str, int]]) -> None:
        """Book the announcements (line, N) a tap read: each is new (a stream never repeats a
        line). One that explains a reset already booked as a floor may come a poll or two
        after the reset (it was on its way through the socket): the floor waits for it."""
        key = (pid, ring)
        # A tapped ring is never dumped, so `read` never takes it out of the fast polls:
        # here it leaves them, and `see` puts it back while its counter still moves.
        self._active.discard(key)
        new = sum(n for _, n in found)
        self._target.setdefault(key, target)
        self._booked.setdefault(target, 0)
        self._book(key, self._target[key], new, self._floor.pop(key, 0) if new else 0)
        if found:
            # A dump of this ring after the tap closed (its worker is old) skips these.
            lines = [*self._seen.get(key, ()), *(line for line, _ in found)]
            self._seen[key] = frozenset(lines[-SEEN_LINES:])

    def _book(self, key: tuple[int, str], target: str, new: int, floor: int) -> None:
        """Book `new` announced drops of `key`, less the `floor` already booked for them."""
        self._booked[target] = self._booked.get(target, 0) + max(0, new - floor)
        self._announced[key] = self._announced.get(key, 0) + new

    def see(self, pid: int, ring: str, target: str, dropped: int) -> None:
        """Record a ring's counter as `show events` printed it."""
        key = (pid, ring)
        before = self._count.get(key, 0)
        self._count[key] = dropped
        self._target[key] = target
        self._booked.setdefault(target, 0)
        announced = self._announced.pop(key, 0)
        if dropped < before and announced < before:
            # Reset by an announcement not read (yet, or ever): book what was seen.
            self._floor[key] = before - announced
            self._booked[target] += before - announced
        if dropped or before:
            self._active.add(key)  # drops to announce, or just announced: read the ring

    def retire(self, live: set[int]) -> None:
        """Keep what workers that are gone had counted."""
        for key in [k for k in self._count if k[0] not in live]:
            target = self._target.pop(key)
            self._booked[target] = self._booked.get(target, 0) + self._count.pop(key)
            self._seen.pop(key, None)
            self._announced.pop(key, None)
            self._floor.pop(key, None)
            self._active.discard(key)

    def totals(self) -> tuple[tuple[str, int], ...]:
        """host:port → every line dropped for it this run, in name order."""
        out = dict(self._booked)
        for key, count in self._count.items():
            out[self._target[key]] += count
        return tuple(sorted(out.items()))


__all__ = ["LogLossWatch", "RingDrops", "worker_pids"]
