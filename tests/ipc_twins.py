"""For the tests that run one ``seamless._ipc`` module on both of its twins (compiled and pure
Python), and for the blocking waits those modules implement.

Importable from any test module (pyproject.toml puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import threading
import time

import pytest
from leaks import fd_links

import seamless._ipc

__all__ = ["backend_params", "eventfd_count", "until_asleep"]


def backend_params(module: str) -> list:
    """``python`` and ``cython`` parameters for ``seamless._ipc.<module>``; the compiled one is
    skipped, with the reason, when the run asks for the twin or the extension is not built."""
    reason = None
    if seamless._ipc._purepython_requested():
        reason = "SEAMLESS_PUREPYTHON is set: only the pure-Python twin runs"
    elif not seamless._ipc._has_compiled(module):
        reason = f"seamless._ipc.{module} is not built (pip install -e . --no-build-isolation)"
    return [pytest.param("python", id="python"),
            pytest.param("cython", id="cython",
                         marks=[pytest.mark.skip(reason=reason)] if reason else [])]


def eventfd_count() -> int:
    """Open eventfd descriptors of this process."""
    return sum(link == "anon_inode:[eventfd]" for link in fd_links().values())


def until_asleep(thread: threading.Thread) -> None:
    """Return once ``thread`` sleeps in the kernel (it is then blocked in its wait, or about to
    be: either way the test stays correct, only the wake-up path differs)."""
    for _ in range(10_000):
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "S":
                    return
        except FileNotFoundError:  # the thread is done already
            return
        time.sleep(0.001)
