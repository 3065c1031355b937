"""Descriptor bookkeeping for tests that open descriptors: each such test must close them all.

Importable from any test module (pyproject.toml puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import gc
import os

__all__ = ["fd_links", "no_new_descriptors"]


def fd_links() -> dict:
    """Open descriptors of this process: number (as str) -> what it points to."""
    links = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            links[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory's own descriptor, already closed
            continue
    return links


def no_new_descriptors(before: dict) -> None:
    """Assert that every descriptor open now (after a garbage collection) was open before."""
    gc.collect()
    leaked = {fd: link for fd, link in fd_links().items() if before.get(fd) != link}
    assert leaked == {}, f"descriptors left open: {leaked}"
