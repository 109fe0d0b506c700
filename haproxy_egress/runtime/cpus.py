"""How many CPUs the container may really use, for haproxy's `nbthread`.

haproxy starts one thread per CPU in its affinity mask. In a pod with a CPU limit on a large
node that is the node's count (say 64 threads for a 1-CPU limit): the threads then contend for
the CFS quota and the kernel throttles the whole process every period, which shows up as
latency spikes. The quota is in the cgroup (`cpu.max` on cgroup v2, `cpu.cfs_quota_us` and
`cpu.cfs_period_us` on v1), on the process's own cgroup or any parent of it; a limit of 1.5
CPUs gives 2 threads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
MAX_THREADS = 64  # haproxy 2.6 refuses a larger nbthread
V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """This process's cgroup path in the v2 hierarchy and in v1's cpu controller."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _upwards(mount: Path, path: str | None) -> Iterator[Path]:
    """The cgroup directory of `path` under `mount`, then each parent up to the mount itself.
    Without a cgroup namespace the path is the host's and may not exist in the mount: then
    only the mount (the container's own cgroup) is found."""
    rel = PurePosixPath(path or "/").relative_to("/")
    for part in (rel, *rel.parents):
        yield mount / part


def _limit_v2(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")  # "max 100000" or "150000 100000"
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    return None if quota == "max" or not period else int(quota) / int(period)


def _limit_v1(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def quota_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The tightest CPU limit on this process's cgroup and its parents, rounded up; None when
    there is none. ValueError when a cgroup file cannot be parsed."""
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    limits = [limit for d in _upwards(root, v2_path) if (limit := _limit_v2(d)) is not None]
    for name in V1_CPU_MOUNTS:
        limits += [
            limit for d in _upwards(root / name, v1_path) if (limit := _limit_v1(d)) is not None
        ]
    if not limits:
        return None
    return max(1, math.ceil(min(limits)))


def default_threads(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """`nbthread` for haproxy: the cgroup CPU limit when it is below the CPUs haproxy would
    count, else 0 (let haproxy pick, as without a limit)."""
    try:
        quota = quota_cpus(root, proc_cgroup)
    except ValueError:  # a cgroup file we do not understand: no opinion
        return 0
    if quota is None:
        return 0
    visible = len(os.sched_getaffinity(0))
    return min(quota, MAX_THREADS) if quota < visible else 0


__all__ = ["default_threads", "quota_cpus"]
