"""The supervisor's loop driven through its inbox, with stub children (signal order only).

Real haproxy and socklog runs are in tests/integration/test_supervisor.py; here each event is
pushed into the inbox the way a signal handler or the watcher posts it, and dispatched.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_egress.config.model import Config, Route
from haproxy_egress.errors import ExitCode
from haproxy_egress.render.compiler import RenderOptions
from haproxy_egress.runtime.children import ChildState
from haproxy_egress.runtime.reload import Compiled
from haproxy_egress.runtime.supervisor import State, Supervisor
from haproxy_egress.runtime.watcher import ConfigChanged
from haproxy_egress.settings import LogSink, Settings


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    settings = Settings(
        config_dir=tmp_path / "config",
        run_dir=tmp_path / "run",
        log_sink=LogSink.STDOUT,
        metrics_port=0,
        drain_seconds=30,
    )
    route = Route.model_validate({"name": "a", "listen": 1, "destinations": ["192.0.2.1:1"]})
    compiled = Compiled(Config(routes=(route,)), "# cfg\n", "digest")
    sup = Supervisor(settings, RenderOptions(run_dir=settings.run_dir), compiled)
    # A stub stands in for haproxy: it only has to receive signals in the right order.
    sup.haproxy.argv = ["sleep", "60"]
    sup.haproxy.spawn()
    sup.haproxy.state = ChildState.RUNNING
    sup.state = State.RUNNING
    yield sup
    sup.haproxy.signal(signal.SIGKILL)
    sup._reap()


def post(sup: Supervisor, event: signal.Signals | ConfigChanged) -> None:
    """What a signal handler or the watcher does, then one turn of the loop's dispatch."""
    sup.inbox.put_nowait(event)
    sup._dispatch(sup.inbox.get_nowait())


def wait_exit(sup: Supervisor, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sup.haproxy.pid is not None and time.monotonic() < deadline:
        sup._reap()
        time.sleep(0.01)


def test_every_signal_it_handles_has_a_documented_handler(supervisor: Supervisor) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGCHLD):
        handler = getattr(supervisor, f"handle_{sig.name.lower()}")
        assert handler.__doc__ is not None, sig
        assert handler.__doc__.startswith(sig.name), sig


def test_sigterm_drains_and_a_second_one_stops_hard(supervisor: Supervisor) -> None:
    post(supervisor, signal.SIGTERM)
    assert supervisor.state is State.STOPPING
    assert supervisor.haproxy.state is ChildState.STOPPING
    assert not supervisor.status().ready
    draining = supervisor.exit_code
    post(supervisor, signal.SIGTERM)
    assert (draining, supervisor.exit_code) == (ExitCode.OK, ExitCode.FORCED_STOP)
    wait_exit(supervisor)  # `sleep` dies of the SIGUSR1 already; the point is the order
    assert supervisor.haproxy.pid is None


def test_a_reload_while_haproxy_restarts_is_deferred(supervisor: Supervisor) -> None:
    supervisor.haproxy.signal(signal.SIGKILL)
    wait_exit(supervisor)
    # A single crash is restarted at once, not after a back-off.
    assert supervisor.haproxy.state is ChildState.BACKOFF
    assert supervisor.haproxy.restart_due(time.monotonic())
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
