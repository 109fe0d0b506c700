"""nbthread from the pod's CPU limit: the cgroup files as the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from haproxy_egress.cpus import default_threads, quota_cpus


def _v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def _v1(tmp_path: Path, quota: str, period: str) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(period + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [("max 100000", None), ("100000 100000", 1), ("150000 100000", 2), ("10000 100000", 1)],
)
def test_cgroup_v2_limit_rounds_up(tmp_path: Path, cpu_max: str, cpus: int | None) -> None:
    assert quota_cpus(_v2(tmp_path, cpu_max)) == cpus


@pytest.mark.parametrize(
    ("quota", "period", "cpus"), [("-1", "100000", None), ("250000", "100000", 3)]
)
def test_cgroup_v1_limit(tmp_path: Path, quota: str, period: str, cpus: int | None) -> None:
    assert quota_cpus(_v1(tmp_path, quota, period)) == cpus


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert quota_cpus(tmp_path) is None
    assert default_threads(tmp_path) == 0


def test_threads_only_when_the_limit_is_below_the_visible_cpus(tmp_path: Path) -> None:
    visible = len(os.sched_getaffinity(0))
    assert default_threads(_v2(tmp_path, f"{visible * 100000} 100000")) == 0
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert default_threads(tmp_path) == (1 if visible > 1 else 0)


def test_unreadable_limit_is_no_opinion(tmp_path: Path) -> None:
    assert default_threads(_v2(tmp_path, "lots 100000")) == 0
