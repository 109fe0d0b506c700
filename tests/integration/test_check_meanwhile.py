"""`haproxy -c` with work done while it runs (a reload saves the server state then): the work
is done, and the verdict is haproxy's either way, the alerts of a bad file included."""

from __future__ import annotations

from pathlib import Path

import pytest

from haproxy_egress.errors import HaproxyCheckError
from haproxy_egress.haproxy.check import check
from tests.support import HAPROXY, free_port

GOOD = """global
    log stdout format raw local0
defaults
    mode tcp
    timeout connect 1s
    timeout client 1s
    timeout server 1s
frontend f
    bind 127.0.0.1:{port}
    default_backend b
backend b
    server s 127.0.0.1:{port}
"""


def test_work_done_while_haproxy_checks_and_the_verdict_is_haproxys(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.cfg", tmp_path / "bad.cfg"
    good.write_text(GOOD.format(port=free_port()))
    bad.write_text(GOOD.format(port=free_port()).replace("default_backend b", "default_backend x"))
    done: list[str] = []
    assert "ALERT" not in check(good, HAPROXY, lambda: done.append("good"))
    with pytest.raises(HaproxyCheckError) as info:
        check(bad, HAPROXY, lambda: done.append("bad"))
    assert "'x'" in info.value.output, info.value.output
    assert done == ["good", "bad"]
    # A failure of the work stops the check and is what the caller sees.
    with pytest.raises(ZeroDivisionError):
        check(good, HAPROXY, lambda: 1 / 0)
