"""`diff` finds a running router's run dir from its haproxy master's command line."""

from __future__ import annotations

from pathlib import Path

from haproxy_egress.haproxy.program import master_argv, running_configs


def test_masters_started_as_master_argv_are_found(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    run = tmp_path / "run"
    for pid, argv in {
        "41": master_argv("haproxy", run / "haproxy.cfg", run / "master.sock"),
        "42": ["haproxy", "-f", "/elsewhere/haproxy.cfg"],  # not a router's master
        "43": ["sleep", "60"],
    }.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (proc / "self").mkdir()
    (proc / "44").mkdir()  # gone before its cmdline was read
    assert running_configs(proc) == [run / "haproxy.cfg"]
