"""Fixtures of the Dask backend's tests (docs/scale-out.md).

- ``cluster``: one ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` for
  the session, with its own client; always closed, with its worker processes, after the last
  test of this directory (the suites that run later fail a test that leaves child processes)
  and at the latest when the session ends.  Tests that kill a worker make their own cluster
  with ``daskcluster.own_cluster`` instead.
- ``remote``: seamless configured with the session's client (``init(dask_client=...)``); the
  root conftest's ``fresh_seamless_state`` closes the backend and resets the settings after
  each test (the client stays: it is the session's).
- ``scattered``: the keys the client scatters during the test, in order (the client's
  ``scatter`` wrapped for the test; restored after it).

Every module here is skipped, with the reason, when ``distributed`` is not installed.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("distributed", reason="the Dask backend needs the dask extra: "
                                          'pip install ".[dask]"')

from daskcluster import SharedCluster  # noqa: E402  (after the skip: it needs distributed)

_shared = SharedCluster(os.path.dirname(__file__))


@pytest.fixture(scope="session")
def cluster():
    try:
        yield _shared.client()
    finally:
        _shared.close()


def pytest_runtest_teardown(item, nextitem):
    _shared.close_after(item, nextitem)


@pytest.fixture
def remote(cluster):
    import seamless.config

    seamless.config.init(dask_client=cluster)
    yield cluster


@pytest.fixture
def scattered(remote, monkeypatch):
    keys: list = []
    scatter = remote.scatter

    def counting_scatter(data, *args, **kwargs):
        futures = scatter(data, *args, **kwargs)
        keys.extend(data)  # seamless scatters {key: buffer} dicts
        return futures

    monkeypatch.setattr(remote, "scatter", counting_scatter)
    return keys


def worker_pids(client) -> set:
    import os

    return set(client.run(os.getpid).values())
