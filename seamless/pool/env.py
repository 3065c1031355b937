"""What the machine allows this process to use: CPUs and memory (docs/worker-pool.md).

Data flow: read-only.  Each call reads the affinity mask and a few small files under the cgroup
mount (``/sys/fs/cgroup``) and ``/proc``; nothing is cached, so a changed limit is seen by the next
call.  Used by ``seamless.config`` for the defaults of ``workers`` and ``memory_cache``, and by
the pool.  Stdlib only, so ``seamless.config`` stays light.

Limits are looked up the way the kernel applies them: in the process's own cgroup (from
``/proc/self/cgroup``) and in each ancestor up to the mount root, the lowest one winning.  Both
cgroup v2 (``cpu.max``, ``memory.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
``memory.limit_in_bytes``) are understood; a missing or unreadable file means "no limit there".
The paths are parameters so tests can point them at a fake tree.
"""

from __future__ import annotations

import math
import os

from seamless.cgroup import cgroup_paths, dirs_upwards, read_text

__all__ = ["usable_cpu_count", "physical_memory"]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
MEMINFO = "/proc/meminfo"

# cgroup v1 mount directory names that may hold the cpu / memory controller
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
_V1_MEMORY_DIRS = ("memory",)


def usable_cpu_count(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = PROC_SELF_CGROUP) -> int:
    """The number of CPUs this process may use: affinity mask, lowered to the cgroup CPU quota.

    The quota (``quota / period``) is rounded up, so 1.5 CPUs count as 2; never below 1.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def physical_memory(cgroup_root: str = CGROUP_ROOT, meminfo: str = MEMINFO,
                    proc_cgroup: str = PROC_SELF_CGROUP) -> int:
    """Bytes of memory this process may use: ``MemTotal``, lowered to the cgroup memory limit."""
    total = _mem_total(meminfo)
    limit = _memory_limit(cgroup_root, proc_cgroup)
    if limit is not None and limit > 0:
        total = min(total, limit)
    return max(1, total)


def _cpu_quota(cgroup_root: str, proc_cgroup: str) -> float | None:
    """The lowest CPU quota (in CPUs) found along the process's cgroups, or None."""
    v2_path, v1_paths = cgroup_paths(proc_cgroup)
    quotas = []
    for d in dirs_upwards(cgroup_root, v2_path):
        text = read_text(os.path.join(d, "cpu.max"))
        if text is None:
            continue
        fields = text.split()
        if len(fields) >= 1 and fields[0] != "max":
            try:
                quota = int(fields[0])
                period = int(fields[1]) if len(fields) > 1 else 100000
            except ValueError:
                continue
            if quota > 0 and period > 0:
                quotas.append(quota / period)
    for name in _V1_CPU_DIRS:
        base = os.path.join(cgroup_root, name)
        for d in dirs_upwards(base, v1_paths.get("cpu")):
            q = read_text(os.path.join(d, "cpu.cfs_quota_us"))
            p = read_text(os.path.join(d, "cpu.cfs_period_us"))
            if q is None or p is None:
                continue
            try:
                quota, period = int(q.strip()), int(p.strip())
            except ValueError:
                continue
            if quota > 0 and period > 0:
                quotas.append(quota / period)
    return min(quotas) if quotas else None


def _memory_limit(cgroup_root: str, proc_cgroup: str) -> int | None:
    """The lowest memory limit (bytes) found along the process's cgroups, or None."""
    v2_path, v1_paths = cgroup_paths(proc_cgroup)
    limits = []
    for d in dirs_upwards(cgroup_root, v2_path):
        text = read_text(os.path.join(d, "memory.max"))
        if text is not None and text.strip().isdigit():
            limits.append(int(text.strip()))
    for name in _V1_MEMORY_DIRS:
        base = os.path.join(cgroup_root, name)
        for d in dirs_upwards(base, v1_paths.get("memory")):
            text = read_text(os.path.join(d, "memory.limit_in_bytes"))
            if text is not None and text.strip().isdigit():
                limits.append(int(text.strip()))
    return min(limits) if limits else None


def _mem_total(meminfo: str) -> int:
    text = read_text(meminfo)
    if text is not None:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                fields = line.split()
                try:
                    value = int(fields[1])
                except (IndexError, ValueError):
                    break
                unit = fields[2].lower() if len(fields) > 2 else "kb"
                return value * 1024 if unit == "kb" else value
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        # no /proc and no sysconf (not Linux): assume a small machine, so the default
        # memory_cache (a quarter of this) stays modest
        return 4 * 2**30
