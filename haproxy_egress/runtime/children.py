"""Supervised child processes (haproxy master, socklog): spawn, describe exits, back off."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Seconds from an arbitrary start (time.monotonic): handed in, so that start times, restart
# schedules and deadlines can be driven by a fake clock in unit tests.
Clock = Callable[[], float]


class ChildState(enum.Enum):
    """Where a supervised child is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"  # died; waiting before the next start
    STOPPING = "stopping"
    EXITED = "exited"


def proc_stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, ...] (the name may hold
    spaces and parentheses, so the fields start after its last ')'). OSError if unreadable."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_of(pid: int, parent: int | None) -> bool:
    """`pid` is a live child of `parent` (False once either is gone)."""
    if parent is None:
        return False
    try:
        fields = proc_stat(pid)
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and int(fields[1]) == parent


def describe_exit(status: int) -> str:
    """A waitpid status in words: 'exit status 1', 'killed by SIGKILL, perhaps out of memory?'."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = ", perhaps out of memory?" if sig == signal.SIGKILL else ""
        core = " (core dumped)" if os.WCOREDUMP(status) else ""
        return f"killed by {name}{core}{hint}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


@dataclass
class Backoff:
    """Restart delays: the first crash restarts at once, repeated ones back off exponentially
    (capped); too many failures in a window means give up."""

    initial: float = 0.5
    cap: float = 30.0
    window: float = 60.0
    max_failures: int = 6
    stable_after: float = 10.0  # a child that ran this long resets the delay
    failures: list[float] = field(default_factory=list)
    delay: float = 0.0

    def failed(self, now: float, ran_for: float) -> float:
        """Record a failure; return the delay before the next start."""
        if ran_for >= self.stable_after:
            self.failures = []
        self.failures = [t for t in self.failures if now - t < self.window] + [now]
        # A single crash (an OOM kill, a bug hit once) is served again at once: every second
        # of back-off is a second of outage. Only a crash loop waits, 0.5 s doubling.
        repeated = len(self.failures) - 1
        self.delay = 0.0 if repeated == 0 else min(self.cap, self.initial * 2 ** (repeated - 1))
        return self.delay

    def exhausted(self) -> bool:
        """Too many failures in the window: let the kubelet's restart policy take over."""
        return len(self.failures) >= self.max_failures


def _always() -> bool:
    return True


@dataclass
class Child:
    """One supervised process and all of its state: its life stage, its readiness probe and
    when it is due to restart. The supervisor reaps it; this object never calls wait()."""

    name: str
    argv: Sequence[str]
    # Ready to serve (socklog's socket exists, haproxy answers on its stats socket).
    probe: Callable[[], bool] = _always
    # Run just before each start (e.g. remove a stale socket the probe would mistake).
    before_start: Callable[[], None] | None = None
    # Where the child's stdout goes instead of the pod log (haproxy's into the log relay FIFO).
    stdout: Path | None = None
    # A pipe's write end the child's stderr is dup'ed to (haproxy's, read by haproxylog.py).
    stderr: int | None = None
    state: ChildState = ChildState.EXITED
    pid: int | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    clock: Clock = time.monotonic

    def ready(self) -> bool:
        """RUNNING and alive: what it served may be claimed (a zombie serves nothing)."""
        return self.state is ChildState.RUNNING and self.running()

    def restart_due(self, now: float) -> bool:
        """Dead and its back-off delay is over."""
        return self.state is ChildState.BACKOFF and now >= self.next_start

    def came_up(self) -> bool:
        """STARTING and the probe now passes: mark it RUNNING; True once, at that moment."""
        if self.state is ChildState.STARTING and self.probe():
            self.state = ChildState.RUNNING
            return True
        return False

    def spawn(self) -> int:
        """Start the process; the caller marks it RUNNING once it is ready.

        posix_spawn rather than subprocess.Popen: the supervisor reaps every child with its
        own waitpid(-1) loop (it is PID 1), and a Popen object would race it for the status.
        stdout and stderr are inherited (they are the pod log) unless `stdout` names a file.
        """
        if self.before_start is not None:
            self.before_start()
        actions: list[tuple[int, int, str, int, int]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)
        ]
        if self.stdout is not None:
            actions.append((os.POSIX_SPAWN_OPEN, 1, str(self.stdout), os.O_WRONLY, 0))
        if self.stderr is not None:
            actions.append((os.POSIX_SPAWN_DUP2, self.stderr, 2))  # type: ignore[arg-type]
        self.pid = os.posix_spawnp(
            self.argv[0],
            list(self.argv),
            os.environ,
            file_actions=actions,
            # Own process group: a Ctrl-C in a terminal reaches only the supervisor, which
            # then stops the children in order.
            setpgroup=0,
        )
        self.started_at = self.clock()
        self.state = ChildState.STARTING
        log.info("%s started (pid:%d)", self.name, self.pid)
        return self.pid

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal if the child is alive; a vanished pid is not an error."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def running(self) -> bool:
        """The process exists and has not died: a killed child is a zombie until the
        supervisor's loop reaps it, and in that window nothing it served may be claimed."""
        pid = self.pid
        if pid is None:
            return False
        try:
            fields = proc_stat(pid)
        except FileNotFoundError:
            return False
        except OSError:  # no /proc: the signal probe says at least whether it exists
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True
        return fields[0] not in ("Z", "X")

    def exited(self, status: int, now: float, expected: bool) -> str:
        """Record the child's exit; returns the log text; schedules a restart if unexpected."""
        text = f"{self.name} exited (pid:{self.pid}, {describe_exit(status)})"
        ran_for = now - self.started_at
        self.pid = None
        if expected:
            self.state = ChildState.EXITED
            return text
        delay = self.backoff.failed(now, ran_for)
        self.state = ChildState.BACKOFF
        self.next_start = now + delay
        return f"{text}; restarting in {delay:.1f}s"
