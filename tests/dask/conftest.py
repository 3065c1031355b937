"""Fixtures of the Dask backend's tests (docs/scale-out.md).

- ``cluster``: one ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` for
  the session, with its own client; always closed, with its worker processes, after the last
  test of this directory (the suites that run later fail a test that leaves child processes)
  and at the latest when the session ends.  Tests that kill a worker make their own cluster
  with ``own_cluster`` instead.
- ``remote``: seamless configured with the session's client (``init(dask_client=...)``); the
  root conftest's ``fresh_seamless_state`` closes the backend and resets the settings after
  each test (the client stays: it is the session's).

Every module here is skipped, with the reason, when ``distributed`` is not installed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the Dask backend needs the dask extra: "
                                          'pip install ".[dask]"')


def _local_cluster(memory_limit="auto", **config):
    """A 2-worker, 1-thread-per-worker LocalCluster with its client (``config``: dask settings
    in force while it starts: the scheduler and the nannies read them then)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(config):
        # No dashboard; the scheduler's HTTP server (health routes) would still take port
        # 8787 by default and warn when another cluster has it: a free loopback port instead.
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None,
                               memory_limit=memory_limit,
                               scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return cluster, client


@contextlib.contextmanager
def own_cluster(memory_limit="auto", **config):
    cluster, client = _local_cluster(memory_limit, **config)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        if not _shared:
            _stop_resource_tracker()


_shared: list = []  # [(cluster, client)] while the shared cluster runs


def _close_shared():
    if not _shared:
        return
    while _shared:
        cluster, client = _shared.pop()
        client.close()
        cluster.close()
    _stop_resource_tracker()


def _children() -> set:
    pids = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(p) for p in f.read().split())
    return pids


def _stop_resource_tracker():
    """Starting worker processes started multiprocessing's resource tracker, a child of this
    process that would otherwise live until the session ends.  Stopped only when it is this
    process's last child: it ends when every process holding its pipe has gone, and a live
    process of another cluster (another suite's fixture) would make the stop wait for ever."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    if tracker._pid is not None and _children() == {tracker._pid}:
        tracker._stop()


@pytest.fixture(scope="session")
def cluster():
    _shared.append(_local_cluster())
    try:
        yield _shared[-1][1]
    finally:
        _close_shared()


def pytest_runtest_teardown(item, nextitem):
    """Close the shared cluster after the last test of this directory: the suites after it
    fail a test that leaves child processes, and its workers are children of this process."""
    here = Path(__file__).parent
    if Path(item.path).parent == here and (nextitem is None
                                           or Path(nextitem.path).parent != here):
        _close_shared()


@pytest.fixture
def remote(cluster):
    import seamless.config

    seamless.config.init(dask_client=cluster)
    yield cluster


def worker_pids(client) -> set:
    import os

    return set(client.run(os.getpid).values())
