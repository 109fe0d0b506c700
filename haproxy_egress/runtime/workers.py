"""Old workers and the connections an edit denies, through the master CLI (`@!<pid>`).

A reload leaves the previous worker running with the connections it holds, for as long as
they last: nothing ends them on a timer. After the drain time this module ends, in each
worker that still runs an older configuration, only the sessions the new configuration
refuses (`changes.Deny`), one `shutdown session` each (`shutdown sessions server` is refused
in an old worker). It also bounds old workers by count (oldest first), age and memory; every
connection it ends is logged with the reason and counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from haproxy_egress.errors import HaproxyError
from haproxy_egress.haproxy import program, show
from haproxy_egress.haproxy.show import Session, parse_sessions
from haproxy_egress.runtime.changes import Deny, IPNetwork, Plan
from haproxy_egress.runtime.live import delete_servers

log = logging.getLogger(__name__)

__all__ = ["Bounds", "DrainJob", "OldWorkers", "Workers"]

Command = Callable[[str], str]  # one master CLI command → its answer
AllowFrom = Mapping[str, tuple[IPNetwork, ...]]  # route → its allow_from (empty: everyone)
TERM_AFTER = 5.0  # an old worker whose sessions were all ended and that still runs gets SIGTERM
DELETE_RETRY = 0.5  # servers still busy after `shutdown sessions server` are tried again
DELETE_TRIES = 20


@dataclass(frozen=True)
class Bounds:
    """What old workers may hold (settings: EGRESS_MAX_OLD_WORKERS, ..._MAX_AGE, ..._MAX_RSS_MB)."""

    count: int = 8
    age: float = 86400.0
    rss: int = 0  # bytes; 0: unbounded


@dataclass(frozen=True)
class OldWorkers:
    """What the metrics say about old workers (a snapshot, refreshed by the loop)."""

    count: int = 0
    connections: int = 0
    rss_bytes: int = 0


@dataclass
class DrainJob:
    """Connections some edit denies, to end in these workers once the drain time is over."""

    due: float
    denies: tuple[Deny, ...]
    pids: tuple[int, ...]  # the workers that admitted them under an older configuration
    worker: int | None = None  # the current worker, for servers a runtime change removed
    delete: tuple[str, ...] = ()  # backend/server refs to delete there
    tries: int = 0


@dataclass
class Workers:
    """The loop's view of haproxy's workers; every method is called from the loop only."""

    master: Command
    drain_seconds: float
    bounds: Bounds = field(default_factory=Bounds)
    retired: dict[int, float] = field(default_factory=dict)  # old pid → when it became old
    ending: dict[int, float] = field(default_factory=dict)  # pid → when its sessions were ended
    jobs: list[DrainJob] = field(default_factory=list)
    connections_ended: Counter[str] = field(default_factory=Counter)  # reason → count
    workers_ended: Counter[str] = field(default_factory=Counter)  # count | age | memory
    snapshot: OldWorkers = OldWorkers()
    # (workers_ended, connections_ended) copies for the metrics thread, replaced whole.
    ended_view: tuple[dict[str, int], dict[str, int]] = ({}, {})
    refresh_every: float = 1.0  # old workers are re-read at most this often
    _refresh_at: float = 0.0

    # --- after an edit --------------------------------------------------------------------

    def after_reload(self, now: float, plan: Plan | None) -> None:
        """A new worker took over: the previous ones are old now; schedule what it denies."""
        old = self._old()
        for proc in old:
            self.retired.setdefault(proc.pid, now)
        if plan is not None and plan.denies:
            pids = tuple(p.pid for p in old)
            self.jobs.append(DrainJob(now + self.drain_seconds, plan.denies, pids))
        self.refresh(now)

    def after_runtime(self, now: float, plan: Plan) -> None:
        """The current worker runs the edit: end what it denies there and in old workers."""
        if not plan.denies and not plan.remove:
            return
        worker = self._current()
        pids = tuple(p.pid for p in self._old()) + ((worker,) if worker else ())
        refs = tuple(s.ref for s in plan.remove)
        self.jobs.append(DrainJob(now + self.drain_seconds, plan.denies, pids, worker, refs))

    def keep(
        self, servers: frozenset[str], allow_from: Mapping[str, tuple[IPNetwork, ...]]
    ) -> None:
        """A newer edit admits these again: pending jobs leave them alone. `servers`: the
        backend/server refs it defines; `allow_from`: each route's list (empty: everyone)."""
        for job in self.jobs:
            job.delete = tuple(ref for ref in job.delete if ref not in servers)
            job.denies = tuple(_without(d, servers, allow_from) for d in job.denies)

    # --- every tick -----------------------------------------------------------------------

    def busy(self) -> bool:
        """Something to watch: old workers or jobs pending."""
        return bool(self.retired or self.jobs)

    def tick(self, now: float) -> None:
        """Run the jobs that are due; watch old workers' bounds."""
        for job in [j for j in self.jobs if now >= j.due]:
            self.jobs.remove(job)
            self._run(job, now)
        if self.retired and now >= self._refresh_at:
            self.refresh(now)

    def refresh(self, now: float) -> None:
        """Re-read the old workers, enforce the bounds and update the metrics snapshot."""
        self._refresh_at = now + self.refresh_every
        old = self._old()
        alive = {p.pid for p in old}
        self.retired = {pid: t for pid, t in self.retired.items() if pid in alive}
        for proc in old:
            self.retired.setdefault(proc.pid, now)
        self.ending = {pid: t for pid, t in self.ending.items() if pid in alive}
        self._enforce(now, [p.pid for p in old])
        conns = rss = 0
        for pid in alive:
            rss += program.rss_bytes(pid)
            conns += self._curr_conns(pid)
        self.snapshot = OldWorkers(len(alive), conns, rss)
        self.ended_view = (dict(self.workers_ended), dict(self.connections_ended))

    # --- the pieces -----------------------------------------------------------------------

    def _old(self) -> list[show.Proc]:
        try:
            return show.parse_old_workers(self.master("show proc"))
        except HaproxyError as exc:
            log.debug("show proc failed: %s", exc)
            return []

    def _current(self) -> int | None:
        try:
            procs = show.parse_show_proc(self.master("show proc"))
        except HaproxyError:
            return None
        return next((p.pid for p in procs if p.kind == "worker"), None)

    def _curr_conns(self, pid: int) -> int:
        try:
            info = show.parse_info(self.master(f"@!{pid} show info"))
        except HaproxyError:
            return 0
        return info.current_connections or 0

    def _sessions(self, pid: int) -> list[Session]:
        try:
            return parse_sessions(self.master(f"@!{pid} show sess"))
        except HaproxyError as exc:
            log.debug("show sess of pid:%d failed: %s", pid, exc)
            return []

    def _shutdown(self, pid: int, session: Session) -> bool:
        try:
            self.master(f"@!{pid} shutdown session {session.ptr}")
        except HaproxyError as exc:
            log.warning("could not end %s in worker pid:%d: %s", session, pid, exc)
            return False
        return True

    def _run(self, job: DrainJob, now: float) -> None:
        try:
            self._end_denied(job, now)
        finally:
            self.ended_view = (dict(self.workers_ended), dict(self.connections_ended))

    def _end_denied(self, job: DrainJob, now: float) -> None:
        if job.tries == 0:
            for pid in job.pids:
                for session in self._sessions(pid):
                    deny = next((d for d in job.denies if d.covers(session)), None)
                    if deny is not None and self._shutdown(pid, session):
                        self.connections_ended["denied"] += 1
                        log.info(
                            "ended connection %s in worker pid:%d after the %.0fs drain: %s",
                            session,
                            pid,
                            self.drain_seconds,
                            deny.reason,
                        )
        if job.worker is None or not job.delete:
            return
        worker = job.worker
        if worker != self._current():
            return  # a reload or restart since: that worker and its servers are gone or old
        busy = delete_servers(lambda line: self.master(f"@!{worker} {line}"), job.delete)
        if busy and job.tries < DELETE_TRIES:
            job.tries += 1
            job.delete = tuple(busy)
            job.due = now + DELETE_RETRY
            self.jobs.append(job)
        elif busy:
            log.warning("servers still busy, left in maintenance: %s", ", ".join(busy))

    def _enforce(self, now: float, oldest_first: list[int]) -> None:
        live = [pid for pid in oldest_first if pid not in self.ending]
        over = len(live) - self.bounds.count
        for pid in live:
            reason = ""
            if over > 0:
                over -= 1
                reason = "count"
                why = f"more than {self.bounds.count} old workers"
            elif now - self.retired.get(pid, now) > self.bounds.age:
                reason = "age"
                why = f"old for more than {self.bounds.age:.0f}s"
            elif self.bounds.rss and program.rss_bytes(pid) > self.bounds.rss:
                reason = "memory"
                why = f"RSS above {self.bounds.rss // (1024 * 1024)} MB"
            if reason:
                self._end_worker(pid, now, reason, why)
        for pid, since in list(self.ending.items()):
            if now - since > TERM_AFTER:
                log.warning("old worker pid:%d still runs; sending SIGTERM", pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
                self.ending[pid] = now + 3600  # once

    def _end_worker(self, pid: int, now: float, reason: str, why: str) -> None:
        sessions = self._sessions(pid)
        ended = sum(1 for s in sessions if self._shutdown(pid, s))
        self.ending[pid] = now
        self.workers_ended[reason] += 1
        self.connections_ended[reason] += ended
        self.ended_view = (dict(self.workers_ended), dict(self.connections_ended))
        log.warning(
            "ended old worker pid:%d (%s): %d connection(s) closed%s",
            pid,
            why,
            ended,
            "".join(f"; {s}" for s in sessions[:5]),
        )


def _without(deny: Deny, servers: frozenset[str], allow_from: AllowFrom) -> Deny:
    """`deny` minus what a newer edit admits again: destinations brought back, clients in
    the route's current allow_from (a session ends only if no list since admits it)."""
    kept = frozenset(n for n in deny.servers if f"{deny.route}/{n}" not in servers)
    allowed = deny.allowed
    if allowed is not None and deny.route in allow_from:
        current = allow_from[deny.route]
        allowed = (*allowed, *current) if current else None
    return replace(deny, servers=kept, allowed=allowed)
