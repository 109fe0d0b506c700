"""The policy routes' golden output: haproxy.cfg and every map file, byte for byte, and
`haproxy -c` accepting them (tests/data/policy-golden/; UPDATE_GOLDEN=1 rewrites the files).

A change to the policy template or to render/maps.py shows here as a reviewable diff."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from haproxy_egress import __version__
from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.haproxy.check import check
from haproxy_egress.render import hooks
from haproxy_egress.render.compiler import RenderOptions, render
from haproxy_egress.render.maps import render_maps
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.support import HAPROXY

CASE = Path(__file__).parent.parent / "data" / "policy-golden"
RUN_DIR = Path("/run/haproxy-egress")
USERS = CASE / "secret" / "users"  # the proxy users file (fixed salts), as a Secret mount


def _rendered() -> tuple[str, dict[str, str]]:
    config = load_snapshot(read_snapshot(CASE / "configmap", USERS), {})
    text = render(config, RenderOptions(run_dir=RUN_DIR))
    return text.replace(f"haproxy-egress {__version__}.", "haproxy-egress VERSION.", 1), (
        render_maps(config)
    )


def test_policy_golden() -> None:
    text, maps = _rendered()
    expected = {"haproxy.cfg": text} | {f"maps/{name}": body for name, body in maps.items()}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        for name, body in expected.items():
            (CASE / name).parent.mkdir(exist_ok=True)
            (CASE / name).write_text(body)
    on_disk = {
        str(p.relative_to(CASE)): p.read_text()
        for p in [CASE / "haproxy.cfg", *sorted((CASE / "maps").iterdir())]
    }
    # Every user's credential is checked against exactly its own golden entry.
    assert "jenkins 0202020202020202:" in on_disk["maps/staff.users.map"]
    assert on_disk.keys() == expected.keys()
    for name, body in expected.items():
        assert on_disk[name] == body, f"{name} differs from the golden file"
    with tempfile.TemporaryDirectory(prefix="policy-golden.") as tmp:
        run = RunDir(Path(tmp))
        config = load_snapshot(read_snapshot(CASE / "configmap", USERS), {})
        staging.stage(hooks.resolve(config).including(hooks.shipped_lua("connect")), run.lua)
        staging.write_maps(run.maps, maps)
        (run.root / "server-state").write_text("")
        run.config.write_text(text.replace(str(RUN_DIR), tmp))
        check(run.config, HAPROXY)
