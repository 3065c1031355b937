"""Processes seen through /proc, for tests that must leave none behind."""

from __future__ import annotations

import os


def live_processes(field: int, value: int) -> list:
    """Live (non-zombie) processes whose /proc stat field ``field`` (counted after the command
    name: 1 the parent pid, 2 the process group) is ``value``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] != "Z":
            found.append(int(entry))
    return found
