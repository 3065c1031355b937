"""What the machine lets this process use; the one module that reads it.

Documented in docs/design/configuration.md ("Machine facts").

Two kinds of fact, read here and nowhere else:

- Facts fixed for the life of the process, gathered once into a frozen ``Snapshot`` by
  ``snapshot()`` (cached): the usable CPU count (affinity mask lowered to the cgroup CPU quota),
  physical memory (``MemTotal`` lowered to the cgroup memory limit), the page size and
  ``IOV_MAX``.  Consumers: the configuration defaults (``workers``, ``memory_cache``), the pool
  (threads per worker), the command-line queue, the buffer cache's bound before the settings are
  read, the segment free-list budget and the transport's iovec batches.
- Facts that change while the process runs, read afresh by a function on every call:
  ``available_memory()`` (``MemAvailable`` and each cgroup's headroom, for the memory check made
  before a shared-memory segment is created), ``memory_limit_files()`` (the files that check
  reads, handed to the compiled allocator, which re-reads them without the GIL), and the
  resource limits ``file_size_limit()`` and ``open_files_limit()``.

Data flow: read-only.  The cached snapshot is owned by this module; ``override(**fields)``
replaces it for the duration of a ``with`` block (tests), ``refresh()`` drops it so the next
``snapshot()`` reads the machine again.  The paths read (``CGROUP_ROOT``, ``PROC_CGROUP``,
``MEMINFO``) are module attributes looked up on each read, so a test points every reader at a
fake tree by patching them here.

Limits are looked up the way the kernel applies them: in the process's own cgroup (from
``/proc/self/cgroup``) and in each ancestor up to the mount root, the lowest one winning.  Both
cgroup v2 (``cpu.max``, ``memory.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
``memory.limit_in_bytes``) are understood; a missing or unreadable file means "no limit there".
Light: standard library only, so ``import seamless.config`` stays cheap.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import threading
from typing import NamedTuple

__all__ = [
    "Snapshot", "snapshot", "override", "refresh", "usable_cpu_count", "physical_memory",
    "available_memory", "memory_limit_files", "file_size_limit", "open_files_limit",
]

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
MEMINFO = "/proc/meminfo"

RLIM_INFINITY = resource.RLIM_INFINITY

# cgroup v1 reports "no limit" as a huge page-rounded number; anything above this is no limit.
UNLIMITED = 1 << 60

# cgroup v1 mount directory names that may hold the cpu / memory controller
_V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")
_V1_MEMORY_DIRS = ("memory",)

# Without /proc and sysconf (not Linux): assume a small machine, so defaults derived from
# memory (a quarter of it for the buffer cache) stay modest.
_FALLBACK_MEMORY = 4 * 2**30


class Snapshot(NamedTuple):
    """The facts that do not change while the process runs (immutable; a NamedTuple rather
    than a dataclass because ``dataclasses`` imports ``inspect``, too slow for the commands)."""

    cpus: int               # CPUs this process may use (>= 1)
    total_memory: int       # bytes of RAM in the machine (MemTotal)
    physical_memory: int    # bytes this process may use: total_memory lowered to the cgroup limit
    page_size: int          # bytes
    iov_max: int            # most iovecs one sendmsg/recvmsg takes


_lock = threading.Lock()
_snapshot: Snapshot | None = None


def snapshot() -> Snapshot:
    """The machine's fixed facts, read on first use and then cached."""
    global _snapshot
    current = _snapshot
    if current is not None:
        return current
    with _lock:
        if _snapshot is None:
            total = _mem_total(MEMINFO)
            _snapshot = Snapshot(
                cpus=usable_cpu_count(),
                total_memory=total,
                physical_memory=_lowered(total, _memory_limit(CGROUP_ROOT, PROC_CGROUP)),
                page_size=_sysconf("SC_PAGE_SIZE", 4096),
                iov_max=max(16, _sysconf("SC_IOV_MAX", 1024)),
            )
        return _snapshot


def refresh() -> None:
    """Forget the cached snapshot: the next ``snapshot()`` reads the machine again."""
    global _snapshot
    with _lock:
        _snapshot = None


@contextlib.contextmanager
def override(**fields):
    """Within the block, ``snapshot()`` returns the real snapshot with ``fields`` replaced
    (e.g. ``override(physical_memory=8 << 30)``); the previous snapshot comes back after."""
    global _snapshot
    replaced = snapshot()._replace(**fields)
    with _lock:
        previous, _snapshot = _snapshot, replaced
    try:
        yield replaced
    finally:
        with _lock:
            _snapshot = previous


# --- CPUs and memory size ----------------------------------------------------------------------

def usable_cpu_count(cgroup_root: str | None = None, proc_cgroup: str | None = None) -> int:
    """The number of CPUs this process may use: affinity mask, lowered to the cgroup CPU quota.

    The quota (``quota / period``) is rounded up, so 1.5 CPUs count as 2; never below 1.
    Reads afresh; ``snapshot().cpus`` is the cached value.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cpu_quota(CGROUP_ROOT if cgroup_root is None else cgroup_root,
                       PROC_CGROUP if proc_cgroup is None else proc_cgroup)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def physical_memory(cgroup_root: str | None = None, meminfo: str | None = None,
                    proc_cgroup: str | None = None) -> int:
    """Bytes of memory this process may use: ``MemTotal``, lowered to the cgroup memory limit.
    Reads afresh; ``snapshot().physical_memory`` is the cached value."""
    total = _mem_total(MEMINFO if meminfo is None else meminfo)
    limit = _memory_limit(CGROUP_ROOT if cgroup_root is None else cgroup_root,
                          PROC_CGROUP if proc_cgroup is None else proc_cgroup)
    return _lowered(total, limit)


def _lowered(total: int, limit: int | None) -> int:
    if limit is not None and limit > 0:
        total = min(total, limit)
    return max(1, total)


def _cpu_quota(cgroup_root: str, proc_cgroup: str) -> float | None:
    """The lowest CPU quota (in CPUs) found along the process's cgroups, or None."""
    v2_path, v1_paths = _cgroup_paths(proc_cgroup)
    quotas = []
    for d in _dirs_upwards(cgroup_root, v2_path):
        text = _read_text(os.path.join(d, "cpu.max"))
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
        for d in _dirs_upwards(base, v1_paths.get("cpu")):
            q = _read_text(os.path.join(d, "cpu.cfs_quota_us"))
            p = _read_text(os.path.join(d, "cpu.cfs_period_us"))
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
    v2_path, v1_paths = _cgroup_paths(proc_cgroup)
    limits = []
    for d in _dirs_upwards(cgroup_root, v2_path):
        value = _read_int(os.path.join(d, "memory.max"))
        if value is not None:
            limits.append(value)
    for name in _V1_MEMORY_DIRS:
        base = os.path.join(cgroup_root, name)
        for d in _dirs_upwards(base, v1_paths.get("memory")):
            value = _read_int(os.path.join(d, "memory.limit_in_bytes"))
            if value is not None:
                limits.append(value)
    return min(limits) if limits else None


def _mem_total(meminfo: str) -> int:
    value = _meminfo_field(meminfo, "MemTotal:")
    if value is not None:
        return value
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return _FALLBACK_MEMORY


def _sysconf(name: str, fallback: int) -> int:
    try:
        value = os.sysconf(name)
    except (AttributeError, ValueError, OSError):
        return fallback
    return value if value > 0 else fallback


# --- memory that changes over time -------------------------------------------------------------

def memory_limit_files(cgroup_root: str | None = None,
                       proc_cgroup: str | None = None) -> list[tuple[str, str, str]]:
    """(limit file, usage file, limit name) for the process's cgroup and each ancestor: what
    ``available_memory()`` reads, and what the compiled allocator re-reads without the GIL."""
    cgroup_root = CGROUP_ROOT if cgroup_root is None else cgroup_root
    v2, v1_paths = _cgroup_paths(PROC_CGROUP if proc_cgroup is None else proc_cgroup)
    files = []
    for root in (cgroup_root, os.path.join(cgroup_root, "unified")):
        for d in _dirs_upwards(root, v2):
            files.append((os.path.join(d, "memory.max"), os.path.join(d, "memory.current"),
                          "memory.max"))
    for d in _dirs_upwards(os.path.join(cgroup_root, "memory"), v1_paths.get("memory")):
        files.append((os.path.join(d, "memory.limit_in_bytes"),
                      os.path.join(d, "memory.usage_in_bytes"), "memory.limit_in_bytes"))
    return files


def available_memory(cgroup_root: str | None = None, meminfo: str | None = None,
                     proc_cgroup: str | None = None) -> tuple[int, str, int | None] | None:
    """The bytes that can still be allocated now, as ``(bytes, limit name, limit)``, or None
    when nothing could be read.

    The smallest of ``MemAvailable`` (limit name ``"MemAvailable"``, limit None) and, in the
    process's cgroup and each ancestor, the cgroup headroom (v2 ``memory.max - memory.current``,
    v1 ``memory.limit_in_bytes - memory.usage_in_bytes``).  Read afresh on every call.
    """
    best: tuple[int, str, int | None] | None = None
    avail = _meminfo_field(MEMINFO if meminfo is None else meminfo, "MemAvailable:")
    if avail is not None:
        best = (avail, "MemAvailable", None)
    for limit_file, usage_file, limit_name in memory_limit_files(cgroup_root, proc_cgroup):
        limit = _read_int(limit_file)
        if limit is None or limit >= UNLIMITED:
            continue
        usage = _read_int(usage_file) or 0
        headroom = max(0, limit - usage)
        if best is None or headroom < best[0]:
            best = (headroom, limit_name, limit)
    return best


def _meminfo_field(meminfo: str, field: str) -> int | None:
    """A ``/proc/meminfo`` line's value in bytes (the file gives kB), or None."""
    text = _read_text(meminfo)
    if text is None:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                unit = fields[2].lower() if len(fields) > 2 else "kb"
                return int(fields[1]) * (1024 if unit == "kb" else 1)
            return None
    return None


# --- resource limits (a process may change them at any time) -----------------------------------

def file_size_limit() -> tuple[int, int]:
    """``(soft, hard)`` RLIMIT_FSIZE (``resource.RLIM_INFINITY``: none), read afresh."""
    return resource.getrlimit(resource.RLIMIT_FSIZE)


def open_files_limit() -> tuple[int, int]:
    """``(soft, hard)`` RLIMIT_NOFILE, read afresh."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- reading cgroup and /proc files ------------------------------------------------------------

def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """The process's cgroup v2 path and its v1 paths by controller, from /proc/self/cgroup."""
    text = _read_text(proc_cgroup)
    v2 = None
    v1: dict[str, str] = {}
    if text is None:
        return v2, v1
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        else:
            for controller in controllers.split(","):
                v1[controller] = path
    return v2, v1


def _dirs_upwards(base: str, path: str | None) -> list[str]:
    """``base/path`` and each of its ancestors up to ``base`` itself (deepest first): a limit
    set on any ancestor cgroup binds too."""
    parts = [p for p in (path or "").split("/") if p and p not in (".", "..")]
    dirs = []
    while parts:
        dirs.append(os.path.join(base, *parts))
        parts.pop()
    dirs.append(base)
    return dirs
