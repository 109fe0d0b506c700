"""PID 1: runs socklog and haproxy (master-worker), reaps, applies changes, drains.

One event loop owns every process and every state change. Signal handlers, the config
watcher and nothing else only post events into its inbox; the metrics thread only reads the
status the loop published last.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import queue
import signal
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from haproxy_egress import __version__
from haproxy_egress.config.sources import gc_paused, read_inputs
from haproxy_egress.config.tlsmaterial import material_paths_of
from haproxy_egress.errors import ConfigError, EgressError, ExitCode
from haproxy_egress.haproxy.program import pid_file_pids
from haproxy_egress.metrics.http import MetricsServer
from haproxy_egress.metrics.status import RouterStatus
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import Compiled
from haproxy_egress.render.syslog import sink_labels
from haproxy_egress.runtime import memory
from haproxy_egress.runtime.changes import Kind, server_addresses
from haproxy_egress.runtime.children import Child, ChildState, Clock, describe_exit
from haproxy_egress.runtime.haproxylog import StderrRelay
from haproxy_egress.runtime.latecheck import LateCheck, Verdict
from haproxy_egress.runtime.logloss import LogLossWatch
from haproxy_egress.runtime.logrelay import LogPipe
from haproxy_egress.runtime.reload import ChangeOutcome, change_transaction, install
from haproxy_egress.runtime.watcher import ConfigChanged, Watcher
from haproxy_egress.runtime.workers import Workers
from haproxy_egress.settings import Settings

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
STARTUP_TIMEOUT = 15.0  # socklog's socket / haproxy's first worker must appear within this
HARD_KILL_AFTER = 3.0  # after a hard stop (SIGTERM to haproxy), SIGKILL stragglers


class State(enum.Enum):
    """The supervisor's own life; each child keeps its own `ChildState`."""

    STARTING = "starting"  # children being started for the first time
    RUNNING = "running"  # serving events (a child may be restarting meanwhile)
    STOPPING = "stopping"  # draining, then stopping the children in order
    EXITED = "exited"


Event = signal.Signals | ConfigChanged


@dataclass
class Running:
    """What runs, as the threads beside the loop read it: the stderr relay (route names), the
    watcher (the TLS files to look at) and the metrics endpoint (the status). The loop replaces
    `compiled` whole; the supervisor sets `status_source` once, as it is built."""

    compiled: Compiled
    status_source: Callable[[], RouterStatus] | None = None
    # Weakly: a strong reference kept the config of the last reload (its 7 MB text at 10,000
    # routes) alive through every runtime edit after it, until the next reload.
    _route_names_of: tuple[weakref.ref[Compiled], frozenset[str]] | None = None

    def status(self) -> RouterStatus:
        """The supervisor's status now (for /metrics, /healthz and /readyz)."""
        if self.status_source is None:
            raise RuntimeError("no supervisor reports status yet")
        return self.status_source()

    def tls_paths(self) -> tuple[str, ...]:
        """The TLS files the running config names (the watcher reads them with each look)."""
        return material_paths_of(self.compiled.config)

    def syslog_sinks(self) -> dict[str, str]:
        """The live config's syslog rings, by haproxy's name → the receiver's label (the loss
        watch names a log backend's rings by it: their descriptions are haproxy's own)."""
        return sink_labels(self.compiled.config.logging)

    def route_names(self) -> frozenset[str]:
        """The live config's route names, for the stderr relay's thread (built once per
        config: haproxy may print a line per route at a reload)."""
        current = self.compiled
        cached = self._route_names_of
        if cached is None or cached[0]() is not current:
            cached = (weakref.ref(current), frozenset(r.name for r in current.config.routes))
            self._route_names_of = cached  # one assignment: the thread sees old or new
        return cached[1]


@dataclass(frozen=True)
class Parts:
    """The supervisor's collaborators, built by `assembly.assemble` and handed in."""

    running: Running
    inbox: queue.SimpleQueue[Event]
    haproxy: Child
    log_child: Child | None  # socklog or the log relay, whichever the log sink needs
    log_pipe: LogPipe | None  # the relay's FIFO, held open by this process
    haproxy_stderr: StderrRelay
    log_loss: LogLossWatch
    workers: Workers
    watcher: Watcher
    metrics: MetricsServer
    late_check: LateCheck  # the `haproxy -c` of a config applied at runtime, after the fact


class Supervisor:
    """The process tree's root: one loop, one inbox, short handlers."""

    def __init__(
        self,
        settings: Settings,
        options: RenderOptions,
        parts: Parts,
        clock: Clock = time.monotonic,
    ) -> None:
        """`parts` come from `assembly.assemble`, which builds them for these settings (tests
        hand in children without a process through its child factory)."""
        self.settings = settings
        self._clock = clock
        self.options = options
        self._running = parts.running
        self._running.status_source = self.status
        self.inbox = parts.inbox
        self.state = State.STARTING
        self.exit_code = ExitCode.OK
        self.start_time = time.time()
        self.reloads_total = 0
        self.reload_failures_total = 0
        self.last_reload_successful = True
        self.last_reload_success_timestamp = time.time()
        self.pending_reload = False
        self.tls_rejected = False  # the last change was refused for its TLS material
        # `haproxy -c` of a config applied at runtime, after the fact; True while haproxy
        # refuses the file the running config was last installed from.
        self.late_check = parts.late_check
        self.config_check_failed = False
        # The inputs of the last edit haproxy or the checks refused: a restart must not retry
        # them behind the user's back (the last good config keeps running until a new edit).
        self._rejected_inputs_digest: str | None = None
        # By changes.Kind value. The metrics thread reads `changes_view`, a copy replaced
        # whole after each count, so it never iterates a dict the loop is changing.
        self.config_changes: Counter[str] = Counter()
        self.changes_view: dict[str, int] = {}
        self._stop_deadline: float | None = None
        self._kill_deadline: float | None = None
        self._socklog_stop_at: float | None = None
        self.log_pipe = parts.log_pipe
        self.log_loss = parts.log_loss
        self.haproxy_stderr = parts.haproxy_stderr
        self.haproxy = parts.haproxy
        self.workers = parts.workers
        # In start order: logs must flow before haproxy has anything to say.
        self.log_child = parts.log_child
        self.children = [c for c in (self.log_child, self.haproxy) if c is not None]
        self.watcher = parts.watcher
        self.metrics = parts.metrics
        self._published = self._snapshot()

    @property
    def current(self) -> Compiled:
        """The configuration in effect (kept where the threads beside the loop read it)."""
        return self._running.compiled

    @current.setter
    def current(self, compiled: Compiled) -> None:
        self._running.compiled = compiled  # one assignment: a reader sees the old or the new

    # --- what other threads may read ------------------------------------------------------

    def _tls_paths(self) -> tuple[str, ...]:
        """The TLS files the running config names (the watcher reads them with each look)."""
        return self._running.tls_paths()

    def status(self) -> RouterStatus:
        """What /metrics, /healthz and /readyz show (called from the metrics thread at each
        request): the status the loop published last, with the two facts that change between
        its turns merged in, so they show at once: the log-loss counters (the log-loss
        watch's thread updates them) and whether haproxy is still alive (it may die while the
        loop is busy with a change; until the loop reaps it, its state still says RUNNING)."""
        published = self._published  # one read: the loop replaces it whole
        return replace(
            published,
            # ready(), not only running(): once the loop has reaped a dead haproxy and
            # started the next one, the new pid runs before it has bound anything, and the
            # status published before the death still says ready.
            ready=published.ready and self.haproxy.ready(),
            log=self.log_loss.snapshot(),
        )

    def _publish(self) -> None:
        """Hand the metrics thread the state as this loop turn left it: one frozen object,
        built in the loop that owns every field of it and replaced in one assignment."""
        self._published = self._snapshot()

    def _snapshot(self) -> RouterStatus:
        """The loop's state now, frozen (only the loop calls this)."""
        return RouterStatus(
            alive=self.state is not State.EXITED,
            ready=self.state is State.RUNNING and self.haproxy.ready(),
            reloads_total=self.reloads_total,
            reload_failures_total=self.reload_failures_total,
            last_reload_successful=self.last_reload_successful,
            last_reload_success_timestamp=self.last_reload_success_timestamp,
            config_digest=self.current.config_digest,
            config_routes=len(self.current.config.routes),
            child_restarts={c.name: c.restarts for c in self.children},
            start_time=self.start_time,
            log=self.log_loss.snapshot(),
            config_changes=self.changes_view,
            config_check_failed=self.config_check_failed,
            old_workers=self.workers.snapshot.count,
            old_worker_connections=self.workers.snapshot.connections,
            old_worker_rss_bytes=self.workers.snapshot.rss_bytes,
            old_workers_ended=self.workers.ended_view[0],
            connections_ended=self.workers.ended_view[1],
            tls=self.current.tls,
            tls_rejected=self.tls_rejected,
        )

    # --- start-up ------------------------------------------------------------------------

    def _prepare_run_dir(self) -> None:
        run = self.settings.run_dir
        run.mkdir(parents=True, exist_ok=True)
        try:
            run.chmod(0o700)  # sockets are mode 600; the directory keeps other UIDs out too
        except PermissionError:
            # Normal on an emptyDir/tmpfs owned by root: the sockets' own mode 600 still holds.
            log.info("cannot chmod 700 %s (not its owner); relying on socket modes", run)
        for stale in self.settings.run.stale():
            stale.unlink(missing_ok=True)
        # A relay state left by a previous container of this pod would be counted as ours.
        self.settings.run.log_relay_state.unlink(missing_ok=True)
        install(self.settings, self.current.text, self.current.maps, self.current.tls_files)

    def _install_signal_handlers(self) -> None:
        def enqueue(signum: int, _frame: object) -> None:
            self.inbox.put_nowait(signal.Signals(signum))  # reentrant-safe; nothing else here

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(sig, enqueue)

    def _start_and_wait(self, child: Child) -> None:
        """Start a child at start-up and wait for its probe; EgressError if it never comes up."""
        child.spawn()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if child.came_up():
                return
            self._reap()
            if child.pid is None:
                raise EgressError(f"{child.name} exited during start-up; see its log above")
            time.sleep(0.02)
        raise EgressError(f"{child.name} was not ready within {STARTUP_TIMEOUT:.0f}s")

    def run(self) -> int:
        """Start everything, then serve events until stopped; returns the exit code."""
        self._prepare_run_dir()
        _become_subreaper()
        self._install_signal_handlers()
        self.haproxy_stderr.start()
        self.metrics.start()
        log.info(
            "haproxy-egress %s starting: %d route(s), config %s, metrics on %s:%d",
            __version__,
            len(self.current.config.routes),
            self.current.config_digest[:12],
            self.settings.metrics_address,
            self.metrics.port,
        )
        try:
            for child in self.children:
                self._start_and_wait(child)
        except EgressError as exc:
            log.error("start-up failed: %s", exc)
            self._kill_all()
            self.metrics.stop()
            self.haproxy_stderr.stop()
            return int(ExitCode.HAPROXY)
        self.state = State.RUNNING
        self.current.pack()  # the start-up text is installed: deflated until the first change
        memory.settle()  # the start-up compile: its garbage freed, what it keeps frozen
        self._haproxy_came_up()
        self.watcher.start()
        self.log_loss.start()
        try:
            while self.state is not State.EXITED:
                try:
                    event: Event | None = self.inbox.get(timeout=self._tick_seconds())
                except queue.Empty:
                    event = None
                self._reap()
                if event is not None:
                    self._dispatch(event)
                self._tick()
                self._publish()
        finally:
            self.watcher.stop()
            self.log_loss.stop()
            self.metrics.stop()
            self.haproxy_stderr.stop()
            self._final_log_count()
        log.info("haproxy-egress exiting (code %d)", self.exit_code)
        return int(self.exit_code)

    # --- the loop ------------------------------------------------------------------------

    def _tick_seconds(self) -> float:
        busy = self.state is State.STOPPING or any(
            c.state in (ChildState.STARTING, ChildState.BACKOFF) for c in self.children
        )
        return 0.05 if busy else 1.0

    def _dispatch(self, event: Event) -> None:
        """Hand an event to its `handle_<name>` method."""
        if isinstance(event, ConfigChanged):
            self.handle_config_changed(event)
        else:
            getattr(self, f"handle_{event.name.lower()}")()

    def handle_config_changed(self, event: ConfigChanged) -> None:
        """Watcher: the config directory has new content; reload if it compiles."""
        if event.inputs_digest == self._rejected_inputs_digest:
            # Already tried and refused (haproxy's restart found it first): one edit, one
            # rejection, one log line.
            log.debug("config directory changed to %s, already refused", event.inputs_digest[:12])
            return
        log.info("config directory changed (digest %s)", event.inputs_digest[:12])
        self._reload("config directory changed", force=False)

    def handle_sighup(self) -> None:
        """SIGHUP: re-read the configuration now, even if the directory looks unchanged."""
        self._reload("SIGHUP received", force=True)

    def handle_sigusr2(self) -> None:
        """SIGUSR2: the same as SIGHUP (haproxy's own reload signal, for habit's sake)."""
        self._reload("SIGUSR2 received", force=True)

    def handle_sigterm(self) -> None:
        """SIGTERM (the kubelet stopping the pod): drain; a second one stops hard at once."""
        self._stop(signal.SIGTERM)

    def handle_sigint(self) -> None:
        """SIGINT (Ctrl-C): the same as SIGTERM."""
        self._stop(signal.SIGINT)

    def handle_sigchld(self) -> None:
        """SIGCHLD: only wakes the loop; the reaper has already run."""

    def _reload(self, reason: str, force: bool) -> None:
        """Run the change transaction; a failure keeps the running config and says why."""
        if self.state is State.STOPPING:
            return
        if not self.haproxy.ready():
            self.pending_reload = True  # haproxy is restarting; reload once it is back
            return
        try:
            self._change(reason, force)
        finally:
            # The change is done with the texts (the running one, the last render's): keep
            # them deflated until the next change; then its garbage is freed and the memory
            # goes back.
            self.current.pack()
            memory.after_change()

    def _change(self, reason: str, force: bool) -> None:
        """One change transaction, and what the router says and counts of its outcome."""
        started = self._clock()
        self.current.unpack_soon()
        try:
            # No collector pass in the middle of a change: at 10,000 routes one walks a
            # million objects for a few hundred milliseconds the edit would wait for.
            with gc_paused():
                outcome = change_transaction(self.settings, self.options, self.current, force=force)
        except (EgressError, OSError) as exc:
            self.reloads_total += 1
            self.reload_failures_total += 1
            self.last_reload_successful = False
            self.tls_rejected = isinstance(exc, ConfigError) and any(
                ".tls." in f".{p.path}." for p in exc.problems
            )
            if isinstance(exc, ConfigError):
                n = len(exc.problems)
                detail = f"{n} problem{'s' if n != 1 else ''}: " + "; ".join(map(str, exc.problems))
            else:
                detail = str(exc)
            log.error(
                "reload rejected (%s), still serving config %s: %s",
                reason,
                self.current.config_digest[:12],
                detail.replace("\n", " | "),
            )
            if not self.haproxy.ready():
                # haproxy died during the change (not the edit's fault): it restarts from the
                # last good files; apply the edit again once it is back, or it would be lost.
                self.pending_reload = True
            else:
                self._rejected_inputs_digest = self._inputs_digest()
            return
        if not outcome.changed:
            if outcome.compiled is not self.current:  # new inputs, same haproxy.cfg: an edit
                self.config_changes[Kind.NOOP.value] += 1
                self.changes_view = dict(self.config_changes)
            self.current = outcome.compiled  # same haproxy.cfg; remember the new digest
            self._rejected_inputs_digest = None
            # The inputs now agree with what runs (e.g. a vanished mount came back unchanged):
            # an earlier rejection no longer describes the router, so the alert must clear.
            self.last_reload_successful = True
            self.tls_rejected = False
            log.info("reload skipped (%s): nothing changed for haproxy", reason)
            return
        self._changed(outcome, reason, self._clock() - started)

    def _changed(self, outcome: ChangeOutcome, reason: str, took: float) -> None:
        """A change is in effect: count it, say what was done and why, schedule its drain."""
        self.current = outcome.compiled
        self._rejected_inputs_digest = None  # the refused edit is history: its return is news
        if outcome.checked:
            self.late_check.discard()  # haproxy -c passed on this very text before the reload
            self.config_check_failed = False
        else:
            self.late_check.request(outcome.compiled)
        kind = outcome.kind
        self.config_changes[kind.value] += 1
        self.changes_view = dict(self.config_changes)
        self.last_reload_successful = True
        self.tls_rejected = False
        self.last_reload_success_timestamp = time.time()
        plan = outcome.plan
        what = "; ".join(plan.notes) if plan is not None and plan.notes else "no route changed"
        now = self._clock()
        # What this edit admits (again) is no longer due to end, wherever it runs. Only asked
        # when a job waits, and only their names: at 10,000 routes the text has 20,000 servers.
        if self.workers.jobs:
            self.workers.keep(
                frozenset(server_addresses(self.current.text)),
                {r.name: tuple(r.allow_from) for r in self.current.config.routes},
            )
        if kind is Kind.RELOAD:
            self.reloads_total += 1
            why = plan.why if plan is not None and plan.why else "forced"
            if outcome.fallback:
                why = f"the runtime change failed: {outcome.fallback}"
            log.info(
                "reloaded (%s): %s; reload (%s); config %s, %d route(s), new worker pid:%s "
                "in %.2fs (%s)",
                reason,
                what,
                why,
                self.current.config_digest[:12],
                len(self.current.config.routes),
                outcome.worker_pid,
                took,
                outcome.stages,
            )
            self.workers.after_reload(now, plan)
        elif kind is Kind.RUNTIME and plan is not None:
            log.info(
                "changed (%s): %s in %.0f ms (%s)",
                reason,
                plan.summary(),
                took * 1000,
                outcome.stages,
            )
            self.workers.after_runtime(now, plan)
        else:
            log.info("changed (%s): %s; nothing for haproxy to do", reason, what)

    def _stop(self, sig: signal.Signals) -> None:
        if self.state is State.STOPPING:
            log.warning("%s again: stopping hard now", sig.name)
            self._hard_stop()
            return
        self.state = State.STOPPING
        self.watcher.stop()
        self.late_check.stop()
        self._stop_deadline = self._clock() + self.settings.drain_seconds
        if self.haproxy.pid is None:
            self._stop_socklog_soon()
            return
        log.info(
            "%s received: draining connections for up to %.0fs",
            sig.name,
            self.settings.drain_seconds,
        )
        self.haproxy.state = ChildState.STOPPING
        self.haproxy.signal(signal.SIGUSR1)  # soft stop: close listeners, finish connections

    def _hard_stop(self) -> None:
        self._stop_deadline = None
        self.exit_code = ExitCode.FORCED_STOP
        self.haproxy.signal(signal.SIGTERM)  # haproxy's hard stop
        self._kill_deadline = self._clock() + HARD_KILL_AFTER

    def _stop_socklog_soon(self) -> None:
        # A moment for the last datagrams in socklog's socket buffer to be written out.
        self._socklog_stop_at = self._clock() + 0.2

    def _tick(self) -> None:
        now = self._clock()
        if self.state is State.STOPPING:
            self._tick_stopping(now)
            return
        if self.workers.busy() and self.haproxy.ready():
            self.workers.tick(now)
        for child in self.children:
            if child.restart_due(now):
                child.restarts += 1
                child.spawn()
            elif child.came_up():
                if child is self.haproxy:
                    self._haproxy_came_up()
                else:
                    log.info("%s (pid:%s) is back; logs flow again", child.name, child.pid)

    def _haproxy_came_up(self) -> None:
        log.info(
            "ready: haproxy (pid:%s) serves %d route(s)",
            self.haproxy.pid,
            len(self.current.config.routes),
        )
        self._publish()  # /readyz says so now, not after the deferred reload below
        if self.pending_reload or self._inputs_moved_on():
            self.pending_reload = False
            self._reload("deferred while haproxy restarted", force=True)

    def _inputs_digest(self) -> str | None:
        try:
            return read_inputs(self.settings, self._tls_paths()).digest
        except OSError:
            return None

    def _inputs_moved_on(self) -> bool:
        """The config directory holds something other than what runs, and not an edit that
        was refused: an edit a crash interrupted (the watcher posts a digest once, so it would
        not come again)."""
        digest = self._inputs_digest()
        return digest is not None and digest not in (
            self.current.inputs_digest,
            self._rejected_inputs_digest,
        )

    def _tick_stopping(self, now: float) -> None:
        if self._stop_deadline is not None and now >= self._stop_deadline:
            log.warning(
                "drain period of %.0fs is over: stopping haproxy hard", self.settings.drain_seconds
            )
            self._hard_stop()
        if self._kill_deadline is not None and now >= self._kill_deadline:
            self._kill_all()
            self._kill_deadline = None
        if self.haproxy.pid is not None:
            return
        sl = self.log_child  # socklog or the log relay: it drains what haproxy left it
        if sl is not None and sl.pid is not None:
            if sl.state is not ChildState.STOPPING:
                if self._socklog_stop_at is None:
                    self._stop_socklog_soon()
                elif now >= self._socklog_stop_at:
                    sl.state = ChildState.STOPPING
                    sl.signal(signal.SIGTERM)
            return
        self.state = State.EXITED

    def _final_log_count(self) -> None:
        """Warn about lines lost in the last poll interval too, then let the FIFO go."""
        self.log_loss.poll(force=True)
        if self.log_pipe is not None:
            self.log_pipe.close()

    def _kill_all(self) -> None:
        for child in self.children:
            child.signal(signal.SIGKILL)
        # haproxy's workers are the master's children; if the master is gone they are ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            for pid in pid_file_pids(self.settings.run.pid_file):
                os.kill(pid, signal.SIGKILL)

    # --- reaping -------------------------------------------------------------------------

    def _reap(self) -> None:
        """Collect every exited child, ours or orphans reparented to us (we are PID 1)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            now = self._clock()
            for child in self.children:
                if child.pid == pid:
                    self._child_exited(child, status, now)
                    break
            else:
                if self.late_check.owns(pid):
                    self._late_checked(self.late_check.exited(status))
                    continue
                log.debug("reaped orphan pid:%d (%s)", pid, describe_exit(status))

    def _late_checked(self, verdict: Verdict) -> None:
        """The `haproxy -c` run after a runtime edit is done: say so loudly if it refused."""
        if verdict.config_digest != self.current.config_digest:
            return  # about a config a later edit has replaced; that one has its own check
        if verdict.ok:
            log.info(
                "haproxy -c %s config %s, applied at runtime, in %.2fs",
                "accepts again" if self.config_check_failed else "accepts",
                verdict.config_digest[:12],
                verdict.seconds,
            )
            self.config_check_failed = False
            return
        self.config_check_failed = True
        log.error(
            "CONFIG CHECK FAILED after a runtime change: haproxy -c refuses config %s, which "
            "the running worker already serves; the next reload is refused until an edit "
            "passes the check: %s",
            verdict.config_digest[:12],
            verdict.error.replace("\n", " | "),
        )

    def _child_exited(self, child: Child, status: int, now: float) -> None:
        expected = self.state is State.STOPPING
        text = child.exited(status, now, expected)
        (log.info if expected else log.error)("%s", text)
        if expected:
            return
        if child.backoff.exhausted():
            log.error(
                "%s failed %d times within %.0fs: giving up so the kubelet restarts the pod",
                child.name,
                len(child.backoff.failures),
                child.backoff.window,
            )
            self.state = State.STOPPING
            self._hard_stop()
            self.exit_code = ExitCode.CRASHLOOP


def _become_subreaper() -> None:
    """Adopt orphaned grandchildren even when not PID 1 (tests, `docker run --init`)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


__all__ = ["Event", "Parts", "Running", "State", "Supervisor"]
