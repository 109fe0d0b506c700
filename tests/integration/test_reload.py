"""Hot reload on a kubelet-style ConfigMap swap: hitless, validated, keeping the last good."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubelet import ConfigMapVolume
from tests.load import LoadGen
from tests.router import Router
from tests.router import http_route as _route
from tests.support import HttpOrigin, free_port, http_get, port_open, wait_for


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "configmap")


@pytest.fixture
def router(tmp_path: Path, volume: ConfigMapVolume) -> Iterator[Router]:
    r = Router(tmp_path / "router", config_dir=volume.directory, drain_seconds=5)
    yield r
    r.stop()


def _reloads(router: Router) -> float:
    return router.metric("haproxy_egress_reloads_total") or 0.0


def test_route_added_changed_and_removed(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin, origin_b: HttpOrigin
) -> None:
    a, b = free_port(), free_port()
    volume.write({"routes.yaml": {"version": 1, "routes": [_route("a", a, origin)]}})
    router.start()
    worker = router.worker_pid()
    # Added: a second key with a second route.
    volume.write(
        {
            "routes.yaml": {"version": 1, "routes": [_route("a", a, origin)]},
            "more.yaml": {"routes": [_route("b", b, origin_b)]},
        }
    )
    wait_for(lambda: http_get(b, timeout=1) == "origin-b", timeout=5)
    assert router.worker_pid() != worker
    wait_for(lambda: router.metric("haproxy_egress_config_last_reload_successful") == 1.0, 5)
    # Changed: route a now goes to origin b.
    volume.write(
        {
            "routes.yaml": {"version": 1, "routes": [_route("a", a, origin_b)]},
            "more.yaml": {"routes": [_route("b", b, origin_b)]},
        }
    )
    wait_for(lambda: http_get(a, timeout=1) == "origin-b", timeout=5)
    # Removed: the key goes away, so does the route.
    volume.write({"routes.yaml": {"version": 1, "routes": [_route("a", a, origin_b)]}})
    wait_for(lambda: not port_open(b), timeout=5)
    assert http_get(a) == "origin-b"
    # Adding and removing a route reload; changing a destination is done at runtime.
    wait_for(lambda: _reloads(router) == 2.0, timeout=5)
    assert "reloaded (config directory changed)" in router.stderr()
    assert "route a: destinations changed, applied at runtime; no reload" in router.stderr()


def _routes_keys(*routes: dict[str, object]) -> dict[str, object]:
    """ConfigMap keys holding exactly `routes` in routes.yaml."""
    return {"routes.yaml": {"version": 1, "routes": list(routes)}}


def _serving_route_a(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin
) -> tuple[int, dict[str, object], int]:
    """The router started with one route `a` to the origin: its port, keys and worker pid."""
    port = free_port()
    keys = _routes_keys(_route("a", port, origin))
    volume.write(keys)
    router.start()
    return port, keys, router.worker_pid()


def test_unchanged_content_does_not_reload(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    _, keys, worker = _serving_route_a(router, volume, origin)
    for _ in range(3):
        volume.write(keys)  # kubelet re-sync: new version directory, same content
        time.sleep(0.4)
    router.signal(signal.SIGHUP)  # a forced re-read renders the same text: still no reload
    wait_for(lambda: "reload skipped (SIGHUP received)" in router.stderr(), timeout=5)
    assert router.worker_pid() == worker
    assert _reloads(router) == 0.0


def test_sighup_rereads_the_config_now(
    tmp_path: Path, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    # A long debounce and poll keep the watcher out of the way: only SIGHUP can be the cause.
    a, b = free_port(), free_port()
    volume.write({"routes.yaml": {"routes": [_route("a", a, origin)]}})
    r = Router(
        tmp_path / "router",
        config_dir=volume.directory,
        env={"EGRESS_RELOAD_DEBOUNCE": "20", "EGRESS_POLL_SECONDS": "600"},
    )
    try:
        r.start()
        # Once the watcher has taken its first look it sees nothing within its 20 s debounce:
        # from then on only SIGHUP can apply the edit.
        # (And the supervisor has seen haproxy come up, when it compares the inputs once.)
        wait_for(lambda: "config-watcher: watching" in r.stderr(), timeout=30)
        wait_for(lambda: "ready: haproxy" in r.stderr(), timeout=30)
        volume.write({"routes.yaml": {"routes": [_route("a", a, origin), _route("b", b, origin)]}})
        r.signal(signal.SIGHUP)
        wait_for(lambda: http_get(b, timeout=1) == "origin-a", timeout=5)
        wait_for(lambda: "reloaded (SIGHUP received)" in r.stderr(), timeout=30)
    finally:
        r.stop()


@pytest.mark.parametrize(
    ("bad_key", "expected"),
    [
        ("routes: [\n  - name: a\n   listen: 1\n", "routes.yaml:2: YAML syntax error"),
        (
            "routes:\n  - name: a\n    listen: 70000\n    destinations: [127.0.0.1:1]\n",
            "routes.yaml:3: routes[0].listen: port 70000 out of range 1..65535",
        ),
    ],
    ids=["yaml-syntax", "invalid-field"],
)
def test_bad_config_keeps_serving_and_says_why(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin, bad_key: str, expected: str
) -> None:
    a, _, worker = _serving_route_a(router, volume, origin)
    live_before = (router.run_dir / "haproxy.cfg").read_text()
    volume.write({"routes.yaml": bad_key})
    wait_for(lambda: router.metric("haproxy_egress_config_last_reload_successful") == 0.0, 5)
    assert router.metric("haproxy_egress_reload_failures_total") == 1.0
    assert http_get(a) == "origin-a"
    assert router.worker_pid() == worker
    assert (router.run_dir / "haproxy.cfg").read_text() == live_before
    lines = [ln for ln in router.stderr().splitlines() if "reload rejected" in ln]
    assert len(lines) == 1
    assert expected in lines[0]
    # Fixing the ConfigMap later reloads normally.
    b = free_port()
    volume.write(_routes_keys(_route("a", a, origin), _route("b", b, origin)))
    wait_for(lambda: http_get(b, timeout=1) == "origin-a", timeout=5)
    wait_for(lambda: router.metric("haproxy_egress_config_last_reload_successful") == 1.0, 5)


def test_port_conflict_at_bind_keeps_the_old_config(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    a = free_port()
    volume.write({"routes.yaml": {"routes": [_route("a", a, origin)]}})
    router.start()
    worker = router.worker_pid()
    live_before = (router.run_dir / "haproxy.cfg").read_text()
    # Someone else holds this port: `haproxy -c` passes, the bind in the new worker fails.
    squatter = socket.create_server(("127.0.0.1", 0))
    taken = squatter.getsockname()[1]
    try:
        volume.write(
            {"routes.yaml": {"routes": [_route("a", a, origin), _route("b", taken, origin)]}}
        )
        wait_for(lambda: router.metric("haproxy_egress_reload_failures_total") == 1.0, 15)
        assert router.metric("haproxy_egress_config_last_reload_successful") == 0.0
        assert http_get(a) == "origin-a"
        assert router.worker_pid() == worker
        assert (router.run_dir / "haproxy.cfg").read_text() == live_before
        # haproxy's own reason reaches the log (2.6 and 3.0 both name the bind that failed).
        assert "cannot bind socket" in router.stderr()
    finally:
        squatter.close()
    # The next good change reloads normally, out of haproxy's "reload failed" state.
    b = free_port()
    volume.write({"routes.yaml": {"routes": [_route("a", a, origin), _route("b", b, origin)]}})
    wait_for(lambda: http_get(b, timeout=1) == "origin-a", timeout=10)


@pytest.mark.parametrize("keepalive", [False, True], ids=["new-connection", "keep-alive"])
def test_fifty_swaps_under_load_fail_no_request(
    router: Router,
    volume: ConfigMapVolume,
    origin: HttpOrigin,
    keepalive: bool,
) -> None:
    a = free_port()
    base = _route("a", a, origin)
    volume.write({"routes.yaml": {"routes": [base]}})
    router.start()
    load = LoadGen(a, keepalive=keepalive, clients=4, max_seconds=120, expect="origin-a").start()
    try:
        for i in range(50):
            probe = free_port()
            # Every change is real (a new route and a changed timeout), and must become visible.
            volume.write(
                {
                    "routes.yaml": {
                        "routes": [
                            {**base, "connect_timeout": f"{5 + i % 2}s"},
                            _route(f"probe-{i}", probe, origin),
                        ]
                    }
                }
            )

            def probe_serves(p: int = probe) -> bool:
                return http_get(p, timeout=1) == "origin-a"

            wait_for(probe_serves, timeout=5)
    finally:
        result = load.stop()
    wait_for(lambda: _reloads(router) == 50.0, timeout=5)
    assert result.failed == 0, result.errors
    assert result.ok > 500


def test_diff_shows_what_an_edit_would_change(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin, tmp_path: Path
) -> None:
    a, b = free_port(), free_port()
    volume.write({"routes.yaml": {"routes": [_route("a", a, origin)]}})
    router.start()
    edited = tmp_path / "edited"
    edited.mkdir()
    # The same process settings as the router (in a pod: `oc rsh` inherits them).
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "EGRESS_RUN_DIR": str(router.run_dir),
        "EGRESS_CONFIG_DIR": str(volume.directory),
        "EGRESS_DRAIN_SECONDS": str(router.drain_seconds),
    }

    def diff(directory: Path, *extra: str, **changed: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "haproxy_egress.cli",
                "diff",
                "--config-dir",
                str(directory),
                *extra,
            ],
            env={**env, **changed},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    same = diff(volume.directory)
    assert same.returncode == 0, same.stderr
    assert same.stdout == ""
    (edited / "routes.yaml").write_text(
        f"routes:\n  - {{name: a, listen: '127.0.0.1:{a}', mode: http, "
        f"destinations: ['127.0.0.1:{origin.port}']}}\n"
        f"  - {{name: b, listen: '127.0.0.1:{b}', destinations: ['127.0.0.1:{origin.port}']}}\n"
    )
    changed = diff(edited)
    assert changed.returncode == 1, changed.stderr
    assert "+frontend b\n" in changed.stdout
    assert changed.stdout.startswith("--- running: ")
    # What the router would do with it, in its own reload log's words.
    assert "the router would apply it as: reload: route b added; reload (" in changed.stdout
    (edited / "routes.yaml").write_text(
        f"routes:\n  - {{name: a, listen: '127.0.0.1:{a}', mode: http, "
        f"destinations: ['127.0.0.1:{origin.port}', '127.0.0.1:{b}']}}\n"
    )
    runtime = diff(edited)
    assert runtime.returncode == 1, runtime.stderr
    assert "would apply it as: runtime: route a: destinations" in runtime.stdout
    assert "applied at runtime; no reload" in runtime.stdout
    # The run dir comes from --run-dir (or EGRESS_RUN_DIR), and an error names it (exit 2).
    assert diff(edited, "--run-dir", str(router.run_dir), EGRESS_RUN_DIR="/x").returncode == 1
    lost = diff(edited, EGRESS_RUN_DIR=str(tmp_path / "nowhere"))
    assert lost.returncode == 2, lost.stderr
    assert f"no running configuration in run dir {tmp_path / 'nowhere'}" in lost.stderr
    assert "--run-dir" in lost.stderr
    (edited / "routes.yaml").write_text("routes:\n  - {name: a, listen: 70000}\n")
    broken = diff(edited)
    assert broken.returncode == 2
    assert "routes.yaml:2: routes[0].listen: port 70000 out of range 1..65535" in broken.stderr


def test_plain_directory_edited_in_place_reloads(tmp_path: Path, origin: HttpOrigin) -> None:
    # docker run -v / local runs: no ..data, files rewritten in place.
    plain = tmp_path / "plain"
    plain.mkdir()
    a, b = free_port(), free_port()
    key = plain / "routes.yaml"
    key.write_text(
        f"routes:\n  - {{name: a, listen: '127.0.0.1:{a}', "
        f"destinations: ['127.0.0.1:{origin.port}']}}\n"
    )
    r = Router(tmp_path / "router", config_dir=plain)
    try:
        r.start()
        with key.open("a") as fh:  # an in-place append, as an editor without rename does
            fh.write(
                f"  - {{name: b, listen: '127.0.0.1:{b}', "
                f"destinations: ['127.0.0.1:{origin.port}']}}\n"
            )
        wait_for(lambda: http_get(b, timeout=1) == "origin-a", timeout=5)
        wait_for(lambda: _reloads(r) == 1.0, timeout=5)
    finally:
        r.stop()


def test_a_dead_destination_stays_down_across_a_reload(
    router: Router, volume: ConfigMapVolume, origin: HttpOrigin
) -> None:
    # Without the saved server state the new worker would start the dead destination as up
    # and send it traffic again until a slow health check (every 4 s here) failed.
    a, b = free_port(), free_port()
    dead = free_port()
    route = {
        **_route("a", a, origin),
        "destinations": [f"127.0.0.1:{origin.port}", f"127.0.0.1:{dead}"],
        "check": {"interval": "4s", "fall": 1, "rise": 1},
    }
    volume.write({"routes.yaml": {"routes": [route]}})
    router.start()
    dead_server = {"backend": "a", "server": f"127.0.0.1_{dead}"}
    wait_for(lambda: router.metric("haproxy_server_up", dead_server) == 0.0, timeout=15)
    volume.write({"routes.yaml": {"routes": [route, _route("b", b, origin)]}})
    wait_for(lambda: http_get(b, timeout=1) == "origin-a", timeout=5)
    wait_for(lambda: _reloads(router) == 1.0, timeout=5)
    # Right after the reload, well before the new worker's first check could have run:
    assert router.metric("haproxy_server_up", dead_server) == 0.0
