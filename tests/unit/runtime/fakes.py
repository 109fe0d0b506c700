"""Test doubles for driving the supervisor without time passing or processes starting."""

from __future__ import annotations

import itertools
import signal
from dataclasses import dataclass, field

from haproxy_egress.runtime.children import Child, ChildState

# Far above any pid_max, so a fake pid never names a real process.
_PIDS = itertools.count(10_000_000)


class FakeClock:
    """time.monotonic, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeChild(Child):
    """A Child without a process, for the supervisor's `child_factory`: `spawn` takes a made-up
    pid and starts nothing, `signal` records the signal; a test reports the exit it wants with
    the supervisor's `_child_exited`, as its reaper would."""

    received: list[signal.Signals] = field(default_factory=list)
    killed: bool = False  # dead but not yet reaped (a zombie): a test sets it

    def spawn(self) -> int:
        """Marks it STARTING under a new pid, as the real spawn does."""
        self.pid = next(_PIDS)
        self.started_at = self.clock()
        self.state = ChildState.STARTING
        return self.pid

    def signal(self, sig: signal.Signals) -> None:
        """Recorded while the child lives (a real one ignores nothing, but needs a pid)."""
        if self.pid is not None:
            self.received.append(sig)

    def running(self) -> bool:
        """Alive until it is killed or its exit is reported."""
        return self.pid is not None and not self.killed
