"""The full `haproxy -c` of a config applied through the runtime API, run once the edit is in
effect instead of before it.

A runtime edit is validated by the compiler, then by haproxy as it applies it (`add server`
refuses a bad address, `prepare`/`add`/`commit` a bad pattern before the new version is in
use) and read back. What is left is the check of the whole file a later reload or restart
would load: at 10,000 routes that costs about as much as everything else together, so it
must not sit on the path the user waits on. The supervisor starts it as its own child right
after the edit and learns the verdict from its reaper (a thread with `subprocess.run` would
race PID 1's `waitpid(-1)` for the exit status and could read a refusal as success).

One check runs at a time; an edit made meanwhile waits for it and only the newest waits.
Every verdict names the digest of the text it checked, so one about a config that no longer
runs is ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass

from haproxy_egress.errors import HaproxyCheckError
from haproxy_egress.haproxy.check import check_argv, check_output
from haproxy_egress.render.pipeline import Compiled
from haproxy_egress.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["LateCheck", "Verdict"]

NICENESS = 10  # the check's nice value (raising it needs no privilege)


@dataclass(frozen=True)
class Verdict:
    """What `haproxy -c` said about the text with this digest."""

    config_digest: str  # sha256 of the haproxy.cfg text checked
    error: str  # haproxy's alerts; "" when it accepted the file
    seconds: float = 0.0  # how long haproxy took

    @property
    def ok(self) -> bool:
        return not self.error


class LateCheck:
    """At most one `haproxy -c` child of the supervisor, and the newest text waiting for it."""

    def __init__(self, run: RunDir, haproxy_bin: str) -> None:
        self.run = run
        self.haproxy_bin = haproxy_bin
        self.pid: int | None = None
        self._checking = ""  # digest of the text the running check reads
        self._started = 0.0
        # The config to check once the running check is done. Its text is read only then: it
        # is kept deflated meanwhile (render/packed.py).
        self._waiting: Compiled | None = None

    def request(self, compiled: Compiled) -> None:
        """Check `compiled`'s text (the live haproxy.cfg) as soon as no other check runs."""
        if self.pid is not None:
            self._waiting = compiled
            return
        self._spawn(compiled)

    def discard(self) -> None:
        """A reload checked its own candidate: what waits is no longer the live config."""
        self._waiting = None

    def owns(self, pid: int) -> bool:
        return pid == self.pid

    def exited(self, status: int) -> Verdict:
        """The reaper collected the check: its verdict; starts the waiting check, if any."""
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        try:
            output = self.run.late_check_output.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            output = f"(its output is unreadable: {exc})"
        # The copy is as big as the live file, and a run dir in memory counts against the pod.
        self.run.late_check.unlink(missing_ok=True)
        self.run.late_check_output.unlink(missing_ok=True)
        took = time.monotonic() - self._started
        try:
            check_output(code, output)
            verdict = Verdict(self._checking, "", took)
        except HaproxyCheckError as exc:
            verdict = Verdict(self._checking, str(exc) or f"haproxy -c exited with {code}", took)
        if self._waiting is not None:
            waiting, self._waiting = self._waiting, None
            self._spawn(waiting)
        return verdict

    def stop(self) -> None:
        """Stopping: the check no longer matters (the reaper collects it)."""
        self._waiting = None
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _spawn(self, compiled: Compiled) -> None:
        # Its own copy: the live file may be replaced by the next edit while haproxy reads.
        # Scratch, so not fsync'd like the live file: at 10,000 routes that is 5 MB the loop
        # would wait for on a busy disk.
        fd = os.open(self.run.late_check, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(compiled.packed.read())
        out = str(self.run.late_check_output)
        self._checking = compiled.config_digest
        self._started = time.monotonic()
        self.pid = os.posix_spawnp(
            self.haproxy_bin,
            check_argv(self.run.late_check, self.haproxy_bin),
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setpgroup=0,
        )
        # Behind the worker and the supervisor for the CPU: the check is what may wait, and
        # at 10,000 routes it would otherwise take a core from the next edit for a second.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self.pid, NICENESS)
        log.debug("late haproxy -c of config %s started (pid:%d)", self._checking[:12], self.pid)
