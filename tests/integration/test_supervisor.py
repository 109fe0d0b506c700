"""`haproxy-egress run` as PID 1 of a pod: real haproxy, real socklog, real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from haproxy_egress.runtime.children import Child
from tests.router import Router
from tests.support import HttpOrigin, TcpOrigin, exit_code, free_port, http_get, wait_for


class SlowOrigin(TcpOrigin):
    """A TCP origin that sends `chunks` chunks of 1 KiB, one every `interval` seconds."""

    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks, self.interval = chunks, interval
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        for _ in range(self.chunks):
            if self.stopping():
                return
            conn.sendall(b"x" * 1024)
            time.sleep(self.interval)


def _read_all(port: int, timeout: float) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        total = 0
        while chunk := s.recv(65536):
            total += len(chunk)
        return total


@pytest.fixture
def router_factory(tmp_path: Path) -> Iterator[list[Router]]:
    routers: list[Router] = []
    yield routers
    for r in routers:
        r.stop()


def _seed_router(tmp_path: Path, dest_port: int, drain: float = 5.0, **env: str) -> Router:
    listen = free_port()
    return Router(
        tmp_path / "router",
        env={
            "SERVICE_NAME": "seed",
            "SERVICE_TCP_PORT": str(listen),
            "SERVICE_DEST": "127.0.0.1",
            "SERVICE_DEST_PORT": str(dest_port),
            **env,
        },
        drain_seconds=drain,
    )


def _listen_port(router: Router) -> int:
    return int(router.env["SERVICE_TCP_PORT"])


def test_seed_example_serves_logs_and_stops_cleanly(
    tmp_path: Path, origin: HttpOrigin, router_factory: list[Router]
) -> None:
    router = _seed_router(tmp_path, origin.port, EGRESS_LOG="socklog")
    router_factory.append(router.start())
    assert http_get(_listen_port(router)) == "origin-a"
    assert requests.get(router.url("/healthz"), timeout=2).status_code == 200
    assert requests.get(router.url("/readyz"), timeout=2).status_code == 200
    # The connection's log line travels haproxy → socklog → our stdout, one line per record.
    wait_for(lambda: "seed seed/127.0.0.1_" in router.stdout(), timeout=10)
    line = next(ln for ln in router.stdout().splitlines() if "seed seed/" in ln)
    assert line.startswith("local0.info: ")
    assert " haproxy[" in line
    assert "]: 127.0.0.1:" in line
    router.signal(signal.SIGTERM)
    assert router.wait(15) == 0
    assert "socklog exited" in router.stderr()


def test_stdout_log_sink_runs_without_socklog(
    tmp_path: Path, origin: HttpOrigin, router_factory: list[Router]
) -> None:
    router = _seed_router(tmp_path, origin.port, EGRESS_LOG="stdout", EGRESS_LOG_FORMAT="json")
    router_factory.append(router.start())
    assert http_get(_listen_port(router)) == "origin-a"
    wait_for(lambda: "seed seed/127.0.0.1_" in router.stdout(), timeout=10)
    assert "socklog" not in router.stderr()
    first = next(ln for ln in router.stderr().splitlines() if ln.startswith("{"))
    assert '"level":"info"' in first


def test_sigterm_lets_a_long_transfer_finish(tmp_path: Path, router_factory: list[Router]) -> None:
    slow = SlowOrigin(chunks=30, interval=0.1)  # 3 s transfer
    try:
        router = _seed_router(tmp_path, slow.port, drain=10)
        router_factory.append(router.start())
        result: dict[str, int] = {}
        t = threading.Thread(
            target=lambda: result.setdefault("n", _read_all(_listen_port(router), 15))
        )
        t.start()
        time.sleep(0.5)  # the transfer is under way
        router.signal(signal.SIGTERM)
        code = router.wait(15)
        t.join(5)
        assert result["n"] == 30 * 1024  # every byte arrived
        assert code == 0  # not FORCED_STOP: the drain ended when the transfer did
        # New connections are refused while draining, so the Service sends them elsewhere.
    finally:
        slow.stop()


def test_sigterm_hard_stops_a_never_ending_connection_at_the_deadline(
    tmp_path: Path, router_factory: list[Router]
) -> None:
    slow = SlowOrigin(chunks=10_000, interval=0.1)  # effectively endless
    try:
        router = _seed_router(tmp_path, slow.port, drain=2)
        router_factory.append(router.start())
        client = socket.create_connection(("127.0.0.1", _listen_port(router)), timeout=10)
        assert client.recv(1024)
        started = time.monotonic()
        router.signal(signal.SIGTERM)
        code = router.wait(15)
        elapsed = time.monotonic() - started
        client.close()
        assert elapsed >= 1.5  # it waited out the drain period before cutting
        assert code == 5  # ExitCode.FORCED_STOP: the drain deadline cut connections
        assert "drain period of 2s is over" in router.stderr()
    finally:
        slow.stop()


def test_second_sigterm_stops_at_once(tmp_path: Path, router_factory: list[Router]) -> None:
    slow = SlowOrigin(chunks=10_000, interval=0.1)
    try:
        router = _seed_router(tmp_path, slow.port, drain=30)
        router_factory.append(router.start())
        client = socket.create_connection(("127.0.0.1", _listen_port(router)), timeout=10)
        assert client.recv(1024)
        router.signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        router.signal(signal.SIGTERM)
        code = router.wait(10)
        client.close()
        assert time.monotonic() - started < 5
        assert code == 5
    finally:
        slow.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("victim", ["worker", "master"])
def test_haproxy_killed_is_restarted(
    tmp_path: Path, origin: HttpOrigin, router_factory: list[Router], victim: str
) -> None:
    router = _seed_router(tmp_path, origin.port)
    router_factory.append(router.start())
    old_master, old_worker = router.master_pid(), router.worker_pid()
    os.kill(old_worker if victim == "worker" else old_master, signal.SIGKILL)
    wait_for(
        lambda: router.metric("haproxy_egress_child_restarts_total", {"child": "haproxy"}) == 1.0,
        timeout=10,
    )
    # A worker orphaned by its master's death keeps serving until it notices, so an answer
    # alone proves nothing: wait until the old processes are gone and a new pair serves.
    wait_for(lambda: not _alive(old_worker) and not _alive(old_master), timeout=10)
    wait_for(lambda: router.master_pid() != old_master, timeout=15)
    # Service returns within a bounded time (backoff starts at 0.5 s).
    wait_for(lambda: http_get(_listen_port(router), timeout=1) == "origin-a", timeout=15)
    assert "haproxy exited (pid:" in router.stderr()
    # The worker's log lines still reach stdout after the restart.
    marker_before = router.stdout().count("seed seed/")
    http_get(_listen_port(router))
    wait_for(lambda: router.stdout().count("seed seed/") > marker_before, timeout=10)


def test_socklog_killed_is_restarted_and_logs_flow_again(
    tmp_path: Path, origin: HttpOrigin, router_factory: list[Router]
) -> None:
    router = _seed_router(tmp_path, origin.port, EGRESS_LOG="socklog")
    router_factory.append(router.start())
    socklog_pid = int(
        next(ln for ln in router.stderr().splitlines() if "socklog started (pid:" in ln)
        .split("pid:")[1]
        .split(")")[0]
    )
    os.kill(socklog_pid, signal.SIGKILL)
    wait_for(lambda: "socklog (pid:" in router.stderr() and "is back" in router.stderr(), 10)
    before = router.stdout().count("seed seed/")
    http_get(_listen_port(router))
    wait_for(lambda: router.stdout().count("seed seed/") > before, timeout=10)
    assert router.metric("haproxy_egress_child_restarts_total", {"child": "socklog"}) == 1.0


def test_orphaned_grandchild_is_reaped(
    tmp_path: Path, origin: HttpOrigin, router_factory: list[Router]
) -> None:
    # socklog started through a wrapper that leaves an orphan behind (double fork), as
    # misbehaving helpers in containers do; the supervisor must reap it.
    marker = tmp_path / "orphan.pid"
    wrapper = tmp_path / "socklog-wrapper"
    wrapper.write_text(f'#!/bin/sh\n( sleep 0.5 & echo $! > {marker} ) \nexec socklog "$@"\n')
    wrapper.chmod(0o755)
    router = _seed_router(
        tmp_path, origin.port, EGRESS_LOG="socklog", EGRESS_SOCKLOG_BIN=str(wrapper)
    )
    router_factory.append(router.start())
    orphan = int(wait_for(lambda: marker.read_text().strip(), timeout=5))
    assert router.proc is not None
    supervisor = router.proc.pid

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{orphan}/stat").read_text()
        except FileNotFoundError:
            return True  # reaped
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        assert ppid in (supervisor, 1) or state != "Z"
        return False

    wait_for(gone, timeout=10)


def test_bad_initial_config_exits_with_every_problem(tmp_path: Path) -> None:
    router = Router(
        tmp_path / "router",
        env={"SERVICE_TCP_PORT": "70000", "SERVICE_DEST": "bad..name"},
    )
    code = exit_code(router, 20)
    assert code == 2
    err = router.stderr()
    assert "SERVICE_TCP_PORT: port 70000 out of range 1..65535" in err
    assert "SERVICE_DEST: item 1: not a valid host name" in err
    assert "Traceback" not in err


def test_a_killed_child_is_not_running_before_it_is_reaped() -> None:
    """/readyz reads Child.running(): haproxy killed but not yet reaped (a zombie) must not
    count as serving, or readiness outlives the listeners."""
    child = Child("sleeper", ["sleep", "30"])
    pid = child.spawn()
    try:
        assert child.running()
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 5
        )
        assert not child.running()  # still a zombie: nobody has called waitpid yet
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    child.pid = None
    assert not child.running()
