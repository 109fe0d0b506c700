"""Long-lived connections across ConfigMap edits: untouched routes keep theirs through any
number of reloads and runtime changes; what an edit denies ends after the drain time; old
workers are bounded by count, age and memory. Real router, real haproxy, kubelet swaps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kubelet import ConfigMapVolume
from tests.longlived import Held, NamedEcho, Tunnel, changes, scrape, value
from tests.router import Router
from tests.support import DnsServer, HttpOrigin, free_port, http_get, wait_for

DRAIN = 2.0


@pytest.fixture
def echo_a() -> Iterator[NamedEcho]:
    o = NamedEcho("a")
    yield o
    o.stop()


@pytest.fixture
def echo_b() -> Iterator[NamedEcho]:
    o = NamedEcho("b")
    yield o
    o.stop()


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "configmap")


def _tcp(name: str, port: int, *origins: NamedEcho, **extra: Any) -> dict[str, Any]:
    dests = [f"127.0.0.1:{o.port}" for o in origins]
    return {"name": name, "listen": f"127.0.0.1:{port}", "destinations": dests, **extra}


def _proxy(name: str, port: int, policy: list[str]) -> dict[str, Any]:
    return {"name": name, "listen": f"127.0.0.1:{port}", "mode": "proxy", "policy": policy}


def _publish(volume: ConfigMapVolume, dns: DnsServer | None, routes: list[dict[str, Any]]) -> None:
    doc: dict[str, Any] = {"version": 1, "routes": routes}
    if dns is not None:  # policy routes resolve names: only ever on the test's own server
        doc["resolvers"] = {"nameservers": [f"127.0.0.1:{dns.port}"]}
    volume.write({"routes.yaml": doc})


def _applied(router: Router, before: float, timeout: float = 15.0) -> None:
    """Wait until one more edit was applied (whatever its kind)."""
    wait_for(lambda: sum(changes(router).values()) > before, timeout=timeout)


def _router(tmp_path: Path, volume: ConfigMapVolume, **env: str) -> Router:
    return Router(tmp_path / "router", config_dir=volume.directory, drain_seconds=DRAIN, env=env)


@pytest.mark.timeout(300)
def test_untouched_connections_survive_fifty_edits(
    tmp_path: Path,
    volume: ConfigMapVolume,
    *,
    dns: DnsServer,
    echo_a: NamedEcho,
    origin: HttpOrigin,
    origin_b: HttpOrigin,
) -> None:
    """20 TCP connections and 5 CONNECT tunnels on routes no edit names: 0 cut in 50 edits
    (routes added and removed, another route's destinations, allow_from and policy)."""
    db, pxy, pxy2, web, churn = (free_port() for _ in range(5))
    web_dests = [
        [f"127.0.0.1:{origin.port}"],
        [f"127.0.0.1:{origin.port}", f"127.0.0.1:{origin_b.port}"],
    ]
    allow = [["127.0.0.0/8"], ["127.0.0.0/8", "10.0.0.0/8"]]
    policies = [["127.0.0.1/32"], ["127.0.0.1/32", "*.example.test"]]
    state = {"churn": False, "dests": 0, "allow": 0, "policy": 0}

    def routes() -> list[dict[str, Any]]:
        out = [
            _tcp("db", db, echo_a),
            _proxy("pxy", pxy, ["127.0.0.1/32"]),
            _proxy("pxy2", pxy2, policies[state["policy"]]),
            {
                "name": "web",
                "listen": f"127.0.0.1:{web}",
                "mode": "http",
                "destinations": web_dests[state["dests"]],
                "allow_from": allow[state["allow"]],
            },
        ]
        if state["churn"]:
            out.append(_tcp("churn", churn, echo_a))
        return out

    _publish(volume, dns, routes())
    router = _router(tmp_path, volume)
    try:
        router.start()
        held = [Held(db, f"db#{i}") for i in range(20)]
        held += [Tunnel(pxy, f"127.0.0.1:{echo_a.port}", f"tunnel#{i}") for i in range(5)]
        assert all(h.ping() for h in held)
        first_worker = router.worker_pid()
        deadline = time.monotonic() + 240
        for i in range(50):
            assert time.monotonic() < deadline, f"only {i} edits in time"
            step = i % 5
            if step in (0, 1):
                state["churn"] = not state["churn"]  # a route added, then removed: reloads
            elif step == 2:
                state["dests"] ^= 1  # another route's destinations: at runtime
            elif step == 3:
                state["allow"] ^= 1  # another route's allow_from: at runtime
            else:
                state["policy"] ^= 1  # another route's policy list: at runtime (map files)
            before = sum(changes(router).values())
            _publish(volume, dns, routes())
            _applied(router, before)
            if i % 10 == 9:
                cut = [h.label for h in held if not h.ping(f"edit{i}")]
                assert cut == [], f"after {i + 1} edits: {cut}"
        assert http_get(web) in ("origin-a", "origin-b")
        cut = [h.label for h in held if not h.ping("last")]
        assert cut == []
        kinds = changes(router)
        assert kinds["runtime"] >= 30
        assert kinds["reload"] >= 20
        assert router.worker_pid() != first_worker
        samples = scrape(router)
        # The first worker still carries the 25 connections, and only it is old.
        assert value(samples, "haproxy_egress_old_workers") == 1
        assert value(samples, "haproxy_egress_old_worker_connections") >= 25
        assert value(samples, "haproxy_egress_old_worker_rss_bytes") > 0
        assert value(samples, "haproxy_egress_connections_ended_total", reason="denied") == 0
        for h in held:
            h.close()
    finally:
        router.stop()


@pytest.mark.timeout(120)
def test_denied_connections_end_after_the_drain(
    tmp_path: Path,
    volume: ConfigMapVolume,
    *,
    dns: DnsServer,
    echo_a: NamedEcho,
    echo_b: NamedEcho,
) -> None:
    """A client dropped from allow_from, a destination removed, a route removed, a policy
    changed: those connections end within drain + 5 s; the others do not."""
    keep, gone, narrow, two, pxy = (free_port() for _ in range(5))
    target = f"127.0.0.1:{echo_a.port}"

    def routes(edit: int) -> list[dict[str, Any]]:
        out = [
            _tcp("keep", keep, echo_a),
            _tcp(
                "narrow", narrow, echo_a, allow_from=["127.0.0.0/8"] if edit < 1 else ["10.0.0.0/8"]
            ),
            _tcp("two", two, *((echo_a, echo_b) if edit < 1 else (echo_a,))),
            _proxy("pxy", pxy, ["127.0.0.1/32"] if edit < 2 else ["127.0.0.2/32"]),
        ]
        if edit < 2:
            out.append(_tcp("gone", gone, echo_a))
        return out

    _publish(volume, dns, routes(0))
    router = _router(tmp_path, volume)
    try:
        router.start()
        kept = [Held(keep, "keep"), Held(keep, "keep")]
        narrowed = [Held(narrow, "narrow"), Held(narrow, "narrow")]
        pair = [Held(two, f"two#{i}") for i in range(4)]
        gone_conns = [Held(gone, "gone"), Held(gone, "gone")]
        tunnels = [Tunnel(pxy, target, "tunnel"), Tunnel(pxy, target, "tunnel")]
        assert all(h.ping() for h in kept + narrowed + pair + gone_conns + tunnels)
        on_b = [h for h in pair if h.origin == "b"]
        on_a = [h for h in pair if h.origin == "a"]
        assert on_a
        assert on_b
        worker = router.worker_pid()

        # Edit 1, at runtime: 127.0.0.1 leaves allow_from of `narrow`; `two` loses echo b.
        before = sum(changes(router).values())
        edited = time.monotonic()
        _publish(volume, dns, routes(1))
        _applied(router, before)
        assert changes(router)["runtime"] == 1
        assert router.worker_pid() == worker
        # Not cut at once: the drain time is theirs to finish.
        assert all(h.ping("still") for h in narrowed + on_b)
        wait_for(lambda: all(h.ended() for h in narrowed + on_b), timeout=DRAIN + 5)
        assert time.monotonic() - edited >= DRAIN - 0.5
        assert time.monotonic() - edited <= DRAIN + 5

        # Edit 2, a reload: route `gone` removed, `pxy`'s policy changed.
        before = sum(changes(router).values())
        edited = time.monotonic()
        _publish(volume, dns, routes(2))
        _applied(router, before)
        assert router.worker_pid() != worker
        wait_for(lambda: all(h.ended() for h in gone_conns + tunnels), timeout=DRAIN + 5)
        assert time.monotonic() - edited <= DRAIN + 5

        survivors = kept + on_a
        assert [h.label for h in survivors if not h.ping("after")] == []
        want = len(narrowed) + len(on_b) + len(gone_conns) + len(tunnels)
        name = "haproxy_egress_connections_ended_total"
        wait_for(lambda: value(scrape(router), name, reason="denied") == want, timeout=5)
        log = router.stderr()
        assert "client no longer in allow_from" in log
        assert "destination removed" in log
        assert "route removed" in log
        assert "policy changed" in log
        for h in kept + narrowed + pair + gone_conns + tunnels:
            h.close()
    finally:
        router.stop()


@pytest.mark.timeout(120)
def test_old_worker_count_bound_ends_the_oldest(
    tmp_path: Path, volume: ConfigMapVolume, echo_a: NamedEcho
) -> None:
    keep = free_port()
    extra = [free_port() for _ in range(3)]
    _publish(volume, None, [_tcp("keep", keep, echo_a)])
    router = _router(tmp_path, volume, EGRESS_MAX_OLD_WORKERS="2")
    held: list[Held] = []
    try:
        router.start()
        for i in range(3):
            held.append(Held(keep, f"conn#{i}"))
            assert held[-1].ping()
            before = sum(changes(router).values())
            routes = [_tcp("keep", keep, echo_a)] + [
                _tcp(f"x{j}", extra[j], echo_a) for j in range(i + 1)
            ]
            _publish(volume, None, routes)  # each adds a route: a reload; 3 old workers
            _applied(router, before)
        # The oldest (holding conn#0) is ended; the two newer old workers keep theirs.
        wait_for(held[0].ended, timeout=10)
        assert held[1].ping()
        assert held[2].ping()
        ended = "haproxy_egress_old_workers_ended_total"
        wait_for(lambda: value(scrape(router), ended, reason="count") == 1, timeout=5)
        samples = scrape(router)
        assert value(samples, "haproxy_egress_connections_ended_total", reason="count") == 1
        wait_for(lambda: value(scrape(router), "haproxy_egress_old_workers") == 2, timeout=10)
        assert "more than 2 old workers" in router.stderr()
    finally:
        for h in held:
            h.close()
        router.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("env", "reason", "words"),
    [
        ({"EGRESS_OLD_WORKER_MAX_AGE": "2"}, "age", "old for more than 2s"),
        ({"EGRESS_OLD_WORKER_MAX_RSS_MB": "1"}, "memory", "RSS above 1 MB"),
    ],
    ids=["age", "memory"],
)
def test_old_worker_age_and_memory_bounds(
    tmp_path: Path,
    volume: ConfigMapVolume,
    *,
    echo_a: NamedEcho,
    env: dict[str, str],
    reason: str,
    words: str,
) -> None:
    keep, other = free_port(), free_port()
    _publish(volume, None, [_tcp("keep", keep, echo_a)])
    router = _router(tmp_path, volume, **env)
    held: list[Held] = []
    try:
        router.start()
        conn = Held(keep, "conn")
        held.append(conn)
        assert conn.ping()
        before = sum(changes(router).values())
        _publish(volume, None, [_tcp("keep", keep, echo_a), _tcp("other", other, echo_a)])
        _applied(router, before)
        wait_for(conn.ended, timeout=10)
        name = "haproxy_egress_old_workers_ended_total"
        wait_for(lambda: value(scrape(router), name, reason=reason) == 1, timeout=5)
        assert words in router.stderr()
        fresh = Held(keep, "fresh")  # the route itself serves on, in the new worker
        held.append(fresh)
        assert fresh.ping()
    finally:
        for h in held:
            h.close()
        router.stop()
