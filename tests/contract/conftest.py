"""The ``backend`` fixture of the contract tests: one execution mode per parameter.

- "process": the default in-process executor (bodies run in this process's threads).
- "spawn": ``spawn(2)``, a pool of two worker processes.
- "remote": ``seamless.config.init(dask_client=client)`` on one session-wide
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` (made on first use,
  closed after this directory's last test, tests/daskcluster.py); skipped, with the reason,
  while ``distributed`` or ``seamless.dask.backend`` is missing.

After each test the backends are closed (their processes stopped), the settings reset and the
memory caches emptied; no child process of this one may outlive the test (the cluster's own
processes are the session's, and are not counted).
"""

from __future__ import annotations

import os
import time

import pytest
from leaks import live_processes, reset_seamless

import seamless.config
from seamless.transformer import spawn

MODES = ("process", "spawn", "remote")


_shared = None  # the session's SharedCluster, made by the first remote test


@pytest.fixture(scope="session")
def dask_client():
    """One LocalCluster for every remote test here, with its client."""
    pytest.importorskip("distributed", reason='the remote backend needs Dask: pip install '
                                              '".[dask]"')
    from daskcluster import SharedCluster

    global _shared
    _shared = SharedCluster(os.path.dirname(__file__))
    try:
        yield _shared.client()
    finally:
        _shared.close()


def pytest_runtest_teardown(item, nextitem):
    """Closed after this directory's last test: the suites after it fail a test that leaves
    child processes, and the cluster's workers are children of this process."""
    if _shared is not None:
        _shared.close_after(item, nextitem)


@pytest.fixture(params=MODES)
def backend(request) -> str:
    """Configure seamless for one execution mode; yields the mode's name."""
    mode = request.param
    client = None
    if mode == "remote":
        pytest.importorskip("seamless.dask.backend",
                            reason="the Dask backend (seamless.dask.backend) is not built yet")
        client = request.getfixturevalue("dask_client")
    allowed = set(live_processes(1, os.getpid()))  # the session cluster's nannies, if any
    if client is not None:
        seamless.config.init(dask_client=client)
    elif mode == "spawn":
        spawn(2)
    yield mode
    reset_seamless()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _strays(allowed):
        time.sleep(0.05)
    assert not _strays(allowed), "child processes outlived the test"


def _strays(allowed: set) -> list:
    return [p for p in live_processes(1, os.getpid()) if p not in allowed]
