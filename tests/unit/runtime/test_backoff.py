"""Restart back-off and the supervisor's restart schedule on a fake clock: no process, no
sleep. A child is "started" at a chosen instant and "dies" at another."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from haproxy_egress.config.document import Config
from haproxy_egress.errors import ExitCode
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.render.pipeline import compiled_text
from haproxy_egress.runtime.assembly import assemble
from haproxy_egress.runtime.children import Backoff, ChildState
from haproxy_egress.runtime.supervisor import State, Supervisor
from haproxy_egress.settings import LogSink, Settings
from tests.routes import route_from
from tests.unit.runtime.fakes import FakeClock

KILLED = signal.SIGKILL.value  # a waitpid status: killed by SIGKILL


def test_a_first_crash_restarts_at_once_and_a_crash_loop_doubles() -> None:
    b = Backoff()
    assert b.failed(now=100.0, ran_for=50.0) == 0.0  # a first crash: no back-off
    assert b.failed(now=101.0, ran_for=1.0) == 0.5
    assert b.failed(now=102.0, ran_for=0.5) == 1.0
    assert b.failed(now=104.0, ran_for=1.0) == 2.0


def test_a_child_that_ran_stable_after_crashes_for_the_first_time_again() -> None:
    b = Backoff(stable_after=10.0)
    b.failed(100.0, 1.0)
    assert b.failed(101.0, 1.0) == 0.5
    assert b.failed(112.0, 10.0) == 0.0  # ran 10 s: the loop is over
    assert b.failures == [112.0]


def test_failures_outside_the_window_are_forgotten_and_too_many_inside_give_up() -> None:
    b = Backoff(window=60.0, max_failures=3)
    b.failed(0.0, 1.0)
    b.failed(1.0, 1.0)
    assert not b.exhausted()
    assert b.failed(70.0, 1.0) == 0.0  # both earlier ones left the window
    b.failed(71.0, 1.0)
    b.failed(72.0, 1.0)
    assert b.exhausted()


def test_the_delay_is_capped() -> None:
    b = Backoff(cap=2.0, max_failures=100)
    delays = [b.failed(float(t), 0.1) for t in range(8)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def _supervisor(tmp_path: Path, clock: FakeClock, stable_after: float = 10.0) -> Supervisor:
    config = Settings(
        config_dir=tmp_path / "config",
        run_dir=tmp_path / "run",
        log_sink=LogSink.STDOUT,
        metrics_port=0,
        restart_stable_seconds=stable_after,
    )
    route = route_from({"name": "a", "listen": 1, "destinations": ["192.0.2.1:1"]})
    compiled = compiled_text(Config(routes=(route,)), "# cfg\n", "digest")
    sup = assemble(config, RenderOptions(run_dir=config.run_dir), compiled, clock=clock)
    sup.state = State.RUNNING
    return sup


def _crash(sup: Supervisor, clock: FakeClock, ran_for: float) -> None:
    """haproxy started `ran_for` seconds ago and has just been reaped, killed."""
    child = sup.haproxy
    child.pid, child.state, child.started_at = 4242, ChildState.RUNNING, clock.now - ran_for
    sup._child_exited(child, KILLED, clock())


def test_the_supervisor_schedules_restarts_on_its_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    sup = _supervisor(tmp_path, clock)
    _crash(sup, clock, ran_for=60.0)
    assert sup.haproxy.restart_due(clock())  # a first crash: restarted in the same turn
    clock.now += 1.0
    _crash(sup, clock, ran_for=1.0)  # a second one within stable_after: 0.5 s back-off
    clock.now += 0.49
    assert not sup.haproxy.restart_due(clock())
    clock.now += 0.01
    assert sup.haproxy.restart_due(clock())


def test_restart_stable_seconds_zero_makes_every_crash_a_first_crash(tmp_path: Path) -> None:
    clock = FakeClock()
    sup = _supervisor(tmp_path, clock, stable_after=0.0)
    for _ in range(3):
        clock.now += 0.1
        _crash(sup, clock, ran_for=0.1)
        assert sup.haproxy.restart_due(clock())
    assert sup.state is State.RUNNING


def test_a_crash_loop_stops_the_supervisor_with_its_exit_code(tmp_path: Path) -> None:
    clock = FakeClock()
    sup = _supervisor(tmp_path, clock)
    for _ in range(sup.haproxy.backoff.max_failures):
        clock.now += 1.0
        _crash(sup, clock, ran_for=0.5)
    assert sup.state is State.STOPPING
    assert sup.exit_code is ExitCode.CRASHLOOP


@pytest.mark.parametrize("seconds", ["0", "2.5"])
def test_the_setting_reaches_every_child(tmp_path: Path, seconds: str) -> None:
    settings = Settings.from_env({"EGRESS_RESTART_STABLE_SECONDS": seconds})
    assert settings.restart_stable_seconds == float(seconds)
    sup = _supervisor(tmp_path, FakeClock(), stable_after=float(seconds))
    assert {c.backoff.stable_after for c in sup.children} == {float(seconds)}
