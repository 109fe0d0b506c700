"""The recorder (tools/record_haproxy.py) against the installed haproxy: it still puts haproxy
in the state the parser tests expect, and every parser reads today's answers, so an upgrade
that changes a format fails here before the recorded files are refreshed."""

from __future__ import annotations

from pathlib import Path

from tests.support import HAPROXY
from tests.unit.haproxy.recorded import CHECKS
from tools.record_haproxy import record


def test_fresh_recording_of_the_installed_haproxy_parses(tmp_path: Path) -> None:
    directory = record(HAPROXY, tmp_path)
    assert (directory / "facts.json").exists()
    for check in CHECKS:
        check(directory)
