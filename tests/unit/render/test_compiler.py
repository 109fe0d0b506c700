"""Rendering: golden files (each one accepted by `haproxy -c`), determinism, atomic writes.

Each directory under tests/data/golden/ holds the inputs of one case (`configmap/*.yaml`, and
`env` with KEY=VALUE lines) and the expected `haproxy.cfg`. Regenerate after an intended
template change with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/render/test_compiler.py` and
review the diff.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from haproxy_egress import __version__
from haproxy_egress.config.sources import load_snapshot, read_snapshot
from haproxy_egress.render.compiler import RenderOptions, render, write_atomic
from haproxy_egress.render.hooks import resolve
from haproxy_egress.render.maps import pattern_files
from haproxy_egress.rundir import RunDir
from haproxy_egress.runtime import staging
from tests.support import HAPROXY

GOLDEN = Path(__file__).parent.parent.parent / "data" / "golden"
CASES = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())
OPTIONS = {
    "stats-page": RenderOptions(
        run_dir=Path("/run/haproxy-egress"),
        log_stdout=True,
        threads=2,
    ),
}
DEFAULT_OPTIONS = RenderOptions(run_dir=Path("/run/haproxy-egress"))


def read_env(case: Path) -> dict[str, str]:
    path = case / "env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip())
    return {k: v for k, v in pairs}


def render_case(name: str) -> str:
    case = GOLDEN / name
    config = load_snapshot(read_snapshot(case / "configmap"), read_env(case))
    text = render(config, OPTIONS.get(name, DEFAULT_OPTIONS))
    # The version in the header changes with every release; the goldens do not.
    return text.replace(f"haproxy-egress {__version__}.", "haproxy-egress VERSION.", 1)


# Expected in the resolv-conf case only: inside the private namespace the host's nameserver is
# unreachable, so haproxy starts the route with unresolved slots (which is the point).
OFFLINE_WARNINGS = ("could not resolve address", "can't connect socket for nameserver")
# A policy route's frontend is mode tcp and switches plain HTTP requests to an HTTP stream
# (`switch-mode http`); haproxy -c cannot see that, and warns about the 403/503 bodies' format.
SWITCH_MODE_WARNING = "HTTP log/header format not usable with frontend"


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c` in a fresh network namespace with only loopback up: a name that reached
    libc (init-addr libc) fails there at once instead of querying the host's resolver."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed to check configs without network access"
    script = 'ip link set lo up && exec "$0" -c -f "$1"'
    return subprocess.run(
        [unshare, "--net", "sh", "-c", script, HAPROXY, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_there_are_golden_cases() -> None:
    assert len(CASES) >= 5


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str, tmp_path: Path) -> None:
    text = render_case(name)
    expected = GOLDEN / name / "haproxy.cfg"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected.write_text(text)
    assert text == expected.read_text(), f"{name}: rendering differs from {expected}"
    # haproxy -c loads the Lua files the config names: stage them in a scratch run dir.
    run = RunDir(tmp_path / "run")
    case = GOLDEN / name
    config = load_snapshot(read_snapshot(case / "configmap"), read_env(case))
    staging.stage(resolve(config), run.lua)
    staging.write_maps(run.maps, pattern_files(config))
    candidate = tmp_path / "haproxy.cfg"
    candidate.write_text(text.replace(f"{DEFAULT_OPTIONS.run_dir}/", f"{run.root}/"))
    proc = haproxy_check(candidate)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # The golden run dir does not exist here; the router creates the state file itself.
    warnings = [
        line
        for line in output.splitlines()
        if "[WARNING]" in line
        and "server state file" not in line
        and not (config.policy_routes and SWITCH_MODE_WARNING in line)
    ]
    if name == "resolv-conf":
        assert warnings, "libc resolution should have failed offline"
        warnings = [w for w in warnings if not any(o in w for o in OFFLINE_WARNINGS)]
    assert warnings == [], output


@pytest.mark.parametrize("name", CASES)
def test_rendering_is_deterministic_in_process(name: str) -> None:
    assert render_case(name) == render_case(name)


def test_rendering_is_deterministic_across_processes() -> None:
    """Byte-identical output whatever the hash seed and the order of the environment."""
    case = GOLDEN / "multi-route"
    env_vars = read_env(GOLDEN / "seed-env")
    outputs = []
    for seed, order in (("1", 1), ("2", -1), ("12345", 1)):
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONHASHSEED": seed}
        env.update(dict(list(env_vars.items())[::order]))
        env.update({"EGRESS_CONFIG_DIR": str(case / "configmap"), "EGRESS_RUN_DIR": "/run/x"})
        proc = subprocess.run(
            [sys.executable, "-m", "haproxy_egress.cli", "render"],
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    assert b"frontend tst-scr-svc" in outputs[0]
    assert b"frontend api.partner" in outputs[0]


def test_resolvers_section_only_for_names() -> None:
    assert "\nresolvers dns\n" not in render_case("seed-env")
    text = render_case("issue-example")
    assert "\nresolvers dns\n    nameserver ns1 127.0.0.1:53\n" in text
    assert "default-server init-addr last,none\n" in text
    resolv = render_case("resolv-conf")
    assert "    parse-resolv-conf\n" in resolv
    assert "default-server init-addr last,libc,none\n" in resolv


def test_uploads_splice_once_they_stream_by_default() -> None:
    """Every route splices what the destination sends, and what the client sends once it
    streams (splice-auto), without a route knob; `splice: both` still forces request splicing.
    test_golden shows each case passes `haproxy -c` (run it with EGRESS_HAPROXY_BIN for 3.0)."""
    for name in CASES:
        text = render_case(name)
        defaults = text.split("\ndefaults\n", 1)[1].split("\n\n", 1)[0]
        assert "    option splice-response\n    option splice-auto\n" in defaults, name
    assert "    option splice-request\n" in render_case("datapath-knobs")


def test_unprivileged_config() -> None:
    for name in CASES:
        text = render_case(name)
        directives = {line.split()[0] for line in text.splitlines() if line.startswith("    ")}
        assert not directives & {"chroot", "user", "group", "daemon", "uid", "gid"}, name
        assert "pidfile /run/haproxy-egress/haproxy.pid" in text


def test_render_options() -> None:
    text = render_case("stats-page")
    assert "    log stdout len 8192 format raw local0 info\n" in text
    assert "    nbthread 2\n" in text
    # No timer and no reload count ends old workers: the supervisor bounds them.
    assert "hard-stop-after" not in text
    assert "\n    mworker-max-reloads" not in text
    default = render_case("seed-env")
    assert "    log unix@/run/haproxy-egress/log.sock " in default
    assert "nbthread" not in default


def test_write_atomic(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "haproxy.cfg"
    write_atomic(path, "one\n")
    write_atomic(path, "two\n", mode=0o600)
    assert path.read_text() == "two\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["haproxy.cfg"]  # no temp file left


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    write_atomic(path, "good\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, "bad \udc80\n")
    assert path.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["haproxy.cfg"]
