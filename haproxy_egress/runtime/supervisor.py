"""PID 1: runs socklog and haproxy (master-worker), reaps, reloads, drains.

One event loop owns every process and every state change. Signal handlers, the config
watcher and nothing else only post events into its inbox; the metrics thread only reads a
status snapshot.
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
from collections.abc import Callable
from dataclasses import dataclass

from haproxy_egress import __version__
from haproxy_egress.errors import ConfigError, EgressError, ExitCode
from haproxy_egress.metrics.http import MetricsServer
from haproxy_egress.metrics.options import ExporterOptions
from haproxy_egress.metrics.status import RouterStatus
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.runtime import haproxy
from haproxy_egress.runtime.children import Child, ChildState, describe_exit
from haproxy_egress.runtime.reload import Compiled, ReloadFailed, install, transaction
from haproxy_egress.runtime.watcher import ConfigChanged, Watcher
from haproxy_egress.settings import LogSink, Settings

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
STARTUP_TIMEOUT = 15.0  # socklog's socket / haproxy's first worker must appear within this
HARD_KILL_AFTER = 3.0  # after a hard stop (SIGTERM to haproxy), SIGKILL stragglers


class State(enum.Enum):
    """The supervisor's own state."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"  # haproxy died; waiting to restart it
    STOPPING = "stopping"
    EXITED = "exited"


@dataclass(frozen=True)
class ReloadRequested:
    """SIGHUP / SIGUSR2: re-read the configuration now."""

    reason: str


Event = signal.Signals | ConfigChanged | ReloadRequested


class Supervisor:
    """The process tree's root: one loop, one inbox, short handlers."""

    def __init__(self, settings: Settings, options: RenderOptions, compiled: Compiled) -> None:
        self.settings = settings
        self.options = options
        self.current = compiled
        self.inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.state = State.STARTING
        self.exit_code = ExitCode.OK
        self.ready = False
        self.start_time = time.time()
        self.reloads_total = 0
        self.reload_failures_total = 0
        self.last_reload_successful = True
        self.last_reload_success_timestamp = time.time()
        self.pending_reload = False
        self._stop_deadline: float | None = None
        self._kill_deadline: float | None = None
        self._socklog_stop_at: float | None = None
        self.haproxy = Child(
            "haproxy",
            haproxy.master_argv(settings.haproxy_bin, settings.config_path, settings.master_socket),
        )
        self.socklog: Child | None = None
        if settings.log_sink is LogSink.SOCKLOG:
            argv = [settings.socklog_bin, "unix", str(settings.log_socket)]
            self.socklog = Child("socklog", argv)
        self.watcher = Watcher(
            settings.config_dir,
            self.inbox.put_nowait,
            compiled.digest,
            debounce=settings.reload_debounce,
            poll=settings.poll_seconds,
        )
        exporter_options = ExporterOptions.from_settings(settings)
        stats = haproxy.CliSocket(settings.stats_socket, timeout=exporter_options.scrape_timeout)
        self.metrics = MetricsServer(
            settings.metrics_address,
            settings.metrics_port,
            stats.command,
            self.status,
            exporter_options,
            web_config=settings.web_config_file,  # re-read on change by the server itself
            reload_interval=settings.reload_debounce,
        )

    # --- what other threads may read ------------------------------------------------------

    def status(self) -> RouterStatus:
        """A snapshot for /metrics, /healthz and /readyz (called from the metrics thread)."""
        return RouterStatus(
            alive=self.state is not State.EXITED,
            # Checked live as well: between haproxy's death and the loop reaping it, the
            # flag still says ready while its listeners are already gone.
            ready=self.ready and self.haproxy.running(),
            reloads_total=self.reloads_total,
            reload_failures_total=self.reload_failures_total,
            last_reload_successful=self.last_reload_successful,
            last_reload_success_timestamp=self.last_reload_success_timestamp,
            config_digest=self.current.text_digest,
            config_routes=len(self.current.config.routes),
            child_restarts={
                c.name: c.restarts for c in (self.haproxy, self.socklog) if c is not None
            },
            start_time=self.start_time,
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
        for stale in ("haproxy.sock", "master.sock", "log.sock", "haproxy.pid"):
            (run / stale).unlink(missing_ok=True)
        install(self.settings, self.current.text)

    def _install_signal_handlers(self) -> None:
        def enqueue(signum: int, _frame: object) -> None:
            self.inbox.put_nowait(signal.Signals(signum))  # reentrant-safe; nothing else here

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
            signal.signal(sig, enqueue)

    def _wait_until(self, what: str, ready: Callable[[], bool], child: Child) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if ready():
                return
            self._reap()
            if child.pid is None:
                raise EgressError(f"{child.name} exited during start-up; see its log above")
            time.sleep(0.02)
        raise EgressError(f"{what} did not appear within {STARTUP_TIMEOUT:.0f}s")

    def _start_socklog(self) -> None:
        assert self.socklog is not None
        self.settings.log_socket.unlink(missing_ok=True)
        self.socklog.spawn()

    def _socklog_ready(self) -> bool:
        return self.settings.log_socket.exists()

    def _haproxy_ready(self) -> bool:
        """haproxy answers on its stats socket: a worker runs the config, listeners bound."""
        try:
            info = haproxy.CliSocket(self.settings.stats_socket, timeout=1.0).command("show info")
        except EgressError:
            return False
        return "Pid:" in info

    def run(self) -> int:
        """Start everything, then serve events until stopped; returns the exit code."""
        self._prepare_run_dir()
        _become_subreaper()
        self._install_signal_handlers()
        self.metrics.start()
        log.info(
            "haproxy-egress %s starting: %d route(s), config %s, metrics on %s:%d",
            __version__,
            len(self.current.config.routes),
            self.current.text_digest[:12],
            self.settings.metrics_address,
            self.metrics.port,
        )
        try:
            if self.socklog is not None:
                self._start_socklog()
                self._wait_until("socklog socket", self._socklog_ready, self.socklog)
                self.socklog.state = ChildState.RUNNING
            self.haproxy.spawn()
            self._wait_until("haproxy stats socket", self._haproxy_ready, self.haproxy)
        except EgressError as exc:
            log.error("start-up failed: %s", exc)
            self._kill_all()
            self.metrics.stop()
            return int(ExitCode.HAPROXY)
        self._mark_running()
        self.watcher.start()
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
        finally:
            self.watcher.stop()
            self.metrics.stop()
        log.info("haproxy-egress exiting (code %d)", self.exit_code)
        return int(self.exit_code)

    def _mark_running(self) -> None:
        self.haproxy.state = ChildState.RUNNING
        self.state = State.RUNNING
        self.ready = True
        log.info(
            "ready: haproxy (pid:%s) serves %d route(s)",
            self.haproxy.pid,
            len(self.current.config.routes),
        )

    # --- the loop ------------------------------------------------------------------------

    def _tick_seconds(self) -> float:
        if self.state in (State.STOPPING, State.BACKOFF, State.STARTING):
            return 0.05
        return 1.0

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, ConfigChanged):
            self.handle_config_changed(event)
        elif isinstance(event, ReloadRequested):
            self.handle_reload(event.reason, force=True)
        elif event in (signal.SIGTERM, signal.SIGINT):
            self.handle_stop(event)
        elif event in (signal.SIGHUP, signal.SIGUSR2):
            self.handle_reload(f"{event.name} received", force=True)
        # SIGCHLD only wakes the loop; _reap() already ran.

    def handle_config_changed(self, event: ConfigChanged) -> None:
        """Watcher: the config directory has new content; reload if it compiles."""
        log.info("config directory changed (digest %s)", event.digest[:12])
        self.handle_reload("config directory changed", force=False)

    def handle_reload(self, reason: str, force: bool) -> None:
        """SIGHUP/SIGUSR2/watcher: run the reload transaction; failures keep the old config."""
        if self.state is State.STOPPING:
            return
        if self.state is not State.RUNNING:
            self.pending_reload = True  # haproxy is restarting; reload once it is back
            return
        started = time.monotonic()
        try:
            outcome = transaction(self.settings, self.options, self.current, force=force)
        except (EgressError, OSError) as exc:
            self.reloads_total += 1
            self.reload_failures_total += 1
            self.last_reload_successful = False
            if isinstance(exc, ConfigError):
                n = len(exc.problems)
                detail = f"{n} problem{'s' if n != 1 else ''}: " + "; ".join(map(str, exc.problems))
            else:
                detail = str(exc)
            log.error(
                "reload rejected (%s), still serving config %s: %s",
                reason,
                self.current.text_digest[:12],
                detail.replace("\n", " | "),
            )
            return
        if not outcome.changed:
            self.current = outcome.compiled  # same haproxy.cfg; remember the new digest
            # The inputs now agree with what runs (e.g. a vanished mount came back unchanged):
            # an earlier rejection no longer describes the router, so the alert must clear.
            self.last_reload_successful = True
            log.info("reload skipped (%s): nothing changed for haproxy", reason)
            return
        self.current = outcome.compiled
        self.reloads_total += 1
        self.last_reload_successful = True
        self.last_reload_success_timestamp = time.time()
        log.info(
            "reloaded (%s): config %s, %d route(s), new worker pid:%s in %.2fs",
            reason,
            self.current.text_digest[:12],
            len(self.current.config.routes),
            outcome.worker_pid,
            time.monotonic() - started,
        )

    def handle_stop(self, sig: signal.Signals) -> None:
        """SIGTERM/SIGINT: drain gracefully; a second one stops hard at once."""
        if self.state is State.STOPPING:
            log.warning("%s again: stopping hard now", sig.name)
            self._hard_stop()
            return
        self.state = State.STOPPING
        self.ready = False
        self.watcher.stop()
        self._stop_deadline = time.monotonic() + self.settings.drain_seconds
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
        self._kill_deadline = time.monotonic() + HARD_KILL_AFTER

    def _stop_socklog_soon(self) -> None:
        # A moment for the last datagrams in socklog's socket buffer to be written out.
        self._socklog_stop_at = time.monotonic() + 0.2

    def _tick(self) -> None:
        now = time.monotonic()
        if self.state is State.STOPPING:
            self._tick_stopping(now)
            return
        if self.haproxy.state is ChildState.BACKOFF and now >= self.haproxy.next_start:
            self.haproxy.restarts += 1
            self.haproxy.spawn()
            self.state = State.STARTING
        elif self.haproxy.state is ChildState.STARTING and self._haproxy_ready():
            self._mark_running()
            if self.pending_reload:
                self.pending_reload = False
                self.handle_reload("deferred while haproxy restarted", force=True)
        sl = self.socklog
        if sl is not None:
            if sl.state is ChildState.BACKOFF and now >= sl.next_start:
                sl.restarts += 1
                self._start_socklog()
            elif sl.state is ChildState.STARTING and self._socklog_ready():
                sl.state = ChildState.RUNNING
                log.info("socklog (pid:%s) is back; logs flow again", sl.pid)

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
        sl = self.socklog
        if sl is not None and sl.pid is not None:
            if sl.state is not ChildState.STOPPING:
                if self._socklog_stop_at is None:
                    self._stop_socklog_soon()
                elif now >= self._socklog_stop_at:
                    sl.state = ChildState.STOPPING
                    sl.signal(signal.SIGTERM)
            return
        self.state = State.EXITED

    def _kill_all(self) -> None:
        for child in (self.haproxy, self.socklog):
            if child is not None:
                child.signal(signal.SIGKILL)
        # haproxy's workers are the master's children; if the master is gone they are ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pid_file = self.settings.run_dir / "haproxy.pid"
            if pid_file.exists():
                for line in pid_file.read_text().split():
                    if line.isdigit():
                        os.kill(int(line), signal.SIGKILL)

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
            now = time.monotonic()
            for child in (self.haproxy, self.socklog):
                if child is not None and child.pid == pid:
                    self._child_exited(child, status, now)
                    break
            else:
                log.debug("reaped orphan pid:%d (%s)", pid, describe_exit(status))

    def _child_exited(self, child: Child, status: int, now: float) -> None:
        expected = self.state is State.STOPPING
        text = child.exited(status, now, expected)
        (log.info if expected else log.error)("%s", text)
        if expected:
            return
        if child is self.haproxy:
            self.ready = False
            self.state = State.BACKOFF
        if child.backoff.exhausted():
            log.error(
                "%s failed %d times within %.0fs: giving up so the kubelet restarts the pod",
                child.name,
                len(child.backoff.failures),
                child.backoff.window,
            )
            self.state = State.STOPPING
            self.ready = False
            self._hard_stop()
            self.exit_code = ExitCode.CRASHLOOP


def _become_subreaper() -> None:
    """Adopt orphaned grandchildren even when not PID 1 (tests, `docker run --init`)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


__all__ = ["ReloadFailed", "ReloadRequested", "State", "Supervisor"]
