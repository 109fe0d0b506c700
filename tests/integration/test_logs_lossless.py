"""The default log path at full load: every connection through the router has its line on
stdout, whole; every line that is not there is counted (real haproxy, real relay, wrk)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.runtime.logrelay import read_counters
from tests.figures import record
from tests.logload import FastOrigin, wrk_close
from tests.router import Router
from tests.support import free_port, wait_for, write_configmap

# A tcplog line of the route: `127.0.0.1:41000 [02/Dec/2026:00:00:00.000] edge edge/o ...`
STDERR_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\dT[\d:.]+Z haproxy-egress [A-Z]+: |\d{4}-\d\d-\d\d [\d:,]+ log-relay "
    r"|\[(NOTICE|WARNING|ALERT)\] +\(\d+\) : )"
)
TCPLOG = re.compile(r"^127\.0\.0\.1:\d+ \[[^\]]+\] edge edge/\S+ \S+ \d+ \S+ \S+ \S+$")


@pytest.fixture
def origin() -> Iterator[FastOrigin]:
    o = FastOrigin().start()
    yield o
    o.stop()


def _route(port: int, origin: FastOrigin, **extra: Any) -> dict[str, Any]:
    return {
        "name": "edge",
        "listen": f"127.0.0.1:{port}",
        "mode": "tcp",
        "destinations": [f"127.0.0.1:{origin.port}"],
        "check": False,
        **extra,
    }


def _router(tmp_path: Path, routes: list[dict[str, Any]], **env: str) -> Router:
    config_dir = tmp_path / "configmap"
    write_configmap(config_dir, {"routes.yaml": {"routes": routes}})
    return Router(tmp_path / "router", env=env, config_dir=config_dir, drain_seconds=3)


def _started(tmp_path: Path, origin: FastOrigin, routers: list[Router]) -> tuple[Router, int]:
    """A router with the one edge route on a free port, started and torn down by `routers`."""
    port = free_port()
    router = _router(tmp_path, [_route(port, origin)])
    routers.append(router.start())
    assert router.config_dir is not None
    return router, port


def _side_route(origin: FastOrigin) -> dict[str, Any]:
    """A second route on a port of its own: adding or removing it is a structural change,
    so haproxy really reloads (an edit of the edge route would be applied at runtime)."""
    return _route(free_port(), origin, name="side")


def _publish(router: Router, routes: list[dict[str, Any]]) -> None:
    """Replace routes.yaml in one rename, as the kubelet swaps a ConfigMap: the watcher never
    reads half a file."""
    assert router.config_dir is not None
    tmp = router.config_dir / ".routes.yaml.tmp"
    tmp.write_text(yaml.safe_dump({"routes": routes}, sort_keys=False))
    tmp.replace(router.config_dir / "routes.yaml")


def _frontend_sessions(router: Router, name: str = "edge") -> int:
    """The current worker's cumulated sessions of a frontend (`show stat` stot), once no
    session of it is open any more (the load's last connections have been logged)."""
    found: list[int] = []

    def idle() -> bool:
        stat = CliSocket(router.run_dir / "haproxy.sock").command("show stat")
        for row in stat.splitlines():
            cells = row.split(",")
            if len(cells) > 7 and cells[0] == name and cells[1] == "FRONTEND":
                found[:] = [int(cells[7])]
                return cells[4] == "0"
        raise AssertionError(f"no frontend {name} in show stat")

    wait_for(idle, 15)
    return found[0]


def _route_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if " edge edge/" in ln or '"route":"edge"' in ln]


def _settled(router: Router, expected: int, timeout: float = 20.0) -> list[str]:
    """The route's lines once `expected` of them arrived (or the timeout passed)."""
    lines: list[str] = []

    def arrived() -> bool:
        lines[:] = _route_lines(router.stdout())
        return len(lines) >= expected

    with contextlib.suppress(AssertionError):  # fewer arrived: the caller's assert says so
        wait_for(arrived, timeout)
    time.sleep(0.5)  # and no more than that: a duplicate would show up now
    return _route_lines(router.stdout())


def _dropped(router: Router, stage: str) -> float:
    value = 0.0
    for reason in ("sink_full", "killed", "stdout_closed"):
        value += (
            router.metric("haproxy_egress_log_dropped_total", {"stage": stage, "reason": reason})
            or 0.0
        )
    return value


def _check_lines(lines: list[str], audit: bool) -> None:
    """Every line whole: a tcplog line of the route, or one complete audit JSON object."""
    for line in lines:
        if audit:
            doc = json.loads(line)  # a cut or merged line fails here
            assert doc["type"] == "egress-audit", line
            assert doc["route"] == "edge", line
        else:
            assert TCPLOG.match(line), line


# --- full load -------------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("audit", [False, True], ids=["tcplog", "audit"])
def test_full_load_every_connection_has_its_line(
    tmp_path: Path, origin: FastOrigin, routers: list[Router], audit: bool
) -> None:
    """The issue's run: wrk -t1 -c32 -d5s, a new connection per request, default sink."""
    port = free_port()
    extra: dict[str, Any] = {"hooks": ["audit"]} if audit else {}
    router = _router(tmp_path, [_route(port, origin, **extra)])
    routers.append(router.start())
    result = wrk_close(port, seconds=5)
    sessions = _frontend_sessions(router)
    assert sessions >= result.requests > 1000, result
    lines = _settled(router, sessions)
    _check_lines(lines, audit)
    wait_for(lambda: router.metric("haproxy_egress_log_lines_total") is not None, 10)
    assert len(lines) == sessions, (len(lines), sessions, result)
    # stdout carries haproxy's lines and nothing else; stderr's lines are each whole: the
    # supervisor's, the relay's or haproxy's own notices, never two of them run together.
    assert len(router.stdout().splitlines()) == sessions
    for line in router.stderr().splitlines():
        assert STDERR_LINE.match(line), line
    assert _dropped(router, "haproxy") == 0.0
    assert _dropped(router, "relay") == 0.0
    assert "log line(s) lost" not in router.stderr()
    kind = "audit" if audit else "tcplog"
    record(f"logs: full load ({kind})", connections=sessions, lines=len(lines), lost=0)


@pytest.mark.timeout(120)
def test_burst_of_thousands_of_connections_in_a_second(
    tmp_path: Path, origin: FastOrigin, routers: list[Router]
) -> None:
    """Many clients at once for one second, then quiet: the burst is absorbed, not dropped."""
    router, port = _started(tmp_path, origin, routers)
    # 256 clients for one second; on a starved machine one burst may carry fewer than a
    # thousand connections: then another (at most three), all of them counted below.
    results = []
    for _ in range(3):
        results.append(wrk_close(port, seconds=1, connections=256))
        sessions = _frontend_sessions(router)
        if sessions >= 1000:
            break
    assert sessions >= 1000, results
    result = results[-1]
    lines = _settled(router, sessions)
    _check_lines(lines, audit=False)
    assert len(lines) == sessions
    assert _dropped(router, "haproxy") == 0.0
    record("logs: burst", connections=sessions, seconds=result.seconds, lines=len(lines), lost=0)


# --- reloads -----------------------------------------------------------------------------------


class Clients:
    """Threads opening one connection per request through the route; counts what succeeded."""

    def __init__(self, port: int, threads: int, deadline: float) -> None:
        self.port = port
        self.deadline = deadline
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def _run(self) -> None:
        request = b"GET / HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n"
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(request)
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                ok = data.startswith(b"HTTP/1.1 200")
            except OSError as exc:
                ok, data = False, str(exc).encode()
            with self._lock:
                if ok:
                    self.ok += 1
                else:
                    self.failed.append(data[:80].decode(errors="replace"))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


@pytest.mark.timeout(400)
def test_no_line_lost_across_100_reloads_under_load(
    tmp_path: Path, origin: FastOrigin, routers: list[Router]
) -> None:
    """Old workers keep writing into the relay's FIFO until they exit: a reload loses no line."""
    router, port = _started(tmp_path, origin, routers)
    side = _side_route(origin)
    clients = Clients(port, threads=8, deadline=time.monotonic() + 300).start()
    reloads = 100
    try:
        for n in range(1, reloads + 1):
            _publish(router, [_route(port, origin), side] if n % 2 else [_route(port, origin)])

            def reloaded(n: int = n) -> bool:
                return router.metric("haproxy_egress_reloads_total") == n

            wait_for(reloaded, 30)
    finally:
        clients.stop()
    assert router.metric("haproxy_egress_reload_failures_total") == 0.0
    assert not clients.failed, clients.failed[:5]
    assert clients.ok > 1000
    lines = _settled(router, clients.ok, timeout=30)
    _check_lines(lines, audit=False)
    assert len(lines) == clients.ok
    assert _dropped(router, "haproxy") == 0.0
    assert _dropped(router, "relay") == 0.0
    record("logs: 100 reloads under load", reloads=reloads, connections=clients.ok, lost=0)


@pytest.mark.timeout(120)
def test_a_connection_held_across_a_reload_is_logged_by_its_old_worker(
    tmp_path: Path, origin: FastOrigin, routers: list[Router]
) -> None:
    """The case a haproxy ring loses: the old worker logs the connection after the reload."""
    router, port = _started(tmp_path, origin, routers)
    held = socket.create_connection(("127.0.0.1", port), timeout=5)
    held.sendall(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")  # keep-alive: the connection stays
    assert held.recv(4096).startswith(b"HTTP/1.1 200")
    old = router.worker_pid()
    _publish(router, [_route(port, origin), _side_route(origin)])
    wait_for(lambda: router.metric("haproxy_egress_reloads_total") == 1.0, 30)
    # The loss counters are polled every 2 s in their own thread: wait for a poll that saw
    # the reload (the worker counted as old), not one from before it.
    old_worker = {"pid": str(old), "role": "old"}
    wait_for(lambda: router.metric("haproxy_egress_log_worker_dropped", old_worker) == 0.0, 10)
    before = len(_route_lines(router.stdout()))
    held.close()  # the old worker logs it now, and then exits
    lines = _settled(router, before + 1)
    assert len(lines) == before + 1
    assert TCPLOG.match(lines[-1]), lines[-1]


# --- the relay killed ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_kill9_of_the_relay_loses_at_most_what_was_in_flight_and_counts_it(
    tmp_path: Path, origin: FastOrigin, routers: list[Router]
) -> None:
    router, port = _started(tmp_path, origin, routers)
    state = router.run_dir / "log-relay.state"
    clients = Clients(port, threads=8, deadline=time.monotonic() + 60).start()
    try:
        time.sleep(1.5)
        for _ in range(3):
            counters = read_counters(state)
            assert counters is not None
            os.kill(counters.pid, signal.SIGKILL)
            killed = counters.pid

            def relay_restarted(k: int = killed) -> bool:
                now = read_counters(state)
                return now is not None and now.pid != k

            wait_for(relay_restarted, 30)
            time.sleep(1.0)
    finally:
        clients.stop()
    assert not clients.failed, clients.failed[:5]
    lines = _settled(router, clients.ok)
    _check_lines(lines, audit=False)  # the line a killed relay held half is skipped, not cut

    # While a relay restarts the FIFO fills; on a loaded machine it can fill up, and haproxy
    # then drops and counts (stage haproxy). Every missing line is counted at one stage or
    # the other; none is doubled. (A relay killed between writing a batch and counting it has
    # that batch counted as lost too: an over-count, never a gap.)
    def counted() -> float:
        return _dropped(router, "relay") + _dropped(router, "haproxy")

    wait_for(lambda: counted() + len(_route_lines(router.stdout())) >= clients.ok, 30)
    lost = _dropped(router, "relay")
    assert len(lines) <= clients.ok <= len(lines) + counted(), (len(lines), counted(), clients.ok)
    assert lost <= 3 * 2000, lost  # at most what each relay held (one read of 64 KiB each)
    assert router.metric("haproxy_egress_child_restarts_total", {"child": "log-relay"}) == 3.0
    record("logs: relay kill -9 x3", connections=clients.ok, lines=len(lines), counted_lost=lost)


# --- a slow stdout -------------------------------------------------------------------------------


SLOW_READER = r"""
import os, sys, time
rate, out = int(sys.argv[1]), open(sys.argv[2], "wb")
while True:
    data = os.read(0, 4096)
    if not data:
        break
    out.write(data); out.flush()
    time.sleep(len(data) / rate)
"""


@pytest.mark.timeout(180)
def test_slow_stdout_reader_fills_the_buffers_then_haproxy_counts_every_drop(
    tmp_path: Path, origin: FastOrigin, routers: list[Router]
) -> None:
    """The container runtime reads our stdout at 100 kB/s: the relay buffers, then the FIFO
    fills, then haproxy drops and counts. Lines on stdout + counted drops = connections."""
    port = free_port()
    router = _router(
        tmp_path,
        [_route(port, origin)],
        EGRESS_LOG_BUFFER_BYTES=str(1 << 16),
        EGRESS_LOG_PIPE_BYTES=str(1 << 16),
        EGRESS_LOG_WARN_SECONDS="5",
    )
    out_path = tmp_path / "slow-stdout.log"
    reader = subprocess.Popen(
        [sys.executable, "-c", SLOW_READER, "100000", str(out_path)], stdin=subprocess.PIPE
    )
    try:
        assert reader.stdin is not None
        router.start(stdout=reader.stdin)
        result = wrk_close(port, seconds=3)
        sessions = _frontend_sessions(router)
        assert sessions >= result.requests
        wait_for(
            lambda: (
                (
                    router.metric(
                        "haproxy_egress_log_dropped_total",
                        {"stage": "haproxy", "reason": "sink_full"},
                    )
                    or 0
                )
                > 0
            ),
            20,
        )

        def accounted() -> bool:
            lines = _route_lines(out_path.read_text(errors="replace"))
            return len(lines) + _dropped(router, "haproxy") >= sessions

        wait_for(accounted, 60)
        lines = _route_lines(out_path.read_text(errors="replace"))
        _check_lines(lines, audit=False)
        dropped = _dropped(router, "haproxy")
        assert len(lines) + dropped == sessions, (len(lines), dropped, sessions)
        assert dropped > 0
        wait_for(lambda: "log line(s) lost" in router.stderr(), 15)
        warnings = [ln for ln in router.stderr().splitlines() if "log line(s) lost" in ln]
        assert len(warnings) <= 4, warnings  # rate-limited: one per 5 s at most
        record("logs: slow stdout", connections=sessions, lines=len(lines), dropped=dropped)
    finally:
        router.stop()
        if reader.stdin is not None:
            reader.stdin.close()
        reader.kill()
        reader.wait(10)


# --- long lines ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_longest_audit_lines_arrive_whole_under_concurrency(
    tmp_path: Path, origin: FastOrigin, routers: list[Router]
) -> None:
    """Audit lines of an http route with the longest Host the format keeps (200 bytes, each
    escaped to 2), from 8 clients at once beside short ones: every line arrives alone, parses
    as one JSON object, none cut, none merged. The formats cut every client text, so no line
    reaches PIPE_BUF (4 KiB), below which a pipe write is never torn."""
    port = free_port()
    route = {**_route(port, origin), "mode": "http", "hooks": ["audit"]}
    router = _router(tmp_path, [route])
    routers.append(router.start())
    sent: list[str] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        for i in range(60):
            host = '"' * (150 + (seed * 7 + i) % 100) if i % 3 else "o"
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                head = f"GET /{i} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                s.sendall(head.encode())
                while s.recv(65536):
                    pass
            with lock:
                sent.append(host)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    lines = _settled(router, len(sent))
    assert len(lines) == len(sent) == 480
    _check_lines(lines, audit=True)
    hosts = sorted(json.loads(line)["host"] for line in lines)
    assert hosts == sorted(h[:200] for h in sent)  # cut by the format, not by the log path
    assert max(len(line) for line in lines) > 600
    assert _dropped(router, "haproxy") == 0.0
