"""Fixtures of the Dask backend's tests (docs/scale-out.md).

- ``cluster``: one ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` for the
  session, with its own client; always closed at the end of the session (its worker processes
  with it).  Tests that kill a worker make their own cluster with ``own_cluster`` instead.
- ``remote``: seamless configured with the session's client (``init(dask_client=...)``); the
  root conftest's ``fresh_seamless_state`` closes the backend and resets the settings after
  each test (the client stays: it is the session's).

Every module here is skipped, with the reason, when ``distributed`` is not installed.
"""

from __future__ import annotations

import contextlib

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


@pytest.fixture(scope="session")
def cluster():
    with own_cluster() as client:
        yield client


@pytest.fixture
def remote(cluster):
    import seamless.config

    seamless.config.init(dask_client=cluster)
    yield cluster


def worker_pids(client) -> set:
    import os

    return set(client.run(os.getpid).values())
