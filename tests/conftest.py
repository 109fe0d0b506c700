"""Shared fixtures: a private run dir, origins and a DNS server, all stopped in teardown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import DnsServer, EchoOrigin, HttpOrigin


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
