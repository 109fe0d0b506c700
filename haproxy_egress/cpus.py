"""How many CPUs the container may really use, for haproxy's `nbthread`.

haproxy starts one thread per CPU in its affinity mask. In a pod with a CPU limit on a large
node that is the node's count (say 64 threads for a 1-CPU limit): the threads then contend for
the CFS quota and the kernel throttles the whole process every period, which shows up as
latency spikes. The quota is in the cgroup (`cpu.max` on cgroup v2, `cpu.cfs_quota_us` and
`cpu.cfs_period_us` on v1); a limit of 1.5 CPUs gives 2 threads.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def quota_cpus(root: Path = CGROUP_ROOT) -> int | None:
    """The CPU limit of this process's cgroup rounded up, or None when there is none."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "150000 100000"
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max" or not period:
            return None
        return max(1, math.ceil(int(quota) / int(period)))
    quota_v1, period_v1 = (
        _read(root / "cpu" / "cpu.cfs_quota_us"),
        _read(root / "cpu" / "cpu.cfs_period_us"),
    )
    if quota_v1 is None or period_v1 is None or int(quota_v1) <= 0:
        return None
    return max(1, math.ceil(int(quota_v1) / int(period_v1)))


def default_threads(root: Path = CGROUP_ROOT) -> int:
    """`nbthread` for haproxy: the cgroup CPU limit when it is below the CPUs haproxy would
    count, else 0 (let haproxy pick, as without a limit)."""
    try:
        quota = quota_cpus(root)
    except ValueError:  # a cgroup file we do not understand: no opinion
        return 0
    if quota is None:
        return 0
    visible = len(os.sched_getaffinity(0))
    return quota if quota < visible else 0


__all__ = ["default_threads", "quota_cpus"]
