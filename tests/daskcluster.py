"""Dask LocalClusters for the tests (tests/dask, tests/contract): made, shared and stopped.

- ``local_cluster()``: a 2-worker, 1-thread-per-worker ``LocalCluster`` (processes) on loopback
  with its client, no dashboard.
- ``own_cluster()``: the same for one test (a test that kills a worker), closed on exit.
- ``SharedCluster``: one cluster per test directory for the session, made on first use and
  closed after the directory's last test (``close_after``, called from the directory's
  ``pytest_runtest_teardown``): the suites after it fail any test that leaves child processes,
  and the workers are children of the test process. Closing also stops multiprocessing's
  resource tracker once it is this process's last child.

Import only where ``distributed`` is installed (the callers skip first).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from leaks import children_of


def local_cluster(memory_limit="auto", **config):
    """A cluster and its client (``config``: dask settings in force while it starts: the
    scheduler and the nannies read them then)."""
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


def stop_resource_tracker():
    """Starting worker processes started multiprocessing's resource tracker, a child of this
    process that would otherwise live until the session ends.  Stopped only when it is this
    process's last child: it ends when every process holding its pipe has gone, and a live
    process of another cluster would make the stop wait for ever."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    if tracker._pid is not None and set(children_of(os.getpid())) == {tracker._pid}:
        tracker._stop()


@contextlib.contextmanager
def own_cluster(memory_limit="auto", **config):
    cluster, client = local_cluster(memory_limit, **config)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
        stop_resource_tracker()


class SharedCluster:
    """The session cluster of one test directory."""

    def __init__(self, directory: str):
        self.directory = Path(directory)
        self._running = None  # (cluster, client)

    def client(self):
        if self._running is None:
            self._running = local_cluster()
        return self._running[1]

    def close(self):
        if self._running is not None:
            cluster, client = self._running
            self._running = None
            client.close()
            cluster.close()
            stop_resource_tracker()

    def close_after(self, item, nextitem):
        """Close once ``item`` is the last test of this directory in the run."""
        if Path(item.path).parent == self.directory and (
                nextitem is None or Path(nextitem.path).parent != self.directory):
            self.close()
