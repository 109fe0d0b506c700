"""The supervisor's loop driven through its inbox, with fake children and a fake clock.

Real haproxy and socklog runs are in tests/integration/test_supervisor.py; here each event is
pushed into the inbox the way a signal handler or the watcher posts it, and dispatched. No
process starts: the assembly's child factory makes FakeChilds, whose exits the test reports
as the reaper would.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from haproxy_egress.config.document import Config
from haproxy_egress.errors import ExitCode
from haproxy_egress.metrics.logs import LogLoss
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import compiled_text
from haproxy_egress.runtime.assembly import assemble
from haproxy_egress.runtime.children import ChildState
from haproxy_egress.runtime.supervisor import State, Supervisor
from haproxy_egress.runtime.watcher import ConfigChanged
from haproxy_egress.settings import LogSink, Settings
from tests.routes import route_from
from tests.unit.runtime.fakes import FakeChild, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def supervisor(tmp_path: Path, clock: FakeClock) -> Supervisor:
    settings = Settings(
        config_dir=tmp_path / "config",
        run_dir=tmp_path / "run",
        log_sink=LogSink.STDOUT,
        metrics_port=0,
        drain_seconds=30,
    )
    route = route_from({"name": "a", "listen": 1, "destinations": ["192.0.2.1:1"]})
    compiled = compiled_text(Config(routes=(route,)), "# cfg\n", "digest")
    sup = assemble(
        settings,
        RenderOptions(run_dir=settings.run_dir),
        compiled,
        clock=clock,
        child_factory=FakeChild,
    )
    sup.haproxy.spawn()
    sup.haproxy.state = ChildState.RUNNING
    sup.state = State.RUNNING
    sup._publish()  # as run() does once haproxy came up
    return sup


def haproxy(sup: Supervisor) -> FakeChild:
    assert isinstance(sup.haproxy, FakeChild)
    return sup.haproxy


def post(sup: Supervisor, event: signal.Signals | ConfigChanged) -> None:
    """What a signal handler or the watcher does, then one turn of the loop's dispatch, which
    ends with the loop publishing its status."""
    sup.inbox.put_nowait(event)
    sup._dispatch(sup.inbox.get_nowait())
    sup._publish()


def exits(sup: Supervisor, clock: FakeClock, sig: signal.Signals) -> None:
    """haproxy dies of `sig`, and the reaper reports it (a waitpid status is the signal) in a
    loop turn, which publishes the status."""
    sup._child_exited(sup.haproxy, sig.value, clock())
    sup._publish()


def test_the_child_factory_makes_every_child(supervisor: Supervisor) -> None:
    assert all(isinstance(child, FakeChild) for child in supervisor.children)
    assert supervisor.children == [supervisor.haproxy]  # LogSink.STDOUT: no log child


def test_every_signal_it_handles_has_a_documented_handler(supervisor: Supervisor) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
        handler = getattr(supervisor, f"handle_{sig.name.lower()}")
        assert handler.__doc__ is not None, sig
        assert handler.__doc__.startswith(sig.name), sig


def test_sigterm_drains_and_a_second_one_stops_hard(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    post(supervisor, signal.SIGTERM)
    assert supervisor.state is State.STOPPING
    assert supervisor.haproxy.state is ChildState.STOPPING
    assert not supervisor.status().ready
    draining = supervisor.exit_code
    post(supervisor, signal.SIGTERM)
    assert (draining, supervisor.exit_code) == (ExitCode.OK, ExitCode.FORCED_STOP)
    # haproxy's soft stop, then its hard stop: the order is the point.
    assert haproxy(supervisor).received == [signal.SIGUSR1, signal.SIGTERM]
    exits(supervisor, clock, signal.SIGTERM)
    assert supervisor.haproxy.pid is None
    assert haproxy(supervisor).state is ChildState.EXITED  # an expected exit: no restart


def test_a_restarted_haproxy_is_not_ready_before_it_comes_up(supervisor: Supervisor) -> None:
    assert supervisor.status().ready
    # Within one loop turn the dead haproxy is reaped and the next one started: its new pid
    # runs but has bound nothing, while the status published before the death says ready.
    child = haproxy(supervisor)
    child.state = ChildState.STARTING
    child.pid = 4242
    assert not supervisor.status().ready


def test_the_drain_deadline_is_kept_on_the_clock(supervisor: Supervisor, clock: FakeClock) -> None:
    post(supervisor, signal.SIGTERM)
    clock.now += 29.9
    supervisor._tick_stopping(clock())
    assert haproxy(supervisor).received == [signal.SIGUSR1]
    clock.now += 0.1
    supervisor._tick_stopping(clock())
    assert haproxy(supervisor).received == [signal.SIGUSR1, signal.SIGTERM]
    assert supervisor.exit_code is ExitCode.FORCED_STOP


def test_a_reload_while_haproxy_restarts_is_deferred(
    supervisor: Supervisor, clock: FakeClock
) -> None:
    exits(supervisor, clock, signal.SIGKILL)
    # A single crash is restarted at once, not after a back-off.
    assert supervisor.haproxy.state is ChildState.BACKOFF
    assert supervisor.haproxy.restart_due(clock())
    assert not supervisor.status().ready
    post(supervisor, signal.SIGHUP)
    assert supervisor.pending_reload
    post(supervisor, ConfigChanged("other"))
    assert supervisor.pending_reload
    assert supervisor.reloads_total == 0  # nothing ran against a haproxy that is not there


def test_events_while_stopping_are_ignored(supervisor: Supervisor) -> None:
    post(supervisor, signal.SIGTERM)
    post(supervisor, signal.SIGHUP)
    assert not supervisor.pending_reload
    assert supervisor.reloads_total == 0


def test_readers_see_the_published_status_with_log_loss_and_haproxys_death_at_once(
    supervisor: Supervisor,
) -> None:
    published = supervisor.status()
    assert published.ready
    # The loop's state moves in the middle of a turn: readers still see the last turn's.
    supervisor.reloads_total += 1
    assert supervisor.status().reloads_total == published.reloads_total
    # The log-loss watch's thread replaces its counters: they show at once.
    supervisor.log_loss._snapshot = LogLoss(haproxy_dropped=3)
    log = supervisor.status().log
    assert log is not None
    assert log.haproxy_dropped == 3
    # haproxy is killed while the loop is busy: not ready before the loop has reaped it.
    haproxy(supervisor).killed = True
    assert not supervisor.status().ready
    supervisor._publish()  # the end of the turn
    assert supervisor.status().reloads_total == published.reloads_total + 1
