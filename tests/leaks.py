"""What a test must leave as it found it: seamless's own state, and no process, descriptor,
shared-memory segment or thread of its own.

- ``reset_seamless()`` closes the backends (their worker processes stop), resets the settings and
  empties the memory caches (which also closes the persistent caches' database connections).
  The root conftest's autouse ``fresh_seamless_state`` calls it around every test; the contract
  tests' ``backend`` fixture calls it before it counts stray processes.
- ``Snapshot()`` records this process's descriptors (number -> what it points to), live
  segments, threads (except the library's process-wide cache lookup and writer threads) and
  child processes; ``snapshot.assert_nothing_new()`` fails naming what a
  test left behind. Segments are counted after ``trim()`` of every loaded ``shm_array`` twin,
  before and after: a free list holds released segments on purpose. Segments are anonymous
  memfds (nothing in ``/dev/shm``): a leaked one is also a leaked descriptor. The root conftest's
  ``no_leaks`` fixture is one snapshot per test; a module opts in with
  ``pytestmark = pytest.mark.usefixtures("no_leaks")``.
- ``fd_links``/``no_new_descriptors`` and ``live_processes`` for checks inside a test.
- ``run_in_session(argv, timeout)`` runs a command in a session of its own and, however it
  ends (done, timed out, interrupted), stops whatever that session left running
  (``stop_session``: SIGTERM, then SIGKILL after a grace period); the caller gets what was left.

Importable from any test module (pyproject.toml puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

__all__ = ["Snapshot", "children_of", "fd_links", "live_processes", "no_new_descriptors",
           "reset_seamless", "run_in_session", "stop_session"]

_FD_LISTING = re.compile(r"/proc/")
_SHM_TWINS = ("seamless._ipc.shm_array", "seamless._ipc._pure.shm_array")
# Threads the library shares among everything in the process, started on first need: the
# persistent-cache lookups of pool jobs (seamless/execution/dispatch.py, kept for the process's
# life) and the cache writer (seamless/cache/persistent.py, ends itself after 5 s idle).
_PROCESS_LIFETIME_THREADS = frozenset({"seamless-cache-lookup", "seamless-cache-writer"})


def reset_seamless() -> None:
    """Default settings, no backend (no worker process), empty memory caches."""
    import seamless
    import seamless.cache
    import seamless.config

    seamless.close()
    seamless.config._reset_for_tests()
    seamless.cache._reset_for_tests()


def fd_links() -> dict:
    """Open descriptors of this process: number (as str) -> what it points to.

    A file under ``/proc/`` open at this moment is another thread reading system statistics
    (a Dask scheduler of the session, through psutil): it is left out."""
    links = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory's own descriptor, already closed
            continue
        if not _FD_LISTING.match(link):
            links[name] = link
    return links


def no_new_descriptors(before: dict) -> None:
    """Assert that every descriptor open now (after a garbage collection) was open before."""
    gc.collect()
    leaked = {fd: link for fd, link in fd_links().items() if before.get(fd) != link}
    assert leaked == {}, f"descriptors left open: {leaked}"


def live_processes(field: int, value: int) -> list:
    """Live (non-zombie) processes whose /proc stat field ``field`` (counted after the command
    name: 1 the parent pid, 2 the process group, 3 the session) is ``value``."""
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


def children_of(pid: int) -> list:
    """Live child processes of ``pid``."""
    return live_processes(1, pid)


def stop_session(sid: int, grace: float = 30.0) -> list:
    """SIGTERM what is left of session ``sid``, SIGKILL what is still there after ``grace``
    seconds; returns the pids that were left."""
    left = live_processes(3, sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    while live_processes(3, sid) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in live_processes(3, sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    return left


def run_in_session(argv: list, timeout: float, **popen_kw) -> tuple:
    """Run ``argv`` to completion in a session of its own (stdin empty, stdout and stderr
    captured); fail the test when it takes more than ``timeout`` seconds.  Whatever the session
    still has running afterwards is stopped.  Returns ``(proc, stdout, stderr, left)``, ``left``
    the pids that were still running."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, **popen_kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_session(proc.pid, grace=0)
        out, err = proc.communicate()
        pytest.fail(f"{argv} did not finish within {timeout} s; its output:\n{out!r}\n"
                    f"its stderr:\n{err[-3000:]!r}")
    finally:
        left = stop_session(proc.pid)
        if proc.poll() is None:  # interrupted before the end: the session was stopped
            proc.kill()
            proc.communicate()
    return proc, out, err, left


def _trimmed_segments() -> int:
    """Live segments of every loaded twin, after each closed its free list."""
    gc.collect()
    count = 0
    for name in _SHM_TWINS:
        module = sys.modules.get(name)
        if module is not None:
            module.trim()
            count += module.live_segments()
    return count


class Snapshot:
    """Descriptors, segments, threads and child processes of this process, now."""

    def __init__(self):
        self.segments = _trimmed_segments()
        self.fds = fd_links()
        self.threads = set(threading.enumerate())
        self.children = set(children_of(os.getpid()))

    def assert_nothing_new(self, wait: float = 5.0) -> None:
        """Fail if a process, thread, segment or descriptor was added since the snapshot.

        Processes and threads that are ending get ``wait`` seconds (a hang detector: a stopped
        worker may take a moment to be reaped)."""
        deadline = time.monotonic() + wait
        while (self._new_children() or self._new_threads()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._new_children() == [], "child processes outlived the test"
        threads = self._new_threads()
        assert threads == [], f"threads outlived the test: {threads}"
        assert _trimmed_segments() == self.segments, "segments outlived the test"
        no_new_descriptors(self.fds)

    def _new_children(self) -> list:
        return [pid for pid in children_of(os.getpid()) if pid not in self.children]

    def _new_threads(self) -> list:
        return [t.name for t in threading.enumerate()
                if t not in self.threads and t.name not in _PROCESS_LIFETIME_THREADS]
