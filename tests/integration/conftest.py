"""Integration tests start real processes: each one must leave nothing behind."""

from __future__ import annotations

import gc
import os
import threading
import time

import pytest

import seamless
import seamless._ipc as ipc
from procs import live_processes


def children_of(pid: int) -> list:
    """Live child processes of ``pid``."""
    return live_processes(1, pid)


def open_fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def foreign_threads() -> list:
    """Threads other than the main one and the library's own (all named seamless-...)."""
    return [t.name for t in threading.enumerate()
            if t is not threading.main_thread() and not t.name.startswith("seamless-")]


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a child process, a thread, a descriptor or a segment behind
    (after seamless.close() and seamless._ipc.trim(): free lists hold segments on purpose)."""
    fds = open_fds()
    segments = ipc.live_segments()
    threads = set(foreign_threads())
    yield
    seamless.close()
    seamless.cache._reset_for_tests()  # closes the cache's own database connections
    ipc.trim()
    gc.collect()
    deadline = time.monotonic() + 5
    while children_of(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children_of(os.getpid()) == [], "child processes outlived the test"
    assert ipc.live_segments() <= segments, "segments outlived the test"
    assert set(foreign_threads()) <= threads, "threads outlived the test"
    leaked = open_fds() - fds
    assert not leaked, f"descriptors outlived the test: {sorted(leaked)}"
