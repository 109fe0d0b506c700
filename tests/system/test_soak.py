"""Soak: a high connection rate through several routes while the config changes every few
seconds; zero failed requests, no FD or RSS growth in the supervisor, no zombies.

Bounded by count, not time: what a leak or a lost reaping shows up in is the number of config
changes and scrapes, so CI runs 20 changes one second apart (as many as the former 60 s at one
per 3 s) and compares the resources after them with a baseline taken after the first few.
The nightly variant (200 changes, 3 s apart: 10 minutes) is marked `slow` and runs only when
EGRESS_SOAK_NIGHTLY=1 (it is reported as skipped otherwise, never as passed).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.figures import record
from tests.kubelet import ConfigMapVolume
from tests.load import LoadGen
from tests.router import Router
from tests.router import http_route as _route
from tests.support import HttpOrigin, free_port, http_get, wait_for

WARM_UP_CHANGES = 4  # changes before the baseline sample (imports, first scrapes, thread pools)
RSS_SLACK_KIB = 8 * 1024  # allocator noise; a leak per reload or per scrape exceeds it soon
FD_SLACK = 4  # a scrape or a watcher handle open at the moment of sampling


@dataclass
class Sample:
    """The supervisor's resources at one instant."""

    at: float
    rss_kib: int
    fds: int
    zombies: list[int] = field(default_factory=list)


def _sample(pid: int) -> Sample:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Sample(time.monotonic(), rss, fds, _zombie_children(pid))


def _zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(entry.name))
    return zombies


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Router]:
    r = Router(tmp_path / "router", config_dir=tmp_path / "configmap")
    yield r
    r.stop()


def soak(router: Router, origin: HttpOrigin, count: int, churn_every: float, label: str) -> None:
    """`count` config changes `churn_every` seconds apart, under load and scrapes."""
    assert router.config_dir is not None
    volume = ConfigMapVolume(router.config_dir)
    ports = [free_port() for _ in range(4)]
    base = [_route(f"r{i}", port, origin) for i, port in enumerate(ports)]
    volume.write({"routes.yaml": {"routes": base}})
    router.start()
    assert router.proc is not None
    pid = router.proc.pid
    loads = [
        # Bounded in time too: each change takes churn_every plus at most 10 s to serve.
        LoadGen(
            port,
            keepalive=False,
            clients=2,
            max_seconds=count * (churn_every + 10) + 30,
            expect="origin-a",
        )
        for port in ports
    ]
    for load in loads:
        load.start()
    samples: list[Sample] = []
    changes = scrapes = 0
    started = time.monotonic()
    next_change = started + churn_every
    baseline: Sample | None = None
    try:
        while changes < count:
            now = time.monotonic()
            if now >= next_change:
                changes += 1
                probe = free_port()
                # A real change every time: a new route and another timeout on the loaded ones.
                routes = [{**r, "connect_timeout": f"{4 + changes % 3}s"} for r in base]
                volume.write({"routes.yaml": {"routes": [*routes, _route("probe", probe, origin)]}})

                def probe_serves(p: int = probe) -> bool:
                    return http_get(p, timeout=1) == "origin-a"

                wait_for(probe_serves, timeout=10)
                next_change = time.monotonic() + churn_every
            assert requests.get(router.url("/metrics"), timeout=5).status_code == 200
            scrapes += 1
            sample = _sample(pid)
            samples.append(sample)
            if baseline is None and changes >= WARM_UP_CHANGES:
                baseline = sample
            time.sleep(0.5)
    finally:
        results = [load.stop() for load in loads]
    seconds = time.monotonic() - started
    ok = sum(r.ok for r in results)
    failed = sum(r.failed for r in results)
    errors = [e for r in results for e in r.errors][:10]
    wait_for(lambda: (router.metric("haproxy_egress_reloads_total") or 0) >= changes, timeout=10)
    time.sleep(1.0)  # last old workers finish their last responses
    final = _sample(pid)
    assert failed == 0, errors
    assert ok > seconds * 100, ok  # a high connection rate, not a trickle
    assert router.metric("haproxy_egress_reload_failures_total") == 0.0
    assert baseline is not None
    late = [s for s in samples if s.at >= baseline.at]
    assert max(s.fds for s in late) <= baseline.fds + FD_SLACK, [s.fds for s in late]
    assert final.fds <= baseline.fds + FD_SLACK
    assert final.rss_kib <= baseline.rss_kib + RSS_SLACK_KIB, (baseline.rss_kib, final.rss_kib)
    # A zombie seen at one sample may be reaped a moment later; one seen twice was never reaped.
    lingering = {z for a, b in itertools.pairwise(samples) for z in set(a.zombies) & set(b.zombies)}
    assert final.zombies == []
    assert not lingering, lingering
    record(
        label,
        seconds=round(seconds, 1),
        requests=ok,
        failures=failed,
        config_changes=changes,
        scrapes=scrapes,
        rate_per_s=round(ok / seconds),
        rss_kib_baseline=baseline.rss_kib,
        rss_kib_final=final.rss_kib,
        fds_baseline=baseline.fds,
        fds_final=final.fds,
        zombies=0,
    )


@pytest.mark.timeout(240)
def test_soak_ci(router: Router, origin: HttpOrigin) -> None:
    count = int(os.environ.get("EGRESS_SOAK_CHANGES", "20"))
    soak(router, origin, count, 1.0, f"soak: CI ({count} changes)")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    os.environ.get("EGRESS_SOAK_NIGHTLY") != "1", reason="nightly: set EGRESS_SOAK_NIGHTLY=1"
)
def test_soak_nightly(router: Router, origin: HttpOrigin) -> None:
    soak(router, origin, 200, 3.0, "soak: nightly (200 changes, 10 min)")
