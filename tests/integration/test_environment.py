"""The router in a pod that is set up wrong, and the read-only commands as an arbitrary UID.

OpenShift runs the container as a random non-root UID with read-only mounts; a new user tries
`docker run --read-only --tmpfs /run`. Each mistake must give one line naming the path, the
UID/GID and the fix (exit 2, no traceback), and the commands that only look at a
configuration (`render`, `check`, `diff`, `explain`, `migrate`, `schema`) must work as such a
user and write nothing anywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from haproxy_egress.errors import ExitCode
from tests.support import HAPROXY, write_configmap

NOBODY = 65534
ROUTES = {
    "routes.yaml": {
        "version": 1,
        "resolvers": {"nameservers": ["127.0.0.1:5353"]},
        "routes": [
            {"name": "db", "listen": 15432, "destinations": ["192.0.2.10:5432"]},
            {"name": "web-proxy", "listen": 13128, "mode": "proxy", "policy": ["*.example.com"]},
        ],
    }
}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path below `root` with its size and mtime: what "wrote nothing" compares."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory tree others may read (pytest's tmp_path is private to root): a ConfigMap
    dir, read-only like the kubelet mounts it, and a run dir the test sets up."""
    top = Path(tempfile.mkdtemp(prefix="egress-env-", dir="/tmp"))
    top.chmod(0o755)
    config = top / "config"
    write_configmap(config, ROUTES)
    for path in (config, *config.iterdir()):
        path.chmod(0o555 if path.is_dir() else 0o444)
    yield top
    for path in top.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(top)


def cli(
    args: list[str], env: dict[str, str], uid: int | None = NOBODY
) -> subprocess.CompletedProcess[str]:
    """`haproxy-egress ARGS` as `uid` (setpriv), with a clean environment plus `env`."""
    prefix = (
        [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    )
    return subprocess.run(
        [*prefix, sys.executable, "-m", "haproxy_egress.cli", *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "EGRESS_HAPROXY_BIN": HAPROXY, **env},
        timeout=60,
        check=False,
        cwd="/",
    )


def one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == ExitCode.CONFIG, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_read_only_commands_run_as_an_arbitrary_uid_and_write_nothing(world: Path) -> None:
    run_dir = world / "run"
    run_dir.mkdir()
    # What a running router left there, owned by another user: diff reads it, nobody writes.
    (run_dir / "haproxy.cfg").write_text("# an older configuration\n")
    run_dir.chmod(0o555)
    # The commands' own temporary directory (TMPDIR), so that what other processes on this
    # machine write to /tmp meanwhile cannot be mistaken for theirs.
    scratch = world.parent / f"{world.name}-tmp"
    scratch.mkdir(mode=0o1777)
    scratch.chmod(0o1777)
    env = {
        "EGRESS_CONFIG_DIR": str(world / "config"),
        "EGRESS_RUN_DIR": str(run_dir),
        "TMPDIR": str(scratch),
    }
    before = snapshot(world)
    results = {
        "render": cli(["render"], env),
        "check": cli(["check"], env),
        "diff": cli(["diff"], env),
        "explain": cli(["explain", "https://api.example.com", "--no-resolve"], env),
        "migrate": cli(["migrate"], {**env, "EGRESS_DESTINATION": "80 tcp 192.0.2.25"}),
        "schema": cli(["schema"], env),
    }
    expected = {"render": 0, "check": 0, "diff": 1, "explain": 0, "migrate": 0, "schema": 0}
    for name, proc in results.items():
        assert proc.returncode == expected[name], (name, proc.stderr)
        assert "Traceback" not in proc.stderr, name
    assert "frontend db" in results["render"].stdout
    assert results["check"].stdout == "configuration OK: 2 routes\n"
    assert snapshot(world) == before
    # `check` works in a scratch directory of its own and removes it again.
    assert list(scratch.iterdir()) == []


def test_run_with_an_unwritable_run_dir_says_which_uid_and_what_to_mount(world: Path) -> None:
    run_dir = world / "run"
    run_dir.mkdir()  # owned by root, mode 755: the arbitrary UID may not write
    env = {"EGRESS_CONFIG_DIR": str(world / "config"), "EGRESS_RUN_DIR": str(run_dir)}
    line = one_clear_line(cli(["run"], env))
    assert f"EGRESS_RUN_DIR {run_dir} is not writable as uid {NOBODY} gid {NOBODY}" in line
    assert "owner uid 0 gid 0, mode 0755" in line
    assert "mount a writable emptyDir at EGRESS_RUN_DIR" in line


def test_run_with_a_run_dir_that_cannot_be_created(world: Path) -> None:
    run_dir = world / "readonly" / "run"
    run_dir.parent.mkdir(mode=0o555)
    env = {"EGRESS_CONFIG_DIR": str(world / "config"), "EGRESS_RUN_DIR": str(run_dir)}
    line = one_clear_line(cli(["run"], env))
    assert f"EGRESS_RUN_DIR {run_dir} cannot be created (Permission denied)" in line
    assert f"as uid {NOBODY}" in line


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("EGRESS_HAPROXY_BIN", "haproxy not found: EGRESS_HAPROXY_BIN='/nonexistent/haproxy'"),
        ("EGRESS_SOCKLOG_BIN", "socklog not found: EGRESS_SOCKLOG_BIN='/nonexistent/socklog'"),
    ],
)
def test_run_with_a_missing_binary_names_the_setting(
    world: Path, variable: str, expected: str
) -> None:
    run_dir = world / "run"
    run_dir.mkdir()
    run_dir.chmod(0o777)  # writable for the arbitrary UID (mkdir's mode is cut by the umask)
    env = {
        "EGRESS_CONFIG_DIR": str(world / "config"),
        "EGRESS_RUN_DIR": str(run_dir),
        # socklog is needed only as the sink it is (the default is the log relay).
        "EGRESS_LOG": "socklog",
        variable: "/nonexistent/" + variable.split("_")[1].lower(),
    }
    line = one_clear_line(cli(["run"], env))
    assert expected in line
    if variable == "EGRESS_SOCKLOG_BIN":
        assert "or set EGRESS_LOG=stdout" in line
    assert os.listdir(run_dir) == []  # nothing was started, nothing written


def test_an_unreadable_config_dir_is_named(world: Path) -> None:
    config = world / "config"
    config.chmod(0o700)  # root's; the arbitrary UID may not list it
    env = {"EGRESS_CONFIG_DIR": str(config), "EGRESS_RUN_DIR": str(world / "run")}
    line = one_clear_line(cli(["check"], env))
    assert f"EGRESS_CONFIG_DIR {config} is not readable as uid {NOBODY}" in line


def test_a_read_only_config_dir_is_normal(world: Path) -> None:
    """ConfigMap mounts are read-only: that is no problem for any command (the world fixture's
    config dir is mode 555 with 444 files)."""
    env = {"EGRESS_CONFIG_DIR": str(world / "config"), "EGRESS_RUN_DIR": str(world / "run")}
    assert cli(["check"], env).returncode == 0
