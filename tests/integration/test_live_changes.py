"""Destination and allow_from edits through the runtime API: the same worker, no failed
request under load, the files on disk describing what runs, and a validated reload whenever
a runtime command fails, or haproxy dies halfway. The full `haproxy -c` of the file runs right
after a runtime edit: a refusal there is reported and the next reload refused; a supervisor
killed in the middle of an apply comes back consistent. Real router, real haproxy, kubelet
swaps."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haproxy_egress.haproxy.cli import CliSocket
from haproxy_egress.haproxy.show import parse_old_workers, parse_show_proc
from tests.kubelet import ConfigMapVolume
from tests.load import LoadGen
from tests.longlived import changes, recovery_time
from tests.router import Router
from tests.router import web_route as _web
from tests.support import HAPROXY, HttpOrigin, free_port, http_get, loopback_route, wait_for


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "configmap")


@pytest.fixture
def origin_c() -> Iterator[HttpOrigin]:
    o = HttpOrigin("origin-c").start()
    yield o
    o.stop()


def _publish(volume: ConfigMapVolume, *routes: dict[str, Any]) -> None:
    volume.write({"routes.yaml": {"version": 1, "routes": list(routes)}})


def _applied(router: Router, before: float, timeout: float = 15.0) -> None:
    wait_for(lambda: sum(changes(router).values()) > before, timeout=timeout)


def _edit(router: Router, volume: ConfigMapVolume, *routes: dict[str, Any]) -> None:
    before = sum(changes(router).values())
    _publish(volume, *routes)
    _applied(router, before)


def _servers(router: Router, backend: str = "web") -> dict[str, str]:
    """name → addr:port of the servers of a backend that are not in maintenance."""
    text = CliSocket(router.run_dir / "haproxy.sock").command(f"show servers state {backend}")
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) > 18 and f[0].isdigit() and not int(f[6]) & 1:
            out[f[3]] = f"{f[4]}:{f[18]}"
    return out


def _cfg_servers(router: Router, backend: str = "web") -> dict[str, str]:
    """The same, as the haproxy.cfg on disk has them."""
    out, inside = {}, False
    for line in (router.run_dir / "haproxy.cfg").read_text().splitlines():
        if not line.startswith(" "):
            inside = line.strip() == f"backend {backend}"
        elif inside and line.strip().startswith("server "):
            _, name, addr, *_ = line.split()
            out[name] = addr
    return out


@pytest.fixture
def router(tmp_path: Path, volume: ConfigMapVolume) -> Iterator[Router]:
    """The router on the volume, started by each test once it has published its routes;
    stopped afterwards. Requested last, so it stops before the origins do."""
    r = Router(tmp_path / "router", config_dir=volume.directory, drain_seconds=1)
    yield r
    r.stop()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("keepalive", [False, True], ids=["new-connections", "keep-alive"])
def test_destination_and_allow_from_edits_keep_the_worker_and_every_request(
    volume: ConfigMapVolume,
    *,
    origin: HttpOrigin,
    origin_b: HttpOrigin,
    keepalive: bool,
    router: Router,
) -> None:
    port = free_port()
    wide = ["127.0.0.0/8", "10.0.0.0/8"]
    _publish(volume, _web(port, origin, allow=["127.0.0.0/8"]))
    router.start()
    worker = router.worker_pid()
    load = LoadGen(port, keepalive=keepalive, clients=4, max_seconds=120).start()
    try:
        for i in range(20):
            dests = (origin, origin_b) if i % 2 == 0 else (origin_b,)
            allow = wide if i % 4 < 2 else ["127.0.0.0/8"]
            _edit(router, volume, _web(port, *dests, allow=allow))
            assert _servers(router) == _cfg_servers(router)
            time.sleep(0.1)
    finally:
        result = load.stop()
    assert result.failed == 0, result.errors
    assert result.ok > 100
    assert router.worker_pid() == worker
    procs = CliSocket(router.run_dir / "master.sock", master=True).command("show proc")
    assert [p.kind for p in parse_show_proc(procs)] == ["master", "worker"]
    assert parse_old_workers(procs) == []  # no reload left an old worker behind
    kinds = changes(router)
    assert kinds["runtime"] == 20
    assert kinds["reload"] == 0
    assert router.metric("haproxy_egress_reloads_total") == 0
    assert "applied at runtime; no reload" in router.stderr()
    # The ACL file on disk is what the worker runs.
    acl = router.run_dir / "maps" / "allow-from.web.acl"
    entries = CliSocket(router.run_dir / "haproxy.sock").command(f"show acl {acl}")
    assert sorted(ln.split()[1] for ln in entries.splitlines() if ln.startswith("0x")) == (
        sorted(acl.read_text().split())
    )


@pytest.mark.timeout(60)
def test_allow_from_edit_refuses_new_clients_at_once(
    volume: ConfigMapVolume, origin: HttpOrigin, router: Router
) -> None:
    port = free_port()
    _publish(volume, _web(port, origin, allow=["127.0.0.0/8"]))
    router.start()
    worker = router.worker_pid()
    assert http_get(port) == "origin-a"
    _edit(router, volume, _web(port, origin, allow=["10.0.0.0/8"]))
    with pytest.raises(ConnectionError):
        http_get(port, timeout=2)
    _edit(router, volume, _web(port, origin, allow=["127.0.0.1/32"]))
    assert http_get(port) == "origin-a"
    assert router.worker_pid() == worker


@pytest.mark.timeout(60)
def test_a_failing_runtime_command_falls_back_to_a_validated_reload(
    volume: ConfigMapVolume,
    *,
    origin: HttpOrigin,
    origin_b: HttpOrigin,
    router: Router,
) -> None:
    """The failure is real: a server of the same name already exists in the worker (added
    behind the router's back), so `add server` is refused."""
    port = free_port()
    _publish(volume, _web(port, origin))
    router.start()
    worker = router.worker_pid()
    stats = CliSocket(router.run_dir / "haproxy.sock")
    name = f"127.0.0.1_{origin_b.port}"
    # A decoy at origin a's address: if it survived, origin b would never answer.
    assert stats.command(f"add server web/{name} 127.0.0.1:{origin.port}").startswith("New")
    _edit(router, volume, _web(port, origin, origin_b))
    assert "runtime change failed, reloading instead" in router.stderr()
    assert "was refused: Already exists a server" in router.stderr()
    assert router.worker_pid() != worker
    kinds = changes(router)
    assert kinds == {"noop": 0.0, "runtime": 0.0, "reload": 1.0}
    wait_for(lambda: {http_get(port) for _ in range(4)} == {"origin-a", "origin-b"}, 10)
    assert _servers(router) == _cfg_servers(router)
    # The next destination edit goes live again, in the new worker.
    worker = router.worker_pid()
    _edit(router, volume, _web(port, origin_b))
    assert router.worker_pid() == worker
    assert changes(router)["runtime"] == 1
    wait_for(lambda: {http_get(port) for _ in range(4)} == {"origin-b"}, 10)


@pytest.mark.timeout(120)
def test_haproxy_killed_during_runtime_changes_comes_back_consistent(
    volume: ConfigMapVolume,
    *,
    origin: HttpOrigin,
    origin_b: HttpOrigin,
    origin_c: HttpOrigin,
    router: Router,
) -> None:
    """Kill the worker at various moments of a runtime change: the router restarts haproxy
    from the files on disk, which already describe the edit, so it serves exactly that."""
    port = free_port()
    sets = [(origin,), (origin, origin_b), (origin_b, origin_c), (origin_c,)]
    _publish(volume, _web(port, *sets[0]))
    router.start()
    for i, delay in enumerate((0.0, 0.15, 0.25, 0.35, 0.5)):
        dests = sets[(i + 1) % len(sets)]
        worker = router.worker_pid()
        _publish(volume, _web(port, *dests))
        time.sleep(delay)
        os.kill(worker, signal.SIGKILL)
        want = {o.name for o in dests}

        def serves_exactly(w: set[str] = want) -> bool:
            return {http_get(port, timeout=1) for _ in range(6)} == w

        wait_for(serves_exactly, 20)
        wait_for(lambda: _servers(router) == _cfg_servers(router), 10)
        assert set(_cfg_servers(router)) == {f"127.0.0.1_{o.port}" for o in dests}
    assert router.proc is not None
    assert router.proc.poll() is None


def _serving(port: int) -> bool:
    try:
        return http_get(port, timeout=0.5) == "origin-a"
    except OSError:
        return False


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", ["worker", "master"])
def test_crash_to_serving_in_under_a_second(
    volume: ConfigMapVolume, origin: HttpOrigin, victim: str, router: Router
) -> None:
    """SIGKILL haproxy's worker or master: serving again p50 <= 1 s (first crash: no back-off).
    EGRESS_RESTART_STABLE_SECONDS=0 makes each crash a first one without waiting out the
    default 10 s between them (the back-off itself: tests/unit/runtime/test_backoff.py)."""
    port = free_port()
    _publish(volume, _web(port, origin))
    outages = []
    router.env = {**router.env, "EGRESS_RESTART_STABLE_SECONDS": "0"}
    router.start()

    def victim_pid() -> int:
        return router.worker_pid() if victim == "worker" else router.master_pid()

    for _ in range(3):
        killed = victim_pid()
        os.kill(killed, signal.SIGKILL)
        outages.append(recovery_time(lambda: _serving(port)))
        # The next victim is the process that replaced this one.
        wait_for(lambda killed=killed: victim_pid() != killed)  # type: ignore[misc]
    assert statistics.median(outages) <= 1.0, outages


def _gated_check_haproxy(tmp_path: Path, gate: Path) -> Path:
    """The real haproxy; while `gate` exists, `haproxy -c` is also handed a file with an
    unknown keyword, so haproxy itself refuses the check (the running master and its reloads
    are untouched). What the router renders passes the check by construction, so this is how
    a test gets a file the running worker serves and `haproxy -c` refuses."""
    broken = tmp_path / "broken.cfg"
    broken.write_text("frontend x\n    bind :1\n    no-such-directive\n")
    wrapper = tmp_path / "haproxy"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ] && [ -e {gate} ]; then exec {HAPROXY} "$@" -f {broken}; fi\n'
        f'exec {HAPROXY} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


@pytest.mark.timeout(90)
def test_late_check_failure_is_reported_and_blocks_the_next_reload(
    volume: ConfigMapVolume, *, origin: HttpOrigin, origin_b: HttpOrigin, router: Router
) -> None:
    gate = router.workdir.parent / "refuse-checks"
    router.env = {"EGRESS_HAPROXY_BIN": str(_gated_check_haproxy(router.workdir.parent, gate))}
    port, other = free_port(), free_port()
    _publish(volume, _web(port, origin))
    router.start()
    worker = router.worker_pid()
    assert router.metric("haproxy_egress_config_check_failed") == 0

    # A destination edit: in effect through the runtime API, then the late check refuses it.
    gate.touch()
    _publish(volume, _web(port, origin_b))
    wait_for(lambda: router.metric("haproxy_egress_config_check_failed") == 1, 20)
    assert changes(router)["runtime"] == 1
    assert http_get(port) == "origin-b"  # the edit is in effect: the check came after it
    log = router.stderr()
    assert "CONFIG CHECK FAILED after a runtime change" in log
    assert "unknown keyword 'no-such-directive'" in log
    assert router.worker_pid() == worker

    # The next edit needs a reload (a new listener): its check is refused, so is the reload.
    _publish(volume, _web(port, origin_b), loopback_route("other", other, origin.port))
    wait_for(lambda: router.metric("haproxy_egress_reload_failures_total") == 1, 20)
    assert router.worker_pid() == worker
    assert router.metric("haproxy_egress_config_check_failed") == 1
    with pytest.raises(ConnectionError):
        http_get(other, timeout=1)
    assert http_get(port) == "origin-b"

    # Whatever broke the check is gone: the reload checks again and goes through.
    gate.unlink()
    router.signal(signal.SIGHUP)
    wait_for(lambda: router.metric("haproxy_egress_config_check_failed") == 0, 20)
    wait_for(lambda: http_get(other, timeout=1) == "origin-a", 20)
    assert router.worker_pid() != worker
    assert changes(router)["reload"] == 1


def _served(port: int) -> set[str]:
    return {http_get(port, timeout=1) for _ in range(6)}


def _consistent(router: Router) -> bool:
    """The worker's servers of route "web" (not in maintenance) are the cfg's on disk."""
    return _servers(router) == _cfg_servers(router)


@pytest.mark.timeout(180)
def test_supervisor_killed_during_an_incremental_apply_restarts_consistent(
    volume: ConfigMapVolume,
    *,
    origin: HttpOrigin,
    origin_b: HttpOrigin,
    router: Router,
) -> None:
    """kill -9 of the supervisor at several moments of runtime edits; the pod restarts (its
    container's processes die with it, the run dir, an emptyDir, stays): the router serves
    exactly what the ConfigMap says, and the files on disk are what the worker runs."""
    port = free_port()
    sets = [(origin,), (origin, origin_b), (origin_b,)]
    _publish(volume, _web(port, *sets[0]))
    router.start()
    for i, delay in enumerate((0.0, 0.1, 0.2, 0.3)):
        dests = sets[(i + 1) % len(sets)]
        _publish(volume, _web(port, *dests))
        time.sleep(delay)
        assert router.proc is not None
        os.kill(router.proc.pid, signal.SIGKILL)
        router.stop()  # reaps it and kills what the container runtime would (haproxy, checks)
        router.start()
        want = {o.name for o in dests}

        def serves_exactly(w: set[str] = want) -> bool:
            return _served(port) == w

        wait_for(serves_exactly, 20)
        wait_for(lambda: _consistent(router), 10)
        # Edits keep working after the restart, through the runtime API.
        before = changes(router)["runtime"]
        _publish(volume, _web(port, *sets[i % len(sets)]))

        def applied(b: float = before) -> bool:
            return changes(router)["runtime"] > b

        wait_for(applied, 20)
        assert _consistent(router)
