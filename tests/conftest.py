"""Shared fixtures: a private run dir, origins and a DNS server, all stopped in teardown."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.router import Router, stopped_after
from tests.support import DnsServer, EchoOrigin, HttpOrigin

# Hypothesis profiles, registered once for every test module: `ci` (the default, bounded),
# `dev` (more examples) and `nightly` (the opt-in long run; FUZZ_SCALE multiplies the fuzz
# budgets). HYPOTHESIS_PROFILE picks one.
QUIET = [
    HealthCheck.too_slow,
    HealthCheck.filter_too_much,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("INJECTION_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=QUIET,
)
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=QUIET)
settings.register_profile("nightly", max_examples=1000, deadline=None, suppress_health_check=QUIET)
# Registered profiles do nothing until one is loaded: without this line every property test ran
# with Hypothesis's own defaults, whose 200 ms deadline a loaded machine exceeds.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def routers() -> Iterator[list[Router]]:
    """Routers a test starts (append them); each is stopped, by its pid, afterwards."""
    yield from stopped_after(list[Router]())


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A private run dir (sockets, pid file, live config) like the emptyDir of the pod."""
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def origin() -> Iterator[HttpOrigin]:
    """One HTTP origin on 127.0.0.1 that answers with its name ("origin-a")."""
    o = HttpOrigin("origin-a").start()
    yield o
    o.stop()


@pytest.fixture
def origin_b() -> Iterator[HttpOrigin]:
    """A second HTTP origin ("origin-b")."""
    o = HttpOrigin("origin-b").start()
    yield o
    o.stop()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 with no records yet; tests add them."""
    d = DnsServer().start()
    yield d
    d.stop()


@pytest.fixture
def echo() -> Iterator[EchoOrigin]:
    """An origin answering with the request headers it received, as JSON."""
    o = EchoOrigin().start()
    yield o
    o.stop()
