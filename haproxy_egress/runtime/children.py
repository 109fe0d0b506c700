"""Supervised child processes (haproxy master, socklog): spawn, describe exits, back off."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class ChildState(enum.Enum):
    """Where a supervised child is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"  # died; waiting before the next start
    STOPPING = "stopping"
    EXITED = "exited"


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
    """Exponential restart delay, capped; too many failures in a window means give up."""

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
            self.delay = 0.0
        self.failures = [t for t in self.failures if now - t < self.window] + [now]
        self.delay = self.initial if self.delay == 0 else min(self.cap, self.delay * 2)
        return self.delay

    def exhausted(self) -> bool:
        """Too many failures in the window: let the kubelet's restart policy take over."""
        return len(self.failures) >= self.max_failures


@dataclass
class Child:
    """One supervised process. The supervisor reaps it; this object never calls wait()."""

    name: str
    argv: Sequence[str]
    state: ChildState = ChildState.EXITED
    pid: int | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    restarts: int = 0
    backoff: Backoff = field(default_factory=Backoff)

    def spawn(self) -> int:
        """Start the process; the caller marks it RUNNING once it is ready.

        posix_spawn rather than subprocess.Popen: the supervisor reaps every child with its
        own waitpid(-1) loop (it is PID 1), and a Popen object would race it for the status.
        stdout and stderr are inherited: they are the pod log.
        """
        self.pid = os.posix_spawnp(
            self.argv[0],
            list(self.argv),
            os.environ,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)],
            # Own process group: a Ctrl-C in a terminal reaches only the supervisor, which
            # then stops the children in order.
            setpgroup=0,
        )
        self.started_at = time.monotonic()
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
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        except OSError:  # no /proc: the signal probe says at least whether it exists
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            return True
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

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
