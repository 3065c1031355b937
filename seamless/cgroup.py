"""Reading this process's cgroup (v2, or v1 per controller) and /proc files.

Shared by the CPU and memory counts (``pool.env``) and the shared-memory pre-check
(``_ipc.shm_array``).  Light: standard library only; every reader returns None (or nothing)
when a file is missing, so callers work on machines without cgroups.
"""

from __future__ import annotations

import os

__all__ = ["read_text", "read_int", "cgroup_paths", "dirs_upwards"]


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def cgroup_paths(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """The process's cgroup v2 path and its v1 paths by controller, from /proc/self/cgroup."""
    text = read_text(proc_cgroup)
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


def dirs_upwards(base: str, path: str | None) -> list[str]:
    """``base/path`` and each of its ancestors up to ``base`` itself (deepest first): a limit
    set on any ancestor cgroup binds too."""
    parts = [p for p in (path or "").split("/") if p and p not in (".", "..")]
    dirs = []
    while parts:
        dirs.append(os.path.join(base, *parts))
        parts.pop()
    dirs.append(base)
    return dirs
