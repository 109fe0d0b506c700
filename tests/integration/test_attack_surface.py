"""The border's own attack surface: private control sockets, no port nobody asked for, an
authenticated stats page, a metrics endpoint without secrets, and honest readiness.

Everything runs against a real supervised router (tests/router.py); "another UID" is a real
process under uid 65534 (we are root in the test container).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from haproxy_egress.config.sources import load_snapshot
from haproxy_egress.config.sources.configdir import Snapshot
from haproxy_egress.errors import ConfigError
from haproxy_egress.runtime.assembly import haproxy_answers
from tests.figures import record
from tests.router import Router
from tests.support import HAPROXY, HttpOrigin, free_port, port_open, wait_for

NOBODY = 65534
PASSWORD = "Zq7-unguessable-Pw"


def _seed(tmp_path: Path, origin: HttpOrigin, **env: str) -> Router:
    return Router(
        tmp_path / "router",
        env={
            "SERVICE_NAME": "seed",
            "SERVICE_TCP_PORT": str(free_port()),
            "SERVICE_DEST": "127.0.0.1",
            "SERVICE_DEST_PORT": str(origin.port),
            **env,
        },
    )


def _connect_as(uid: int, path: Path) -> str:
    """Try to connect to a unix socket as `uid`; returns 'connected' or the errno name."""
    code = (
        "import errno, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "    print('connected')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        user=uid,
        group=uid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def test_control_sockets_are_private(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> None:
    router = _seed(tmp_path, origin)
    routers.append(router.start())
    run = router.run_dir
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    for name in ("haproxy.sock", "master.sock"):
        mode = (run / name).stat().st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600, (name, oct(mode))
    # The live config holds the stats password when one is set: owner only.
    assert stat.S_IMODE((run / "haproxy.cfg").stat().st_mode) == 0o600
    # Another UID cannot reach them: not through the directory, and not with the directory open.
    attempts = 0
    for name in ("haproxy.sock", "master.sock"):
        assert _connect_as(NOBODY, run / name) == "EACCES"
        attempts += 1
    run.chmod(0o755)
    try:
        for name in ("haproxy.sock", "master.sock"):
            assert _connect_as(NOBODY, run / name) == "EACCES"
            attempts += 1
    finally:
        run.chmod(0o700)
    assert _connect_as(0, run / "master.sock") == "connected"  # the check itself works
    record("attack surface: control sockets private", attempts=attempts, failures=0)


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process has in LISTEN state (from its fds and /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_no_port_but_the_routes_and_stats_page_off_by_default(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> None:
    router = _seed(tmp_path, origin)
    routers.append(router.start())
    text = (router.run_dir / "haproxy.cfg").read_text()
    assert "frontend _stats" not in text
    assert "stats enable" not in text
    listen = int(router.env["SERVICE_TCP_PORT"])
    assert _listening_ports(router.worker_pid()) == {listen}
    assert _listening_ports(router.master_pid()) <= {listen}
    assert router.proc is not None
    assert _listening_ports(router.proc.pid) == {router.metrics_port}


def _with_stats_page(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> tuple[Router, int]:
    """A started seed router with the stats page on (user admin, PASSWORD), and its port."""
    stats_port = free_port()
    router = _seed(
        tmp_path,
        origin,
        STATS_PORT=str(stats_port),
        STATS_USER="admin",
        STATS_PASSWORD=PASSWORD,
    )
    routers.append(router.start())
    return router, stats_port


def test_stats_page_when_asked_for_is_authenticated(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> None:
    _, stats_port = _with_stats_page(tmp_path, origin, routers)
    url = f"http://127.0.0.1:{stats_port}/"
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, auth=("admin", "wrong"), timeout=5).status_code == 401
    assert requests.get(url, auth=("other", PASSWORD), timeout=5).status_code == 401
    page = requests.get(url, auth=("admin", PASSWORD), timeout=5)
    assert page.status_code == 200
    assert PASSWORD not in page.text
    record("attack surface: stats page authenticated", requests=4, failures=0)


def test_stats_page_without_credentials_is_refused() -> None:
    env = {"SERVICE_TCP_PORT": "8080", "SERVICE_DEST": "198.18.0.1:80", "STATS_PORT": "1936"}
    with pytest.raises(ConfigError):
        load_snapshot(Snapshot(Path("/cfg"), ()), env)


def test_metrics_and_logs_leak_no_secrets(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> None:
    router, stats_port = _with_stats_page(tmp_path, origin, routers)
    requests.get(f"http://127.0.0.1:{stats_port}/", auth=("admin", PASSWORD), timeout=5)
    bodies = []
    for path, accept in [
        ("/metrics", "text/plain"),
        ("/metrics", "application/openmetrics-text"),
        ("/", "*/*"),
        ("/healthz", "*/*"),
        ("/readyz", "*/*"),
    ]:
        resp = requests.get(router.url(path), headers={"Accept": accept}, timeout=5)
        assert resp.status_code == 200
        bodies.append(resp.text)
    for body in bodies:
        assert PASSWORD not in body
        assert "STATS_PASSWORD" not in body
        assert str(router.run_dir) not in body  # no paths of the control sockets either
    metrics = bodies[0]
    info = [ln for ln in metrics.splitlines() if ln.startswith("haproxy_egress_config_info")]
    assert len(info) == 1
    labels = info[0].split("{", 1)[1].split("}", 1)[0]
    name, _, value = labels.partition("=")
    assert name == "digest"
    digest = value.strip('"')
    assert len(digest) == 64
    assert set(digest) <= set("0123456789abcdef")
    wait_for(lambda: "ready:" in router.stderr(), timeout=5)
    assert PASSWORD not in router.stderr() + router.stdout()
    record("attack surface: metrics leak no secrets", scrapes=len(bodies), failures=0)


def test_refused_password_is_not_echoed() -> None:
    secret = "my secret#Pw"
    env = {
        "SERVICE_TCP_PORT": "8080",
        "SERVICE_DEST": "198.18.0.1:80",
        "STATS_PORT": "1936",
        "STATS_USER": "admin",
        "STATS_PASSWORD": secret,
    }
    with pytest.raises(ConfigError) as caught:
        load_snapshot(Snapshot(Path("/cfg"), ()), env)
    assert secret not in str(caught.value)


# --- readiness ------------------------------------------------------------------------------


def _gated_haproxy(tmp_path: Path, gate: Path) -> Path:
    """An haproxy wrapper that holds the master back (not `haproxy -c`) until `gate` exists
    (a minute at most), so a test decides when the listeners may bind."""
    wrapper = tmp_path / "gated-haproxy"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" -W "*) i=0; while [ ! -e "{gate}" ] && [ $i -lt 600 ]; do'
        " sleep 0.1; i=$((i+1)); done;; esac\n"
        f'exec {HAPROXY} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.timeout(120)
def test_readyz_is_not_ready_before_every_listener_is_bound(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> None:
    # 51 distinct ports: bind(0) may hand out a port again once it is closed, and a route on
    # the metrics port (or two on one port) is a config the router refuses to start with.
    taken: set[int] = set()
    while len(taken) < 51:
        taken.add(free_port())
    metrics_port, *ports = sorted(taken)
    config = tmp_path / "config"
    config.mkdir()
    (config / "routes.yaml").write_text(
        "routes:\n"
        + "".join(
            f"  - {{name: r{i}, listen: '127.0.0.1:{p}', "
            f"destinations: ['127.0.0.1:{origin.port}']}}\n"
            for i, p in enumerate(ports)
        )
    )
    gate = tmp_path / "gate"
    router = Router(
        tmp_path / "router",
        config_dir=config,
        env={"EGRESS_HAPROXY_BIN": str(_gated_haproxy(tmp_path, gate))},
        metrics_port=metrics_port,
    )
    router.start(wait_ready=False)
    routers.append(router)
    answers: list[int] = []
    checks = 0

    def all_bound() -> bool:
        return all(port_open(p) for p in ports)

    def readyz() -> int | None:
        try:
            answers.append(requests.get(router.url("/readyz"), timeout=1).status_code)
        except requests.ConnectionError:
            return None  # the metrics endpoint itself is not up yet
        return answers[-1]

    # haproxy is held back: the endpoint answers, and says "not ready".
    assert wait_for(readyz, timeout=30) == 503
    assert not any(port_open(p) for p in ports)
    gate.touch()
    # Ready implies every listener accepts, from the first 200 on.
    wait_for(lambda: readyz() == 200, timeout=30)
    assert all_bound()

    # And again across a restart: while haproxy is away, ready must not be claimed.
    os.kill(router.master_pid(), 9)
    stop = threading.Event()
    violations: list[str] = []

    def watch() -> None:
        nonlocal checks
        while not stop.is_set():
            try:
                ready = requests.get(router.url("/readyz"), timeout=1).status_code == 200
            except requests.RequestException:
                continue
            if ready:
                checks += 1
                if not all_bound():
                    violations.append("ready while a listener was not bound")
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_for(
            lambda: (
                router.metric("haproxy_egress_child_restarts_total", {"child": "haproxy"}) == 1.0
            ),
            timeout=30,
        )
        router.wait_ready(timeout=30)
        time.sleep(0.5)
    finally:
        stop.set()
        watcher.join(5)
    assert violations == []
    record("attack surface: /readyz honest", probes=len(answers) + checks, failures=0)


def test_readiness_is_claimed_only_for_a_worker_of_the_current_master(
    tmp_path: Path, origin: HttpOrigin, routers: list[Router]
) -> None:
    # After a master is killed its orphaned worker still answers on the stats socket until it
    # notices and exits, while the master started in its place has bound nothing yet: the
    # probe must take an answer only from a worker whose parent is the master it started.
    config = tmp_path / "config"
    config.mkdir()
    port = free_port()
    (config / "routes.yaml").write_text(
        f"routes:\n  - name: r\n    listen: {port}\n    destinations: ['127.0.0.1:{origin.port}']\n"
    )
    router = Router(tmp_path / "router", config_dir=config).start()
    routers.append(router)
    stats_socket = router.run_dir / "haproxy.sock"
    assert haproxy_answers(stats_socket, router.master_pid())
    # Any other pid stands for "a master started since": the router itself, haproxy's
    # grandparent, and the worker's own pid.
    assert router.proc is not None
    assert not haproxy_answers(stats_socket, router.proc.pid)
    assert not haproxy_answers(stats_socket, router.worker_pid())
    assert not haproxy_answers(stats_socket, None)
