"""nbthread from the pod's CPU limit: cgroup trees laid out as the kernel does, in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haproxy_egress.runtime.cpus import default_threads, quota_cpus


def _proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def _file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


V2_ROOT = "0::/\n"


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000", None), ("100000 100000", 1), ("150000 100000", 2), ("10000 100000", 1)],
)
def test_cgroup_v2_limit_rounds_up(tmp_path: Path, cpu_max: str, cpus: int | None) -> None:
    _file(tmp_path / "fs" / "cpu.max", cpu_max)
    assert quota_cpus(tmp_path / "fs", _proc(tmp_path, V2_ROOT)) == cpus


def test_cgroup_v2_nested_takes_the_tightest_ancestor(tmp_path: Path) -> None:
    """Without a cgroup namespace the process sits deep in the host's tree; the limit may be
    on its own cgroup or any parent (the pod's), and the tightest one counts."""
    fs = tmp_path / "fs"
    _file(fs / "cpu.max", "max 100000")
    _file(fs / "kubepods" / "pod1" / "cpu.max", "250000 100000")
    _file(fs / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000")
    proc = _proc(tmp_path, "0::/kubepods/pod1/ctr\n")
    assert quota_cpus(fs, proc) == 3
    _file(fs / "kubepods" / "cpu.max", "120000 100000")
    assert quota_cpus(fs, proc) == 2


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_limit(tmp_path: Path, mount: str) -> None:
    fs = tmp_path / "fs"
    _file(fs / mount / "cpu.cfs_quota_us", "-1")
    _file(fs / mount / "cpu.cfs_period_us", "100000")
    proc = _proc(tmp_path, "4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n")
    assert quota_cpus(fs, proc) is None
    _file(fs / mount / "docker" / "abc" / "cpu.cfs_quota_us", "250000")
    _file(fs / mount / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    assert quota_cpus(fs, proc) == 3


def test_host_path_missing_in_the_mount_falls_back_to_the_mount(tmp_path: Path) -> None:
    """v1 without a cgroup namespace: /proc says the host path, the mount is the container's."""
    fs = tmp_path / "fs"
    _file(fs / "cpu" / "cpu.cfs_quota_us", "100000")
    _file(fs / "cpu" / "cpu.cfs_period_us", "100000")
    assert quota_cpus(fs, _proc(tmp_path, "3:cpu:/kubepods/burstable/pod9/ctr\n")) == 1


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    proc = _proc(tmp_path, V2_ROOT)
    assert quota_cpus(tmp_path, proc) is None
    assert default_threads(tmp_path, proc) == 0


def test_threads_only_below_the_visible_cpus_and_at_most_64(tmp_path: Path) -> None:
    visible = len(os.sched_getaffinity(0))
    proc = _proc(tmp_path, V2_ROOT)
    _file(tmp_path / "cpu.max", f"{visible * 100000} 100000")
    assert default_threads(tmp_path, proc) == 0
    _file(tmp_path / "cpu.max", "100000 100000")
    assert default_threads(tmp_path, proc) == (1 if visible > 1 else 0)


def test_unreadable_limit_is_no_opinion(tmp_path: Path) -> None:
    _file(tmp_path / "cpu.max", "lots 100000")
    assert default_threads(tmp_path, _proc(tmp_path, V2_ROOT)) == 0
