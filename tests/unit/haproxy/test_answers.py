"""Every parser of the haproxy package on real answers recorded from each haproxy version the
router runs on (tests/data/haproxy/<version>/, re-recorded by tools/record_haproxy.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.haproxy.recorded import CHECKS, DATA, VERSIONS


def test_both_haproxy_versions_the_router_runs_on_are_recorded() -> None:
    # 2.6: Debian 12, where the tests run; 3.0: Debian 13, the image.
    assert {"2.6", "3.0"} <= set(VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_parser_on_recorded_answer(version: str, check: Callable[[Path], None]) -> None:
    check(DATA / version)
