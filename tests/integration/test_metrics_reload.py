"""/metrics while the router reloads haproxy: every scrape during the reloads is a whole,
parseable answer (haproxy_up 1 from one worker's rows, or 0), and the first gzipped scrape
after a route is added shows it, though the scrape before kept its pieces.
"""

from __future__ import annotations

import gzip
import http.client
import threading
import time
from functools import partial
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.kubelet import ConfigMapVolume
from tests.router import Router
from tests.router import http_route as route
from tests.support import HttpOrigin, free_port, http_get, wait_for

GZIP = {"Accept-Encoding": "gzip"}


def serves(port: int) -> bool:
    return http_get(port, timeout=1) == "origin-a"


def scrape(port: int, headers: dict[str, str]) -> dict[tuple[str, str], float]:
    """{(sample name, frontend label): value} of one scrape, gunzipped if it came so."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200
        if response.getheader("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    finally:
        conn.close()
    return {
        (s.name, s.labels.get("frontend", "")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_scrapes_during_reloads_are_whole_and_show_the_new_routes(
    tmp_path: Path, origin: HttpOrigin
) -> None:
    volume = ConfigMapVolume(tmp_path / "configmap")
    ports = [free_port() for _ in range(4)]
    routes = [route("r0", ports[0], origin)]
    volume.write({"routes.yaml": {"version": 1, "routes": routes}})
    router = Router(tmp_path / "router", config_dir=volume.directory, drain_seconds=2)
    try:
        router.start()
        metrics = router.metrics_port
        scrape(metrics, GZIP)  # pieces kept for the next gzipped scrape
        stop = threading.Event()
        seen: list[dict[tuple[str, str], float]] = []
        failed: list[Exception] = []

        def scraper() -> None:
            deadline = time.monotonic() + 60
            while not stop.is_set() and len(seen) < 400 and time.monotonic() < deadline:
                try:
                    seen.append(scrape(metrics, GZIP if len(seen) % 2 else {}))
                except Exception as exc:  # reported below, in the test's thread
                    failed.append(exc)
                    return

        thread = threading.Thread(target=scraper)
        thread.start()
        try:
            for n in range(1, 4):  # each added route is a reload
                routes = [*routes, route(f"r{n}", ports[n], origin)]
                volume.write({"routes.yaml": {"version": 1, "routes": routes}})
                wait_for(partial(serves, ports[n]), timeout=15)
        finally:
            stop.set()
            thread.join(30)
        assert not failed, failed
        assert seen
        for samples in seen:
            up = samples[("haproxy_up", "")]
            assert up in (0.0, 1.0)
            if up:  # one worker's rows, whole: the first route's always among them
                assert ("haproxy_frontend_sessions_total", "r0") in samples
        wait_for(lambda: router.metric("haproxy_egress_reloads_total") == 3.0, timeout=10)
        for n in range(4):
            assert http_get(ports[n]) == "origin-a"
        latest = scrape(metrics, GZIP)
        for n in range(4):
            assert latest[("haproxy_frontend_sessions_total", f"r{n}")] >= 1
    finally:
        router.stop()
